"""A pass means the tests ran and passed: programs that try to forge the verdict (printing markers, reading
their own files, /proc, exiting early, raising SystemExit into check, patching, an ``__eq__`` that says yes)
all fail, and many judged runs leave no folder, process or descriptor behind."""

import os
import tempfile
import time
from pathlib import Path

import pytest

from codex_jax.sandbox import PRIVATE_UID, Attempt, Limits, make_sandbox, run_tests, run_tests_many

PROMPT = 'def add(a, b):\n    """The sum of a and b."""\n'
TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n"
WRONG = "    return None\n"

PROC_ATTACK = """
import os, re
me = int(os.readlink('/proc/self'))  # its pid as /proc numbers it (os.getpid() may be 1)
for pid in filter(str.isdigit, os.listdir('/proc')):
    if int(pid) == me:
        continue
    try:
        fds = os.listdir(f'/proc/{pid}/fd')
    except OSError:
        fds = []
    for fd in fds:
        try:
            w = os.open(f'/proc/{pid}/fd/{fd}', os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            continue
        print('opened', pid, fd)
        try:
            os.write(w, b'rpassed ' + bytes(32))
        except OSError:
            pass
        os.close(w)
    try:
        maps = open(f'/proc/{pid}/maps').read().splitlines()
        with open(f'/proc/{pid}/mem', 'rb') as mem:
            start = int(maps[0].split('-')[0], 16)
            mem.seek(start)
            mem.read(16)
        print('read-mem', pid)
    except (OSError, ValueError, IndexError):
        pass
"""

ATTACKS = {
    "prints markers and writes to every descriptor": (
        "    return None\nimport os\nprint('passed')\nprint('codex-jax-sandbox-ok-' + '0' * 32)\n"
        "for fd in range(256):\n    try:\n        os.write(fd, b'rpassed ' + bytes(32))\n"
        "    except OSError:\n        pass\n"
    ),
    "reads its own files and prints them": (
        "    return None\nimport glob\nfor f in glob.glob('/tmp/codex_jax_sandbox_*/**', recursive=True):\n"
        "    try:\n        print(open(f).read())\n    except OSError:\n        pass\n"
    ),
    "os._exit(0) at import": "    return None\nimport os\nos._exit(0)\n",
    "sys.exit(0) at import": "    return None\nimport sys\nsys.exit(0)\n",
    "os._exit(0) when called": "    import os\n    os._exit(0)\n",
    "raises SystemExit into check": "    raise SystemExit(0)\n",
    "raises StopIteration into check": "    raise StopIteration\n",
    "an __eq__ that says yes": (
        "    class Yes:\n        def __eq__(self, other):\n            return True\n    return Yes()\n"
    ),
    "an int whose __eq__ says yes": (
        "    class Yes(int):\n        def __eq__(self, other):\n            return True\n    return Yes(7)\n"
    ),
    "patches builtins and its harness": (
        "    return None\nimport builtins, sys\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
        "main = sys.modules['__main__']\nmain.send = lambda fd, message: None\nmain.encode = lambda v: 3\n"
    ),
    "kills every process it can": (
        "    return None\nimport os, signal\nfor pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    if int(pid) != os.getpid():\n        try:\n            os.kill(int(pid), signal.SIGKILL)\n"
        "        except OSError:\n            pass\n"
    ),
    "scans /proc for descriptors and memory": ("    return None\n" + PROC_ATTACK),
}


@pytest.fixture(scope="module")
def sandbox():
    return make_sandbox(Limits(timeout_s=5.0, memory_mb=512, file_size_mb=8, max_procs=16))


# As a non-root user the program runs as you: these would signal or write into your other processes (the
# test runner included), so they run only where the sandbox gives programs private uids (root).
PRIVATE_UID_ONLY = ("kills every process it can", "scans /proc for descriptors and memory")


