"""The mlflow and clu writers, system metrics in the training loop, writer selection."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from codex_jax.config.schema import default_config, flatten
from codex_jax.config.validation import validate
from codex_jax.errors import UserError
from codex_jax.metrics import mlflow_writer, system
from codex_jax.metrics.base import scalar_hparam
from codex_jax.metrics.writers import create_writers


def mlflow_client(workdir, monkeypatch):
    """A client of the run's file store (MLflow 3 reads it behind MLFLOW_ALLOW_FILE_STORE)."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=(workdir / "mlruns").absolute().as_uri())


def test_mlflow_writer_logs_params_metrics_texts_offline(tmp_path, monkeypatch):
    client = mlflow_client(tmp_path, monkeypatch)
    cfg = default_config()
    writers = create_writers("mlflow", tmp_path, is_main_process=True, options=cfg.logging)
    writers.write_hparams(flatten(cfg))
    for step in (1, 2, 3):
        writers.write_scalars(step, {"train/loss": np.float32(4.0 - step), "eval/perplexity": 9.5})
    writers.write_texts(3, {"sample": "def f(): pass"})
    writers.write_histograms(3, {"train/grads": np.arange(4.0)})
    writers.close()

    run_id = json.loads((tmp_path / "mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {k: str(scalar_hparam(v)) for k, v in flatten(cfg).items()}
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert run.data.metrics["train/grads/mean"] == 1.5
    assert client.get_experiment(run.info.experiment_id).name == "codex_jax"
    texts = client.list_artifacts(run_id, "texts/step_00000003")
    assert [a.path for a in texts] == ["texts/step_00000003/sample.txt"]

    again = create_writers("mlflow", tmp_path, is_main_process=True)  # a resumed run continues
    again.write_scalars(4, {"train/loss": 0.5})
    again.close()
    assert json.loads((tmp_path / "mlflow_run.json").read_text())["run_id"] == run_id
    assert len(client.get_metric_history(run_id, "train/loss")) == 4


@pytest.mark.parametrize("uri", ["https://mlflow.example.com", "http://10.0.0.1:5000", "databricks"])
def test_mlflow_remote_uri_needs_allow_remote(tmp_path, uri):
    with pytest.raises(UserError, match="mlflow_allow_remote=True"):
        create_writers("mlflow", tmp_path, False, options={"mlflow_uri": uri})
    assert mlflow_writer.tracking_uri(uri, tmp_path, allow_remote=True) == uri
    cfg = default_config()
    cfg.logging.writers, cfg.logging.mlflow_uri = "ndjson,mlflow", uri
    with pytest.raises(UserError, match="logging.mlflow_uri"):
        validate(cfg)
    cfg.logging.mlflow_allow_remote = True
    validate(cfg)


def test_mlflow_local_uris(tmp_path):
    assert mlflow_writer.tracking_uri("", tmp_path, False) == (tmp_path / "mlruns").as_uri()
    assert mlflow_writer.tracking_uri(str(tmp_path / "x"), tmp_path, False).startswith("file://")
    for uri in ("file:///tmp/m", "sqlite:///tmp/m.db"):
        assert mlflow_writer.tracking_uri(uri, tmp_path, False) == uri


def test_clu_writer_without_tensorflow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as where TensorFlow is not installed
    with pytest.raises(UserError, match=r"pip install 'codex-jax\[clu\]'"):
        create_writers("ndjson,clu", tmp_path, is_main_process=True)


def test_clu_writer_for_real(tmp_path):
    """Runs where the 'clu' extra (tensorflow-cpu, tensorboard) is installed."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    writers = create_writers("clu", tmp_path, is_main_process=True)
    writers.write_hparams(flatten(default_config()))
    writers.write_scalars(5, {"train/loss": 1.25})
    writers.write_texts(5, {"sample": "def f(): pass"})
    writers.close()
    events = EventAccumulator(str(tmp_path / "clu"), size_guidance={"tensors": 0})
    events.Reload()
    (loss,) = events.Tensors("train/loss")
    assert loss.step == 5 and float(tensor_util.make_ndarray(loss.tensor_proto)) == 1.25
    assert "sample" in events.Tags()["tensors"]


def test_system_collect_reuses_one_instance():
    first = system.collect()
    assert system.collect().keys() == first.keys()
    assert system._shared is not None
    for key in (
        "system/cpu_percent",
        "system/ram_used_gb",
        "system/nvml_available",
        "system/accelerator_memory_available",
    ):
        assert key in first
