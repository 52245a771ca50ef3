"""Metric writers (TensorBoard, NDJSON, console, MLflow, CLU), evaluation metrics, throughput/MFU
and system metrics."""

from codex_jax.metrics.mlflow_writer import MlflowWriter
from codex_jax.metrics.perf import StepTimer, mfu, peak_flops_per_device
from codex_jax.metrics.system import SystemMetrics
from codex_jax.metrics.writers import (
    ConsoleWriter,
    MetricWriter,
    MultiWriter,
    NdjsonWriter,
    TensorBoardWriter,
    create_writers,
    read_ndjson,
)

__all__ = [
    "ConsoleWriter",
    "MetricWriter",
    "MlflowWriter",
    "MultiWriter",
    "NdjsonWriter",
    "StepTimer",
    "SystemMetrics",
    "TensorBoardWriter",
    "create_writers",
    "mfu",
    "peak_flops_per_device",
    "read_ndjson",
]
