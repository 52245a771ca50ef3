"""Disk full and I/O errors while saving a checkpoint, writing metrics or building the token cache: one
``error:`` line, exit code 2, and the last complete checkpoint intact and resumable.

The faults are real: each run is a process whose RLIMIT_FSIZE makes the kernel refuse a write that
would grow a file past the limit (EFBIG), as a full disk refuses one (ENOSPC).
"""

import json
import os
import shutil

import pytest
from conftest import CONFIGS, REPO, xla_flags
from zygote import Zygote

from codex_jax.checkpoint import TRAIN_ITEMS, Checkpointer

ARGS = [
    f"--config={CONFIGS / 'tiny.py'}",
    "--config.train.steps=6",
    "--config.checkpoint.every_steps=2",
    "--config.train.log_every=1",
    "--config.train.eval_every=100",
    "--config.generate.max_new_tokens=0",
    "--config.logging.writers=ndjson",
]
ONE_DEVICE = {"XLA_FLAGS": xla_flags(1)}
LIMIT = 200_000  # above every file of a run but the checkpoint's biggest (~265 KB) and the token cache


@pytest.fixture(scope="module")
def zygote():
    z = Zygote({**os.environ, "JAX_PLATFORMS": "cpu"}, REPO)
    yield z
    z.close()


@pytest.fixture(scope="module")
def step_2(zygote, tmp_path_factory):
    """A run stopped after its checkpoint of step 2 (copy it before changing anything)."""
    wd = tmp_path_factory.mktemp("disk") / "run"
    log = wd.parent / "first.log"
    assert zygote.run([f"--workdir={wd}", *ARGS, "--config.train.stop_after=2"], log, ONE_DEVICE) == 0
    return wd


def error_lines(log):
    return [line for line in log.read_text().splitlines() if line.startswith("error:")]


def intact_and_resumable(zygote, wd, tmp_path):
    checkpointer = Checkpointer(wd / "checkpoints", read_only=True)
    assert checkpointer.latest_step() == 2
    checkpointer.verify(2, TRAIN_ITEMS)
    checkpointer.close()
    log = tmp_path / "resumed.log"
    assert zygote.run([f"--workdir={wd}", *ARGS], log, ONE_DEVICE) == 0, log.read_text()[-3000:]
    assert f"resumed from {wd / 'checkpoints' / '2'}" in log.read_text()
    train = [json.loads(line) for line in (wd / "metrics.ndjson").read_text().splitlines()]
    assert [r["step"] for r in train if r["split"] == "train" and "loss" in r] == list(range(1, 7))


def test_a_save_that_cannot_be_written(zygote, step_2, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(step_2, wd)
    log = tmp_path / "full.log"
    assert zygote.run([f"--workdir={wd}", *ARGS], log, ONE_DEVICE, max_file_bytes=LIMIT) == 2
    (line,) = error_lines(log)
    assert f"checkpoint {wd / 'checkpoints' / '4'}" in line and "saving failed" in line, line
    intact_and_resumable(zygote, wd, tmp_path)


def test_a_metrics_line_that_cannot_be_written(zygote, step_2, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(step_2, wd)
    path = wd / "metrics.ndjson"
    padding = {"step": 1, "split": "train", "kind": "text", "name": "pad", "text": ""}
    room = LIMIT - path.stat().st_size - len(json.dumps(padding)) - 1 - 40  # 40 bytes left
    padding["text"] = "x" * room
    with open(path, "a") as f:
        f.write(json.dumps(padding) + "\n")
    log = tmp_path / "full.log"
    assert zygote.run([f"--workdir={wd}", *ARGS], log, ONE_DEVICE, max_file_bytes=LIMIT) == 2
    (line,) = error_lines(log)
    assert f"{path}: cannot write metrics" in line and "too large" in line, line
    lines = path.read_text().splitlines()
    lines.remove(json.dumps(padding))
    path.write_text("".join(line + "\n" for line in lines))
    intact_and_resumable(zygote, wd, tmp_path)


def test_a_token_cache_that_cannot_be_written(zygote, tmp_path):
    wd = tmp_path / "run"
    log = tmp_path / "full.log"
    assert zygote.run([f"--workdir={wd}", *ARGS], log, ONE_DEVICE, max_file_bytes=100_000) == 2
    (line,) = error_lines(log)
    assert f"token cache {wd / 'cache'}: cannot write" in line, line
    # no key.json: the next run rebuilds, continuing from the tasks the build folder holds as done
    left = sorted(p.name for p in (wd / "cache").iterdir())
    assert "key.json" not in left and all(n == "eval.tokens" or n.startswith("build-") for n in left), left
    assert not (wd / "checkpoints").exists()
    log = tmp_path / "again.log"  # with room to write: the cache is finished and the run trains
    assert zygote.run([f"--workdir={wd}", *ARGS], log, ONE_DEVICE) == 0, log.read_text()[-3000:]
    assert (wd / "cache" / "key.json").is_file() and not list((wd / "cache").glob("build-*"))