def test_forged_verdicts_fail_and_honest_ones_pass(sandbox):
    names = [n for n in ATTACKS if sandbox.private or n not in PRIVATE_UID_ONLY]
    jobs = [Attempt(PROMPT, ATTACKS[n], TEST, "add") for n in names]
    jobs += [Attempt(PROMPT, "    return a + b\n", TEST, "add")]  # control: correct
    jobs += [Attempt(PROMPT, "    print('passed', a, b)\n    return a + b\nprint('noise')\n", TEST, "add")]
    outcomes = run_tests_many(sandbox, jobs, workers=2)
    for name, outcome in zip(names, outcomes, strict=False):
        assert not outcome.passed and outcome.result.startswith(("failed", "timed out")), (
            name,
            outcome.result,
        )
    assert outcomes[-2].passed and outcomes[-2].result == "passed", outcomes[-2].result
    assert outcomes[-1].passed and "passed 1 2" in outcomes[-1].output
    if not sandbox.private:
        pytest.skip("not root: the program runs as this user (see docs/post-training.md for what holds)")
    scan = outcomes[names.index("scans /proc for descriptors and memory")].output
    # As root the candidate's uid owns nothing but itself: no other process's descriptors or memory.
    assert "opened" not in scan and "read-mem" not in scan, scan


def test_the_tests_helpers_are_the_problems_not_the_completions(sandbox):
    """check() uses a helper of the prompt; a completion that redefines the helper does not change it."""
    prompt = 'def double(x):\n    return 2 * x\n\n\ndef quad(x):\n    """Four times x."""\n'
    test = "def check(candidate):\n    assert candidate(3) == double(double(3))\n"
    cheat = "    return 0\n\n\ndef double(x):\n    return 0\n"
    assert not run_tests(sandbox, Attempt(prompt, cheat, test, "quad")).passed
    assert run_tests(sandbox, Attempt(prompt, "    return double(double(x))\n", test, "quad")).passed


def test_failures_say_why(sandbox):
    wrong = run_tests(sandbox, Attempt(PROMPT, WRONG, TEST, "add"))
    assert wrong.result == "failed: AssertionError", wrong.result
    raises = run_tests(sandbox, Attempt(PROMPT, "    raise ValueError('no')\n", TEST, "add"))
    assert raises.result == "failed: ValueError: no", raises.result
    broken = run_tests(sandbox, Attempt(PROMPT, "    return (\n", TEST, "add"))
    assert broken.result.startswith("failed: SyntaxError"), broken.result
    slow = run_tests(sandbox, Attempt(PROMPT, "    while True:\n        pass\n", TEST, "add"))
    assert slow.timed_out and slow.result == "timed out"


def _children() -> list[str]:
    """This process's children that are still alive (not zombies)."""
    mine = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            mine.append(pid)
    return mine


def _private_uid_processes() -> int:
    """Live (not zombie) processes of the private sandbox uids, after up to 2 s for SIGKILLs to land."""
    deadline = time.time() + 2.0
    while True:
        count = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                uid = os.stat(f"/proc/{pid}").st_uid
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            count += PRIVATE_UID <= uid < PRIVATE_UID + 100_000_000 and state != "Z"
        if count == 0 or time.time() > deadline:
            return count
        time.sleep(0.1)


def test_hundreds_of_runs_leave_nothing_behind(sandbox):
    tmp = Path(tempfile.gettempdir())
    before = (len(os.listdir("/proc/self/fd")), set(tmp.glob("codex_jax_sandbox_*")), _children())
    private_before = _private_uid_processes()
    kinds = [
        "    return a + b\n",
        WRONG,
        "    import os\n    os._exit(3)\n",
        "    return a + b\nimport os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n",
        "    import threading, time\n    threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "    return a + b\n",
    ]
    jobs = [Attempt(PROMPT, kinds[i % len(kinds)], TEST, "add") for i in range(150)]
    outcomes = run_tests_many(sandbox, jobs, workers=2)
    assert [o.passed for o in outcomes[:5]] == [True, False, False, True, True]
    after = (len(os.listdir("/proc/self/fd")), set(tmp.glob("codex_jax_sandbox_*")), _children())
    assert after[0] <= before[0], "file descriptors left open"
    assert after[1] <= before[1], "temporary folders left behind"
    assert after[2] == before[2], "child processes left running"
    if sandbox.private:
        assert _private_uid_processes() <= private_before, "sandboxed processes left running"
