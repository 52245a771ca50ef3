"""A run interrupted over and over ends exactly where an uninterrupted one does.

The test sends real signals to a real training process: SIGKILL and SIGTERM mixed, at random moments
(during start-up, after some steps, while a checkpoint is being saved, during evaluation), 20 times,
resuming each time. The final params, optimizer state, data iterator state and the deterministic
values of metrics.ndjson equal an uninterrupted run's bit for bit, and a run stopped by SIGTERM never
makes its successor recompute a step. ``CHAOS_SEED=N`` replays another schedule.

Each run is forked from a process that imported codex_jax once (tests/e2e/zygote.py), so that 20+
restarts fit in CI.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from conftest import CONFIGS, REPO, xla_flags
from zygote import Zygote

from codex_jax.checkpoint import TRAIN_ITEMS, Checkpointer

SEED = int(os.environ.get("CHAOS_SEED", "19"))
INTERRUPTIONS = 20
STEPS = 80
EVAL_EVERY = 5
ARGS = [
    f"--config={CONFIGS / 'tiny.py'}",
    f"--config.train.steps={STEPS}",
    "--config.train.log_every=1",
    f"--config.train.eval_every={EVAL_EVERY}",
    "--config.checkpoint.every_steps=4",
    "--config.checkpoint.max_to_keep=2",
    "--config.generate.max_new_tokens=0",
    "--config.logging.writers=ndjson",
    "--config.model.num_layers=1",  # cheaper to trace at each restart
    "--config.eval.num_batches=1",
]
CLI = [sys.executable, "-m", "codex_jax.main"]
SAVE_LAST = f"--config.checkpoint.every_steps={STEPS}"
ONE_DEVICE = {"XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
# Timing and machine load, not results: left out of the comparison.
UNTIMED = {"compile_seconds", "tokens_per_second", "step_time", "data_wait_fraction", "mfu"}


def records(workdir):
    path = workdir / "metrics.ndjson"
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[:-1]  # a line being written has no newline yet
    return [json.loads(line) for line in lines]


def deterministic(workdir):
    """metrics.ndjson without system metrics and timings (a restart also logs a compile time)."""
    out = []
    for r in records(workdir):
        if r["split"] == "system":
            continue
        if r.get("kind") == "hparams":  # the reference saves less often
            r["hparams"].pop("checkpoint.every_steps")
        kept = {k: v for k, v in r.items() if k not in UNTIMED}
        if set(kept) - {"step", "split"}:
            out.append(kept)
    return out


def started_from(log):
    """The step a run continues from ('training N parameters from step X ...'), or None yet."""
    text = log.read_text() if log.exists() else ""
    marker = " parameters from step "
    return int(text.split(marker)[1].split()[0]) if marker in text else None


def saving(ckpt):
    return ckpt.is_dir() and any(".orbax-checkpoint-tmp" in p.name for p in ckpt.iterdir())


def moment_reached(moment, k, wd, log):
    """Whether the run logging to ``log`` is at ``moment`` (see ``schedule``)."""
    text = log.read_text() if log.exists() else ""
    if moment == "start-up":
        return "data: " in text
    start = started_from(log)
    if start is None:
        return False
    train = [r["step"] for r in records(wd) if r["split"] == "train" and "loss" in r]
    done = max(train, default=0)
    if moment == "steps":
        return done >= start + k
    if moment == "save":
        return done > start and saving(wd / "checkpoints")
    # 'eval': the last lines are an eval step's train metrics, its eval line not written yet
    rs = records(wd)
    last = rs[-1] if rs else {}
    evals = {r["step"] for r in rs if r["split"] == "eval"}
    step = last.get("step") or 0
    return step > start and step % EVAL_EVERY == 0 and last["split"] != "eval" and step not in evals


def schedule(rng):
    """INTERRUPTIONS (signal, moment, k) triples: SIGKILL and SIGTERM in equal numbers, moments
    start-up, after k new steps, during a save and during evaluation, shuffled."""
    moments = ["start-up", "steps", "save", "eval", "steps"] * (INTERRUPTIONS // 5)
    signals = [signal.SIGKILL, signal.SIGTERM] * (INTERRUPTIONS // 2)
    rng.shuffle(moments)
    rng.shuffle(signals)
    return [(s, m, rng.randint(1, 3)) for s, m in zip(signals, moments, strict=True)]


def wait_for(pid, condition, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.002)
    return False


def restore(workdir, step, item):
    """{leaf path: numpy array} of one item of checkpoint ``step``."""
    tree = ocp.StandardCheckpointer().restore(workdir.absolute() / "checkpoints" / str(step) / item)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def test_twenty_interruptions_end_where_an_uninterrupted_run_does(tmp_path):
    ref, wd = tmp_path / "reference", tmp_path / "chaos"
    reference = subprocess.Popen(
        # checkpoint.* keys change no training bits: the reference saves only its last step
        [
            sys.executable,
            "-m",
            "codex_jax.main",
            f"--workdir={ref}",
            *ARGS,
            f"--config.checkpoint.every_steps={STEPS}",
        ],
        env={**os.environ, **ONE_DEVICE},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "reference.log", "w"),  # noqa: SIM115 - closed with the process
    )
    zygote = Zygote({**os.environ, "JAX_PLATFORMS": "cpu"}, REPO)
    plan = schedule(random.Random(SEED))
    print(f"CHAOS_SEED={SEED}: {[(s.name, m, k) for s, m, k in plan]}")
    logs = []
    try:
        for i, (sig, moment, k) in enumerate(plan):
            log = tmp_path / f"run{i}.log"
            logs.append((sig, log))
            pid = zygote.start([f"--workdir={wd}", *ARGS], log, ONE_DEVICE)
            hit = wait_for(pid, lambda m=moment, k=k, log=log: moment_reached(m, k, wd, log))
            if hit:
                os.kill(pid, sig)
            code = zygote.wait()
            assert hit, f"run {i} ended ({code}) before {moment}:\n{log.read_text()[-3000:]}"
            expected = -signal.SIGKILL if sig == signal.SIGKILL else 75
            assert code == expected, (
                f"run {i} ({sig.name} at {moment}): exit {code}\n{log.read_text()[-3000:]}"
            )
        final = tmp_path / "final.log"
        zygote.start([f"--workdir={wd}", *ARGS], final, ONE_DEVICE)
        assert zygote.wait() == 0, final.read_text()[-3000:]
    finally:
        if zygote.pid is not None:
            os.kill(zygote.pid, signal.SIGKILL)
        zygote.close()
        assert reference.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()[-3000:]

    check_no_step_recomputed_after_sigterm(logs, final)
    assert any("taking over the stale lock" in log.read_text() for _, log in logs)
    checkpointer = Checkpointer(wd / "checkpoints", read_only=True)
    checkpointer.verify(STEPS, TRAIN_ITEMS)
    checkpointer.close()
    for item in ("params", "train"):
        a, b = restore(ref, STEPS, item), restore(wd, STEPS, item)
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{item}/{name}")
    data = sorted(p for p in (ref / "checkpoints" / str(STEPS) / "data").iterdir() if "commit" not in p.name)
    assert data  # the grain iterator state, one file per process
    assert [p.read_bytes() for p in data] == [
        (wd / "checkpoints" / str(STEPS) / "data" / p.name).read_bytes() for p in data
    ]
    assert deterministic(wd) == deterministic(ref)


def check_no_step_recomputed_after_sigterm(logs, final):
    """A run stopped by SIGTERM saved the step it reached, and the next run that got going continues
    from it (a run killed during its start-up in between wrote nothing)."""
    runs = [log for _, log in logs] + [final]
    for i, (sig, log) in enumerate(logs):
        if sig != signal.SIGTERM:
            continue
        step = stopped_after(log)
        assert step is not None, log.read_text()[-2000:]
        following = (start_of(later) for later in runs[i + 1 :])
        assert next(s for s in following if s is not None) == step, f"run {i} stopped after {step}"


def stopped_after(log):
    """X of 'stopped by SIGTERM after step X: ...' (None: the run was not stopped gracefully)."""
    for line in log.read_text().splitlines():
        if line.startswith("stopped by SIGTERM after step "):
            return int(line.split("after step ")[1].split(":")[0])
    return None


def start_of(log):
    """The step a run started from, also when it was stopped during its start-up (None: it was
    killed before it knew)."""
    start = started_from(log)
    return start if start is not None else stopped_after(log)
