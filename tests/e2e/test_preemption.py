"""Graceful stop and one writer per workdir, with real processes and real signals: SIGINT and SIGTERM
stop after the current step with it saved (exit 75), a second signal aborts at once, a second run on
the workdir is refused naming the holder, and two processes stop at the same step when only one of
them is told, and a locked workdir stops every process of a multi-process run."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import CONFIGS, REPO, run_cli, xla_flags
from test_multihost import _dist_flags, _free_port
from zygote import Zygote

from codex_jax.checkpoint import TRAIN_ITEMS, Checkpointer

ARGS = [
    f"--config={CONFIGS / 'tiny.py'}",
    "--config.train.steps=1000",  # far more than these tests wait for
    "--config.checkpoint.every_steps=500",
    "--config.train.log_every=2",
    "--config.train.eval_every=1000",
    "--config.generate.max_new_tokens=0",
    "--config.logging.writers=ndjson",
]
ONE_DEVICE = {"XLA_FLAGS": xla_flags(1)}
EXIT_STOPPED = 75


def train_steps(workdir):
    path = workdir / "metrics.ndjson"
    lines = path.read_text().split("\n")[:-1] if path.is_file() else []
    return [r["step"] for r in map(json.loads, lines) if r["split"] == "train" and "loss" in r]


def log_text(path) -> str:
    """What a run has written to its log so far ('' before the forked run has opened it)."""
    return path.read_text() if path.exists() else ""


def wait_for(pid, condition, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        os.kill(pid, 0)  # raises once the run has ended
        time.sleep(0.005)
    assert condition(), "timed out"


def stopped_line(text, name):
    (line,) = [line for line in text.splitlines() if line.startswith(f"stopped by {name}")]
    return line, int(line.split("after step ")[1].split(":")[0])


def verified_steps(workdir):
    checkpointer = Checkpointer(workdir / "checkpoints", read_only=True)
    steps = checkpointer.steps()
    for step in steps:
        checkpointer.verify(step, TRAIN_ITEMS)
    checkpointer.close()
    return steps


def test_sigint_stops_after_the_step_saves_it_and_a_second_run_is_refused(tmp_path):
    wd, log = tmp_path / "run", tmp_path / "first.log"
    zygote = Zygote({**os.environ, "JAX_PLATFORMS": "cpu"}, REPO)
    try:
        pid = zygote.start([f"--workdir={wd}", *ARGS], log, ONE_DEVICE)
        wait_for(pid, lambda: len(train_steps(wd)) >= 2)
        second = run_cli(wd, *ARGS[1:], check=False)  # while the first one trains
        assert second.returncode == 2
        (error,) = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert f"another run is writing to this workdir: pid {pid} on host" in error, error
        os.kill(pid, signal.SIGINT)
        assert zygote.wait() == EXIT_STOPPED
        line, step = stopped_line(log.read_text(), "SIGINT")
        assert line.endswith(
            f"saved {wd / 'checkpoints' / str(step)}; run the same command again to resume from step {step}"
        ), line
        assert verified_steps(wd)[-1] == step
        assert train_steps(wd)[-1] == step  # the steps not logged yet (train.log_every=2) are logged
        assert not (wd / "run.lock").exists()

        # a second signal during the stop aborts at once (here: both during the start-up)
        log = tmp_path / "aborted.log"
        pid = zygote.start([f"--workdir={wd}", *ARGS], log, ONE_DEVICE)
        wait_for(pid, lambda: "data: " in log_text(log))
        os.kill(pid, signal.SIGTERM)
        wait_for(pid, lambda: "note: SIGTERM: stopping" in log_text(log))
        os.kill(pid, signal.SIGTERM)
        assert zygote.wait() == -signal.SIGTERM
        assert "error: SIGTERM again: aborting without saving" in log.read_text()
        assert verified_steps(wd)[-1] == step
    finally:
        if zygote.pid is not None:
            os.kill(zygote.pid, signal.SIGKILL)
        zygote.close()


def test_two_processes_stop_at_the_same_step_when_one_gets_sigterm(tmp_path):
    """A signal that reaches one host: both processes save the same step and exit 75 (test_multihost
    resumes a two-process run from its checkpoint)."""
    wd = tmp_path / "multi"
    args = [*ARGS, "--config.train.steps=30", "--config.checkpoint.every_steps=100"]

    def start(port, i):
        cmd = [sys.executable, "-m", "codex_jax.main", f"--workdir={wd}", *args, *_dist_flags(port, i)]
        env = {**os.environ, "XLA_FLAGS": xla_flags(2), "JAX_PLATFORMS": "cpu"}
        with open(tmp_path / f"p{i}.log", "w") as log:
            return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)

    port = _free_port()
    procs = [start(port, i) for i in range(2)]
    try:
        wait_for(procs[1].pid, lambda: len(train_steps(wd)) >= 2)
        procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = [(tmp_path / f"p{i}.log").read_text() for i in range(2)]
    assert codes == [EXIT_STOPPED, EXIT_STOPPED], logs[0][-2000:] + logs[1][-2000:]
    (_, step0), (_, step1) = (
        stopped_line(logs[0], "a signal to another process"),
        stopped_line(logs[1], "SIGTERM"),
    )
    assert step0 == step1 and verified_steps(wd) == [step0]  # both processes' data iterators in it
    assert train_steps(wd)[-1] == step0


def test_a_locked_workdir_stops_every_process_with_the_holders_name(tmp_path):
    """Process 0 finds the workdir locked (by a live holder on another host) and tells process 1."""
    wd = tmp_path / "multi"
    wd.mkdir()
    holder = {"host": "elsewhere", "pid": 4321, "started": time.time(), "heartbeat": time.time()}
    (wd / "run.lock").write_text(json.dumps(holder))
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "codex_jax.main", f"--workdir={wd}", *ARGS, *_dist_flags(port, i)],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], errors
    for err in errors:
        (line,) = [line for line in err.splitlines() if line.startswith("error:")]
        assert "another run is writing to this workdir: pid 4321 on host elsewhere" in line, line
    assert [p.name for p in wd.iterdir()] == ["run.lock"]
    assert json.loads((wd / "run.lock").read_text()) == holder
