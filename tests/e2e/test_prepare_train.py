"""``codex-jax prepare`` then ``codex-jax train``, in real processes: training on the pipeline's ArrayRecord
cache equals training on its own in-process cache bit for bit, resumes bit-exactly, and a missing shard or a
cache prepared for other data settings is one ``error:`` line with exit code 2."""

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import CONFIGS, read_metrics, restore_params, run_cli, run_python

pytest.importorskip("apache_beam")

COMMON = [
    "--config.train.steps=12",
    "--config.checkpoint.every_steps=6",
    "--config.train.log_every=1",
    "--config.train.eval_every=100",
    "--config.model.num_layers=1",
    "--config.generate.max_new_tokens=0",
]


def _errors(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_training_on_the_prepared_cache_matches_and_resumes(tmp_path):
    prepared, in_process = tmp_path / "prepared", tmp_path / "in_process"
    argv = ["-m", "codex_jax.cli", "prepare", f"--config={CONFIGS / 'tiny.py'}", f"--workdir={prepared}"]
    beam = ["--shard_tokens=40000", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    done = run_python([*argv, *beam])
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[0])
    assert summary["shards"]["train"] > 1 and (prepared / "cache" / "key.json").is_file()

    run_cli(in_process, *COMMON)
    first = run_cli(prepared, *COMMON, "--config.train.stop_after=6")
    assert "reusing token cache" in first.stderr and "building the token cache" not in first.stderr
    run_cli(prepared, *COMMON)  # resumed at step 6
    a, b = read_metrics(in_process), read_metrics(prepared)
    assert [a[s]["loss"] for s in range(1, 13)] == [b[s]["loss"] for s in range(1, 13)]
    jax.tree.map(np.testing.assert_array_equal, restore_params(in_process, 12), restore_params(prepared, 12))

    for case in ("missing", "other"):
        run = tmp_path / case
        for name in ("cache", "tokenizer"):
            shutil.copytree(prepared / name, run / name)
        key = json.loads((run / "cache" / "key.json").read_text())
        if case == "missing":
            (run / "cache" / key["shards"]["train"][0]["name"]).unlink()
            refused = run_cli(run, *COMMON, check=False)
            want = f"{key['shards']['train'][0]['name']} is missing"
        else:
            refused = run_cli(run, *COMMON, "--config.data.max_files=20", check=False)
            want = "prepared (codex-jax prepare) for other data: data.max_files=40 there, 20 here"
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert len(_errors(refused)) == 1 and want in _errors(refused)[0]
