"""A verdict on tests that the program under test cannot forge. The completion's code runs in one sandboxed
process (the *candidate*); the problem's tests run in another (the *judge*: as root, under a private uid of
its own, so the candidate can neither signal, trace nor read it; otherwise as this user, made non-dumpable
so its memory and descriptors are closed to the candidate). The judge calls the function under test through
a pipe, with plain data both ways (no object of the candidate's ever reaches the judge, so an ``__eq__``
that always says yes does not either), and only when ``check(candidate)`` returns does it write ``passed
<nonce>`` to a pipe of its own, the nonce having come on its stdin (written before either process existed;
this process keeps only its hash, and starts the candidate once the judge has read it and closed itself).
Whatever the candidate prints, reads, patches or however it exits, it holds neither that pipe nor the nonce.
See :mod:`codex_jax.sandbox.inside` for the two programs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from codex_jax.sandbox.process import Outcome, Sandbox, truncated

INSIDE = Path(__file__).with_name("inside.py")
ENDED = ("the program ended before its tests", "RuntimeError: the program ended during its tests")


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One completion to judge: ``prompt + completion`` is the program; ``test`` defines ``check``."""

    prompt: str
    completion: str
    test: str
    entry_point: str


def _private_dir(path: Path, uid: int | None) -> Path:
    path.mkdir(mode=0o700)
    if uid is not None:
        os.chown(path, uid, uid)
    return path


def _write(path: Path, text: str, mode: int, uid: int | None = None) -> None:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, uid)


