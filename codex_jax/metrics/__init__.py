"""Metric writers (TensorBoard, NDJSON, console), throughput/MFU and system metrics."""

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
