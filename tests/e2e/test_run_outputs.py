"""What a CLI run writes, for real: eval_N.json of --mode=eval, system metrics and MLflow while training,
and a token cache another Python process reuses."""

# ruff: noqa: F811 (the unit module's fixtures, imported here, are the tests' parameters)
from __future__ import annotations

import json
import math

from conftest import REPO, run_cli, run_python
from test_data import bundle, corpus_dir  # noqa: F401 (fixtures)
from test_writers_extra import mlflow_client

from codex_jax.metrics import read_ndjson


def test_mode_eval_writes_eval_json(tmp_path):
    workdir = tmp_path / "run"
    common = [
        "--config.train.steps=2",
        "--config.train.eval_every=2",
        "--config.checkpoint.every_steps=2",
        "--config.generate.max_new_tokens=0",
        "--config.logging.writers=ndjson",
    ]
    run_cli(workdir, *common)
    metrics = "--config.eval.metrics=bits_per_byte,exact_match,line_completion"
    out = run_cli(workdir, *common, metrics, "--config.eval.line_completion_samples=4", mode="eval")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["step"] == 2
    for key in (
        "loss",
        "perplexity",
        "token_accuracy",
        "bits_per_byte",
        "exact_match",
        "line_completion",
    ):
        assert math.isfinite(result[key]), key
    assert 0 < result["line_completion_samples"] <= 4
    assert result["bits_per_byte"] < result["loss"] / math.log(2)  # more than one byte per token
    assert json.loads((workdir / "eval_2.json").read_text()) == result
    manifest = json.loads((workdir / "data_manifest.json").read_text())
    assert manifest["safety"]["policy"] == "default"  # 'auto' on the stdlib source


def test_training_logs_system_metrics_and_mlflow(tmp_path, monkeypatch):
    client = mlflow_client(tmp_path / "run", monkeypatch)
    out = run_cli(
        tmp_path / "run",
        "--config.train.steps=3",
        "--config.train.log_every=1",
        "--config.train.eval_every=3",
        "--config.checkpoint.every_steps=3",
        "--config.generate.max_new_tokens=0",
        "--config.logging.writers=ndjson,mlflow",
    )
    records = read_ndjson(tmp_path / "run" / "metrics.ndjson")
    sys_lines = [r for r in records if r["split"] == "system"]
    assert [r["step"] for r in sys_lines] == [1, 2, 3]
    assert sys_lines[0]["accelerator_memory_available"] == 0.0  # CPU: no memory stats
    assert sys_lines[0]["ram_used_gb"] > 0
    assert "accelerator memory stats" not in out.stderr  # CPU never has them: logged at INFO, not a warning
    run_id = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.data.params["train.steps"] == "3" and run.data.params["model.num_layers"] == "2"
    assert {"train/loss", "eval/loss", "system/ram_used_gb"} <= set(run.data.metrics)
    assert run.info.status == "FINISHED"


def test_another_process_reuses_the_cache(bundle, corpus_dir):
    """A separate Python process with the same config reads the cache instead of tokenizing."""
    workdir = bundle.manifest_path.parent
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from tests.unit.test_data import small_config; "
        "from codex_jax.data.pipeline import prepare_data; "
        f"b = prepare_data(small_config({str(corpus_dir)!r}), {str(workdir)!r}, write=False); "
        "print(b.train_windows.shape, b.tokenizer.checksum)"
    )
    proc = run_python(["-c", code], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reusing token cache" in proc.stderr and "building" not in proc.stderr
    assert proc.stdout.split()[-1] == bundle.tokenizer.checksum
