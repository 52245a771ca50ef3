"""A checkpoint written by the code before the layered refactor (tests/fixtures/legacy_run, made by its
make.py at commit 42e06b5) must restore, and resume to the same bits an uninterrupted run of that code got
(with that code's kernels: see RESUME).

The run is a process of its own with XLA's default optimisation (the bits were recorded that way; the other
tests compile at -O0: conftest.TEST_XLA_FLAGS)."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from conftest import REPO, xla_flags

FIXTURE = REPO / "tests" / "fixtures" / "legacy_run"
# The old code's kernels: XLA's attention and a backward without the residual-gradient barriers (both
# free to change on resume; with the CPU defaults the bits differ in the last place).
RESUME = """
from codex_jax import api
restored = api.evaluate(api.workdir_config("run"), "run")
assert restored["step"] == 4, restored
config = api.workdir_config("run")
config.model.attention_impl = "xla"
config.model.grad_barriers = "off"
api.train(config, "run")
"""


def _digest(tree) -> str:
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(leaves, key=lambda x: jax.tree_util.keystr(x[0])):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


def _train_losses(workdir: Path) -> dict[str, float]:
    out = {}
    for line in (workdir / "metrics.ndjson").read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and "loss" in record:
            out[str(record["step"])] = record["loss"]
    return out


def test_legacy_checkpoint_restores_and_resumes_bit_exactly(tmp_path):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    shutil.copytree(FIXTURE / "corpus", tmp_path / "corpus")
    shutil.copytree(FIXTURE / "run", tmp_path / "run")
    cache_key = (tmp_path / "run" / "cache" / "key.json").read_text()
    tokens = (tmp_path / "run" / "cache" / "train.tokens").read_bytes()

    env = {**os.environ, "XLA_FLAGS": xla_flags(8, optimized=True), "JAX_PLATFORMS": "cpu"}
    # from tmp_path: data.source is the relative 'corpus/*.py'
    run = subprocess.run(
        [sys.executable, "-c", RESUME], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    losses = _train_losses(tmp_path / "run")
    assert losses == expected["train_loss"]  # steps 1-4 kept, 5-8 recomputed to the same bits
    for step in ("4", "8"):
        params = ocp.StandardCheckpointer().restore(tmp_path / "run" / "checkpoints" / step / "params")
        assert _digest(params) == expected["params_sha256"][step]
    assert (tmp_path / "run" / "cache" / "key.json").read_text() == cache_key
    assert (tmp_path / "run" / "cache" / "train.tokens").read_bytes() == tokens
