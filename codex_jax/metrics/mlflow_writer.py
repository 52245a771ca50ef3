"""The MLflow writer: the flattened config as params, scalars as metrics, texts as artifacts.

Offline by default: runs go to a local file store, ``workdir/mlruns`` (``mlflow ui
--backend-store-uri workdir/mlruns`` shows them), unless ``logging.mlflow_uri`` names another.
A remote tracking URI (http, https, databricks, ...) is refused unless
``logging.mlflow_allow_remote=True``. A resumed run keeps logging into the same MLflow run (its id
is kept in ``workdir/mlflow_run.json``). MLflow's usage telemetry is switched off unless the
environment already decides (``MLFLOW_DISABLE_TELEMETRY``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from codex_jax.errors import UserError
from codex_jax.metrics.base import (
    MetricWriter,
    buckets,
    flatten_hparams,
    histogram_stats,
    scalar_hparam,
    to_scalar,
)

logger = logging.getLogger(__name__)

EXTRA_HINT = "pip install 'codex-jax[mlflow]'"
LOCAL_SCHEMES = ("", "file", "sqlite")
RUN_FILE = "mlflow_run.json"
_BATCH = 100  # MLflow's limit on params (and a safe number of metrics) per log_batch call


def is_remote(uri: str) -> bool:
    """True for tracking URIs that leave this machine (anything but a path, file: or sqlite:)."""
    if uri.strip().lower() in ("databricks", "databricks-uc", "uc"):  # MLflow's bare names
        return True
    scheme = urlparse(uri).scheme.lower()
    return not (scheme in LOCAL_SCHEMES or len(scheme) == 1)  # 'c:' is a Windows drive


def tracking_uri(uri: str, workdir: str | os.PathLike, allow_remote: bool) -> str:
    """The tracking URI to use: ``workdir/mlruns`` for ``''``, a path as a ``file:`` URI.

    A remote URI without ``allow_remote`` raises UserError: runs stay offline unless asked.
    """
    if not uri:
        return Path(workdir, "mlruns").absolute().as_uri()
    if is_remote(uri):
        if not allow_remote:
            raise UserError(
                f"logging.mlflow_uri={uri!r} is a remote tracking server; metrics stay on this "
                "machine unless you also set --config.logging.mlflow_allow_remote=True"
            )
        return uri
    if urlparse(uri).scheme.lower() in ("file", "sqlite"):
        return uri
    return Path(uri).expanduser().absolute().as_uri()


def _import_mlflow(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if uri.startswith("file:"):
        # MLflow 3 keeps the file store in maintenance mode behind this switch; it needs no server
        # and no database, which is what an offline default wants.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise UserError(f"logging.writers=mlflow needs MLflow: {EXTRA_HINT} ({e})") from None
    return MlflowClient


class MlflowWriter(MetricWriter):
    """Logs to one MLflow run of ``experiment`` at ``uri`` (see the module docstring)."""

    def __init__(self, uri: str, experiment: str = "codex_jax", run_file: Path | None = None):
        client_cls = _import_mlflow(uri)
        self.uri = uri
        self.client = client_cls(tracking_uri=uri)
        self.run_id = self._resume(run_file) or self._start(experiment, run_file)

    def _resume(self, run_file) -> str | None:
        if run_file is None or not Path(run_file).is_file():
            return None
        saved = json.loads(Path(run_file).read_text())
        if saved.get("tracking_uri") != self.uri:
            return None
        try:
            self.client.update_run(saved["run_id"], status="RUNNING")
        except Exception as e:  # noqa: BLE001 - a deleted or foreign run: start a new one
            logger.warning("MLflow run %s not resumed (%s); starting a new run", saved["run_id"], e)
            return None
        return saved["run_id"]

    def _start(self, experiment: str, run_file) -> str:
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        run_id = self.client.create_run(experiment_id).info.run_id
        if run_file is not None:
            record = {"tracking_uri": self.uri, "run_id": run_id}
            Path(run_file).write_text(json.dumps(record) + "\n")
        return run_id

    def _log_metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k, v in values.items()]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + _BATCH])

    def write_scalars(self, step, scalars):
        self._log_metrics(step, {k: to_scalar(k, v) for k, v in scalars.items()})

    def write_texts(self, step, texts):
        for name, text in texts.items():
            self.client.log_text(self.run_id, text, f"texts/step_{int(step):08d}/{name}.txt")

    def write_hparams(self, hparams):
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        flat = {k: scalar_hparam(v) for k, v in flatten_hparams(hparams).items()}
        params = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in flat.items()]
        for i in range(0, len(params), _BATCH):
            try:
                self.client.log_batch(self.run_id, params=params[i : i + _BATCH])
            except MlflowException as e:  # a param changed on resume
                logger.warning("MLflow params not logged: %s", e)

    def write_histograms(self, step, arrays, num_buckets=None):
        values: dict[str, Any] = {}
        for name, array in arrays.items():
            s = histogram_stats(array, buckets(num_buckets, name))
            values.update({f"{name}/{k}": s[k] for k in ("mean", "std", "min", "max") if k in s})
        if values:
            self._log_metrics(step, values)

    def flush(self):
        pass  # every call above is written when it returns

    def close(self):
        self.client.set_terminated(self.run_id, "FINISHED")
