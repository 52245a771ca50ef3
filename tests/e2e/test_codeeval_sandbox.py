"""The sandbox holds: hostile programs are contained, recorded as failed or timed out, and the batch ends
within a stated bound. As root the programs run as a private uid in their own network namespace; a test
whose guarantee this machine cannot give (non-root: no uid change; no namespaces) says so and is skipped."""

import os
import socket
import tempfile
import time
from pathlib import Path

import pytest

from codex_jax.codeeval.sandbox import PRIVATE_UID, Limits, make_sandbox, run_many

TIMEOUT_S = 2.0
# 12 programs, 2 at a time, at most 3 of them running into the 2 s timeout: well under this on 2 busy cores.
BATCH_BOUND_S = 20.0


@pytest.fixture(scope="module")
def sandbox():
    return make_sandbox(Limits(timeout_s=TIMEOUT_S, memory_mb=512, file_size_mb=8, max_procs=16))


def _hostile(canary, listener_port):
    outside = canary.parent / "written_outside.txt"
    return {
        "infinite loop": "while True:\n    pass\n",
        "sleeping forever": "import time\ntime.sleep(3600)\n",
        "memory bomb": "x = bytearray(8 << 30)\n",
        "growing memory": "chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))\n",
        "fork bomb": (
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
        ),
        "deletes the canary": f"import os\nos.remove({str(canary)!r})\n",
        "writes outside": f"open({str(outside)!r}, 'w').write('x')\n",
        "sys.exit(0) before asserts": "import sys\nsys.exit(0)\nassert False\n",
        "os._exit(0) before asserts": "import os\nos._exit(0)\nassert False\n",
        "prints 100 MB": "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))\n",
        "opens a socket": (
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {listener_port}), timeout=1).sendall(b'hi')\n"
        ),
        "escapes its session": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(3600)\ntime.sleep(3600)\n"
        ),
    }


def test_hostile_programs_are_contained_and_the_batch_is_bounded(sandbox, tmp_path):
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    programs = _hostile(canary, listener.getsockname()[1])
    start = time.time()
    outcomes = dict(zip(programs, run_many(sandbox, list(programs.values()), workers=2), strict=True))
    elapsed = time.time() - start
    accepted = _accepted(listener)
    assert elapsed < BATCH_BOUND_S, f"hostile batch took {elapsed:.1f} s"
    for name, outcome in outcomes.items():
        if name == "opens a socket" and not sandbox.network_isolated:
            continue
        assert not outcome.passed, (name, outcome.result)
        assert outcome.result == "timed out" or outcome.result.startswith("failed"), (name, outcome.result)
    for name in ("infinite loop", "sleeping forever", "escapes its session"):
        assert outcomes[name].timed_out, (name, outcomes[name].result)
    assert "before the end of its tests" in outcomes["sys.exit(0) before asserts"].result
    assert "before the end of its tests" in outcomes["os._exit(0) before asserts"].result
    assert len(outcomes["prints 100 MB"].output) < 8192  # captured output is truncated
    if sandbox.private:
        assert _live_sandbox_processes() == [], "a sandboxed process outlived its program"
    if sandbox.uid is None:
        pytest.skip("not root: programs run as this user, so files of this user are not protected")
    assert canary.read_text() == "alive"
    assert not (tmp_path / "written_outside.txt").exists()
    if not sandbox.network_isolated:
        pytest.skip("no network namespace on this machine: the socket program was not contained")
    assert not accepted and "Network is unreachable" in outcomes["opens a socket"].result


def _live_sandbox_processes() -> list[str]:
    """Processes (not zombies) of the private sandbox uids."""
    live = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        uid = int(status["Uid"].split()[0])
        if PRIVATE_UID <= uid < PRIVATE_UID + 100_000_000 and not status["State"].strip().startswith("Z"):
            live.append(pid)
    return live


def _accepted(listener) -> bool:
    try:
        listener.accept()[0].close()
        return True
    except TimeoutError:
        return False
    finally:
        listener.close()


def test_a_passing_program_passes_and_temp_files_go(sandbox):
    before = set(Path(tempfile.gettempdir()).glob("codex_jax_sandbox_*"))
    outcome = sandbox.run("import os\nopen('scratch.txt', 'w').write('ok')\nassert os.getcwd()\nprint('hi')")
    assert outcome.passed and outcome.result == "passed" and outcome.output.strip() == "hi"
    assert set(Path(tempfile.gettempdir()).glob("codex_jax_sandbox_*")) <= before  # its folder is gone
    failing = sandbox.run("assert 1 + 1 == 3, 'wrong sum'")
    assert not failing.passed and failing.result == "failed: AssertionError: wrong sum"


def test_the_environment_is_clean(sandbox, monkeypatch):
    monkeypatch.setenv("CODEX_JAX_SECRET_TOKEN", "do-not-leak")
    outcome = sandbox.run("import os\nassert 'CODEX_JAX_SECRET_TOKEN' not in os.environ, 'leaked'")
    assert outcome.passed, outcome.result
    if os.geteuid() == 0:
        assert sandbox.run("import os\nassert os.getuid() != 0").passed