def run_tests(sandbox: Sandbox, tests: Attempt) -> Outcome:
    """Runs the judge, then the candidate (see the module docstring); ``passed`` only on the judge's word."""
    candidate_uid, judge_uid = sandbox._uid(), sandbox._uid()
    tmp = Path(tempfile.mkdtemp(prefix="codex_jax_sandbox_"))
    pipes: list[int] = []
    try:
        os.chmod(tmp, 0o711)
        _write(tmp / "inside.py", INSIDE.read_text(encoding="utf-8"), 0o644)
        _write(tmp / "program.py", tests.prompt + tests.completion + "\n", 0o644)
        work, bench = _private_dir(tmp / "work", candidate_uid), _private_dir(tmp / "judge", judge_uid)
        problem = {"prompt": tests.prompt, "test": tests.test, "entry_point": tests.entry_point}
        _write(bench / "problem.json", json.dumps(problem), 0o600, judge_uid)
        for _ in range(4):
            pipes += os.pipe()
        nonce_r, nonce_w, requests_r, requests_w, replies_r, replies_w, verdict_r, verdict_w = pipes
        digest = _send_nonce(nonce_w)
        with open(tmp / "output", "w+b") as out, open(tmp / "judge.out", "w+b") as judge_out:
            deadline = time.monotonic() + sandbox.limits.timeout_s
            args = ["judge", requests_w, replies_r, verdict_w, str(bench / "problem.json")]
            judge = _spawn(sandbox, judge_uid, bench, judge_out, args, stdin=nonce_r)
            candidate = None
            try:
                _close(pipes, nonce_r, requests_w, replies_r, verdict_w)
                if select.select([verdict_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    args = ["candidate", requests_r, replies_w, str(tmp / "program.py")]
                    candidate = _spawn(sandbox, candidate_uid, work, out, args)
                _close(pipes, requests_r, replies_w)
                timed_out = _wait(judge, deadline - time.monotonic())
                ended = _ended(candidate)
            finally:
                sandbox._reap(
                    (judge, judge_uid), *([] if candidate is None else [(candidate, candidate_uid)])
                )
            said = _verdict(verdict_r)
            passed = said.startswith(b"rpassed ") and hashlib.sha256(said[8:]).digest() == digest
            return _outcome(passed, timed_out, ended, out, judge_out, sandbox.limits.max_output_bytes)
    finally:
        for fd in pipes:
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


def _send_nonce(fd: int) -> bytes:
    """Writes 32 random bytes to the judge's stdin pipe (before the judge or the candidate exist) and
    keeps only their hash here: this process's memory holds nothing a program could forge a verdict with."""
    nonce = bytearray(32)
    with open("/dev/urandom", "rb", buffering=0) as f:
        f.readinto(nonce)
    digest = hashlib.sha256(nonce).digest()
    os.write(fd, nonce)
    nonce[:] = bytes(32)
    return digest


def _close(pipes: list[int], *fds: int) -> None:
    for fd in fds:
        os.close(fd)
        pipes.remove(fd)


def _ended(candidate: subprocess.Popen | None) -> int | None:
    """The candidate's exit code if it ended on its own (None: still running, or never started)."""
    if candidate is None:
        return None
    with contextlib.suppress(subprocess.TimeoutExpired):
        candidate.wait(0.05)
    return candidate.poll()


def _spawn(sandbox: Sandbox, uid: int | None, cwd: Path, out, args: list, stdin=subprocess.DEVNULL):
    """One of the two programs under the sandbox's limits, as ``uid``, with the pipes in ``args``."""
    fds = tuple(a for a in args if isinstance(a, int))
    argv = sandbox._argv(cwd.parent / "inside.py", uid, sandbox._nproc(uid), [str(a) for a in args])
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "TMPDIR": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=out,
        stderr=subprocess.STDOUT,
        pass_fds=fds,
        start_new_session=True,
    )


def _wait(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Whether ``proc`` ran past ``timeout_s``."""
    try:
        proc.wait(timeout=max(0.0, timeout_s))
        return False
    except subprocess.TimeoutExpired:
        return True


def _verdict(fd: int) -> bytes:
    """What the judge wrote (never blocks: a process that kept the pipe open cannot hold us)."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        return os.read(fd, 256)
    except BlockingIOError:
        return b""


def _last_line(f) -> str:
    f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
    lines = [line for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _outcome(passed: bool, timed_out: bool, ended: int | None, out, judge_out, keep: int) -> Outcome:
    output = truncated(out, keep)
    if passed:
        return Outcome(True, False, "passed", 0, output)
    if timed_out:
        return Outcome(False, True, "timed out", None, output)
    why = _last_line(judge_out) or "the judge ended without a verdict"
    if why in ENDED and ended:
        why = f"killed by {_signal_name(-ended)}" if ended < 0 else _last_line(out) or f"exit code {ended}"
    return Outcome(False, False, f"failed: {why[:300]}", ended, output)


def _signal_name(number: int) -> str:
    import signal

    with contextlib.suppress(ValueError):
        return signal.Signals(number).name
    return f"signal {number}"


MAX_VERDICTS = 20_000  # verdicts a sandbox remembers (the oldest are forgotten first)


def _key(job: Attempt) -> str:
    return hashlib.sha256(json.dumps(dataclasses.astuple(job)).encode()).hexdigest()


def run_tests_many(
    sandbox: Sandbox, jobs: Sequence[Attempt], workers: int = 2, on_done: Callable[[], None] | None = None
) -> list[Outcome]:
    """The outcome of each job, in order, ``workers`` at a time (``on_done`` after each). A sandbox that
    remembers verdicts (``make_sandbox(remember_verdicts=True)``) judges each distinct job once, in this
    call and across calls: the same program and tests get the verdict its one real judged run earned
    (a timed-out run is not remembered). Under RL that makes the reward of a program whose tests pass
    only sometimes the one of its first run."""

    def one(job: Attempt) -> Outcome:
        try:
            return run_tests(sandbox, job)
        finally:
            if on_done is not None:
                on_done()

    memo = sandbox.verdicts
    if memo is None:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            return list(pool.map(one, jobs))
    keys = [_key(job) for job in jobs]
    known = {key: memo[key] for key in keys if key in memo}
    todo = {key: job for key, job in zip(keys, jobs, strict=True) if key not in known}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        judged = dict(zip(todo, pool.map(run_tests, (sandbox,) * len(todo), todo.values()), strict=True))
    outcomes = [judged[key] if key in judged else known[key] for key in keys]
    memo.update((key, outcome) for key, outcome in judged.items() if not outcome.timed_out)
    while len(memo) > MAX_VERDICTS:
        memo.pop(next(iter(memo)))
    for _ in jobs if on_done is not None else ():
        on_done()  # type: ignore[misc]
    return outcomes
