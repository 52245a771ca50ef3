"""Resume survives faults, in real processes on the tiny config: another device count, kill -9 at
any moment, corrupt or foreign checkpoints, a failing background save and a non-finite loss."""

import hashlib
import json
import os
import random
import shutil
import signal
import time

import jax
import numpy as np
import pytest
from conftest import CONFIGS, ForkedRun, read_metrics, restore_params, run_cli, xla_flags

from codex_jax.checkpoint import MANIFEST, TRAIN_ITEMS, Checkpointer
from codex_jax.setup.resume import truncate_metrics

QUICK = ["--config.train.log_every=1", "--config.generate.max_new_tokens=0"]


def popen_cli(workdir, *overrides, log):
    """The training CLI in the background (stderr to ``log``; forked from the test's zygote), to be killed
    or broken mid-run."""
    env = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
    argv = ["-m", "codex_jax.main", f"--config={CONFIGS / 'tiny.py'}", f"--workdir={workdir}", *overrides]
    return ForkedRun(argv, env, os.devnull, log)


def wait_for(proc, condition, timeout=180):
    """Polls ``condition()`` every 2 ms while ``proc`` runs: True once it holds, False if not."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return False


def committed(ckpt_dir):
    """Step folders (orbax renames a save's temporary folder to its step when complete)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


def saving(ckpt_dir):
    return ckpt_dir.is_dir() and any(".orbax-checkpoint-tmp" in p.name for p in ckpt_dir.iterdir())


def tree_hashes(root):
    """Every path under ``root`` with the sha256 of its bytes (folders as 'dir')."""
    return {
        p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def finite(params):
    return all(np.isfinite(x).all() for x in jax.tree.leaves(params))


# --- changed topology -----------------------------------------------------------------------------


def test_resume_on_fewer_devices_continues_the_8_device_run(tmp_path):
    """Saved FSDP-sharded on 8 devices, resumed on 4 and on 1: same data position, same losses."""
    common = [
        *QUICK,
        "--config.model.num_layers=1",  # a layer less to compile; resharding is the same for any depth
        "--config.train.steps=12",
        "--config.checkpoint.every_steps=6",
        "--config.train.eval_every=100",
        "--config.parallel.fsdp_min_size=1024",
    ]
    full = tmp_path / "full8"
    run_cli(full, *common, "--config.parallel.mesh.fsdp=2", devices=8)
    reference = read_metrics(full)
    for devices, fsdp in ((4, 4), (1, 1)):
        wd = tmp_path / f"resumed{devices}"
        shutil.copytree(full, wd)
        shutil.rmtree(wd / "checkpoints" / "12")  # resume from the 8-device checkpoint of step 6
        result = run_cli(wd, *common, f"--config.parallel.mesh.fsdp={fsdp}", devices=devices)
        assert "resumed from" in result.stderr
        assert "parallel.mesh.fsdp changed on resume" in result.stderr
        resumed = read_metrics(wd)
        for step in range(7, 13):
            assert resumed[step]["loss"] == pytest.approx(reference[step]["loss"], rel=1e-5)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
            restore_params(full, 12),
            restore_params(wd, 12),
        )

    one_layer = "--config.model.num_layers=1"
    ev = run_cli(full, one_layer, "--config.parallel.mesh.fsdp=1", mode="eval", devices=1)  # params only
    loss = json.loads(ev.stdout.splitlines()[-1])["loss"]
    assert loss == pytest.approx(read_metrics(full, "eval")[12]["loss"], rel=1e-5)


# --- kill -9 --------------------------------------------------------------------------------------


def test_kill_9_at_any_moment_resumes_to_the_same_params(tmp_path):
    """SIGKILL after a checkpoint appears, while a save is in flight and at a random moment: every
    rerun resumes from a complete checkpoint, and the final params equal an uninterrupted run's."""
    common = [*QUICK, "--config.checkpoint.every_steps=1", "--config.checkpoint.max_to_keep=2"]
    common += ["--config.model.num_layers=1"]  # a layer less to compile; kills hit the same code
    reference = tmp_path / "reference"
    run_cli(reference, *common)
    wd, ckpt = tmp_path / "killed", tmp_path / "killed" / "checkpoints"
    rng = random.Random(0)
    steps, delay = rng.randint(2, 5), rng.uniform(0, 0.3)
    kill_points = {  # name -> condition(steps saved by this run, seconds since its first save)
        "new checkpoint": lambda new, since: new >= 1,
        "save in flight": lambda new, since: new >= 2 and saving(ckpt),
        "random moment": lambda new, since: new >= steps and since > delay,
    }
    for name, condition in kill_points.items():
        start, first = max(committed(ckpt), default=0), []

        def kill_now(start=start, first=first, condition=condition):
            new = max(committed(ckpt), default=0) - start
            if new and not first:
                first.append(time.monotonic())
            return condition(new, time.monotonic() - first[0] if first else 0.0)

        proc = popen_cli(wd, *common, log=tmp_path / f"{name}.log")
        hit = wait_for(proc, kill_now)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL and hit, f"{name}: the run ended before the kill"
        print(f"killed at {name}: step folders {committed(ckpt)}, save in flight: {saving(ckpt)}")
        checkpointer = Checkpointer(ckpt, read_only=True)
        for step in checkpointer.steps():  # whatever the kill interrupted, these are intact
            checkpointer.verify(step, TRAIN_ITEMS)
        checkpointer.close()
    final = run_cli(wd, *common)
    assert "resumed from" in final.stderr
    jax.tree.map(np.testing.assert_array_equal, restore_params(reference, 20), restore_params(wd, 20))
    lines = [json.loads(line) for line in (wd / "metrics.ndjson").read_text().splitlines()]
    train = [r for r in lines if r["split"] == "train" and "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 21))  # killed runs' later lines dropped
    ref = read_metrics(reference)
    assert [r["loss"] for r in train] == [ref[s]["loss"] for s in range(1, 21)]


def test_truncate_metrics_keeps_lines_up_to_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.ndjson"
    records = [{"step": None, "split": "hparams"}] + [{"step": s, "split": "train"} for s in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "spl')
    truncate_metrics(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [None, 0, 1, 2]
    truncate_metrics(path, None)  # a fresh start
    assert path.read_text() == ""


# --- corrupt, partial and foreign checkpoints -----------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run of 4 steps with checkpoints 2 and 4 (copy it before changing anything)."""
    wd = tmp_path_factory.mktemp("trained") / "run"
    run_cli(
        wd,
        *QUICK,
        "--config.train.steps=4",
        "--config.checkpoint.every_steps=2",
        "--config.train.eval_every=2",
    )
    return wd


@pytest.fixture
def copy(trained, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    return wd


def biggest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGES = {  # name -> (damage(workdir), overrides, what the error line says)
    "truncated params": (
        lambda wd: truncate(biggest_file(wd / "checkpoints/4/params")),
        [],
        ["checkpoints/4:", "truncated"],
    ),
    "altered optimizer state": (
        lambda wd: flip_a_byte(biggest_file(wd / "checkpoints/4/train")),
        [],
        ["checkpoints/4:", "sha256"],
    ),
    "damaged manifest": (
        lambda wd: truncate(wd / "checkpoints/4" / MANIFEST),
        [],
        ["checkpoints/4:", MANIFEST],
    ),
    "foreign checkpoint": (
        lambda wd: (wd / "config.json").unlink(),
        ["--config.model.d_model=32"],
        ["checkpoints/4:", "model.d_model=64", "32"],
    ),
    "config.json disagrees": (
        lambda wd: None,
        ["--config.model.num_layers=3"],
        ["config.json:", "model.num_layers=2", "3"],
    ),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_corrupt_or_foreign_checkpoint_is_one_error_and_changes_nothing(copy, damage):
    make, overrides, expected = DAMAGES[damage]
    make(copy)
    before = tree_hashes(copy)
    result = run_cli(copy, *QUICK, "--config.train.steps=6", *overrides, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = error_lines(result.stderr)
    assert all(text in line for text in expected), line
    assert tree_hashes(copy) == before


def test_eval_checks_only_what_it_reads(copy):
    """--mode=eval verifies params and meta (a damaged optimizer state does not matter to it)."""
    flip_a_byte(biggest_file(copy / "checkpoints/4/train"))
    assert json.loads(run_cli(copy, mode="eval").stdout.splitlines()[-1])["step"] == 4
    truncate(biggest_file(copy / "checkpoints/4/params"))
    before = tree_hashes(copy)
    bad = run_cli(copy, mode="eval", check=False)
    assert bad.returncode == 2 and "checkpoints/4:" in error_lines(bad.stderr)[0]
    assert tree_hashes(copy) == before
    ev = run_cli(copy, "--config.checkpoint.on_corrupt=previous", mode="eval")
    assert json.loads(ev.stdout.splitlines()[-1])["step"] == 2 and "trying step 2" in ev.stderr


def test_on_corrupt_previous_resumes_from_the_newest_intact_step(copy):
    flip_a_byte(biggest_file(copy / "checkpoints/4/params"))
    result = run_cli(
        copy,
        *QUICK,
        "--config.train.steps=6",
        "--config.checkpoint.every_steps=2",
        "--config.checkpoint.on_corrupt=previous",
    )
    assert "warning: checkpoint" in result.stderr and "trying step 2" in result.stderr
    assert f"resumed from {copy / 'checkpoints/2'}" in result.stderr
    assert (copy / "checkpoints/4.corrupt").is_dir()  # kept aside, not deleted
    assert committed(copy / "checkpoints") == [2, 4, 6]  # step 4 saved again


def test_partial_checkpoints_are_never_used(copy):
    """A save cut short (orbax's tmp folder) and a step folder without manifest are ignored."""
    ckpt = copy / "checkpoints"
    shutil.copytree(ckpt / "4", ckpt / "6.orbax-checkpoint-tmp")
    shutil.copytree(ckpt / "4", ckpt / "8")
    (ckpt / "8" / MANIFEST).unlink()
    checkpointer = Checkpointer(ckpt, read_only=True)
    assert checkpointer.steps() == [2, 4]
    checkpointer.close()
    result = run_cli(copy, *QUICK, "--config.train.steps=6")
    assert f"resumed from {ckpt / '4'}" in result.stderr
    assert f"ignoring {ckpt / '8'}" in result.stderr
    assert committed(ckpt) == [2, 4, 6] and (ckpt / "8.corrupt").is_dir()
    assert not (ckpt / "6.orbax-checkpoint-tmp").exists()


def test_changing_training_keys_on_resume_is_allowed_and_logged(copy):
    result = run_cli(copy, *QUICK, "--config.train.steps=6", "--config.train.min_lr_ratio=0.5")
    assert result.stderr.count("note: train.steps changed on resume: 4 -> 6") == 1  # once, not per check
    assert result.stderr.count("note: train.min_lr_ratio changed on resume: 0.1 -> 0.5") == 1
    assert "read only" not in result.stderr  # Orbax's notice about the read-only resume check is dropped
    assert json.loads(result.stdout.splitlines()[-2])["step"] == 6


# --- failed background save -----------------------------------------------------------------------


def test_a_failing_save_stops_the_run_with_an_error(tmp_path):
    """The checkpoint folder becomes a file mid-run: the failed save is an error, not silence."""
    wd, ckpt, log = tmp_path / "run", tmp_path / "run" / "checkpoints", tmp_path / "log"
    proc = popen_cli(wd, *QUICK, "--config.checkpoint.every_steps=2", "--config.train.steps=200", log=log)
    try:
        assert wait_for(proc, lambda: bool(committed(ckpt)))
        ckpt.rename(wd / "moved")
        ckpt.write_text("not a folder")
        assert proc.wait(timeout=120) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
    (line,) = error_lines(log.read_text())
    assert str(ckpt) in line and ("cannot save" in line or "saving failed" in line), line


# --- non-finite loss ------------------------------------------------------------------------------

# An absurd weight decay (AdamW multiplies the kernels by 1 - lr * wd, about -3000, every step)
# overflows float32 after about 8 steps: a real divergence, mid-run.
DIVERGE = [*QUICK, "--config.train.weight_decay=1e6", "--config.checkpoint.every_steps=2"]


def test_nonfinite_loss_raises_naming_the_step_and_last_good_checkpoint(tmp_path):
    wd = tmp_path / "run"
    result = run_cli(wd, *DIVERGE, check=False)
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert "non-finite loss at step" in line and "train.on_nan='raise'" in line
    assert str(wd / "checkpoints") in line
    bad_step = int(line.split("at step ")[1].split()[0])
    good = int(line.split("last good checkpoint is step ")[1].split()[0])
    assert 2 < bad_step < 20 and good == max(committed(wd / "checkpoints")) and good < bad_step
    assert finite(restore_params(wd, good))


def test_nonfinite_updates_are_skipped_and_counted(tmp_path):
    wd = tmp_path / "run"
    run_cli(wd, *DIVERGE, "--config.train.on_nan=skip")
    train = read_metrics(wd)
    skipped = sum(m["skipped_nonfinite"] for m in train.values())
    assert 0 < skipped < 20 and train[1]["skipped_nonfinite"] == 0
    assert finite(restore_params(wd, 20))
