"""Host and accelerator metrics (psutil, jax memory stats, NVML) for the metric writers."""

from __future__ import annotations

import logging
import os
from typing import Any

import psutil

logger = logging.getLogger(__name__)

_GB = 1e9


class SystemMetrics:
    """Collects ``system/*`` metrics; call ``collect()`` once per logging interval.

    Always present: ``system/cpu_percent`` (all cores, since the previous call),
    ``system/ram_used_gb``, ``system/process_rss_gb``, ``system/accelerator_memory_available`` and
    ``system/nvml_available`` (1 or 0). With memory stats from the jax backend (GPU, TPU; not CPU):
    ``system/accelerator_memory_{used,peak,limit}_gb`` (max over local devices; limit is the min).
    With NVML on a GPU backend (``pip install nvidia-ml-py``): ``system/gpu_utilization_percent``
    (mean over visible GPUs). A missing source is logged once (a warning; info for NVML off GPU) and
    flagged 0.
    """

    def __init__(self):
        import jax

        self._devices = jax.local_devices()
        self._backend = jax.default_backend()
        self._reported: set[str] = set()
        self._process = psutil.Process()
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement
        self._nvml_handles = self._init_nvml()

    def _missing(self, source: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
        if source not in self._reported:
            self._reported.add(source)
            logger.log(level, message, *args)

    def collect(self) -> dict[str, float]:
        """Returns the current metrics (see the class docstring for the keys)."""
        memory = psutil.virtual_memory()
        metrics = {
            "system/cpu_percent": float(psutil.cpu_percent(interval=None)),
            "system/ram_used_gb": memory.used / _GB,
            "system/process_rss_gb": self._process.memory_info().rss / _GB,
        }
        metrics.update(self._accelerator_memory())
        metrics.update(self._gpu_utilization())
        return metrics

    def _accelerator_memory(self) -> dict[str, float]:
        try:
            stats = [d.memory_stats() for d in self._devices]
        except Exception as e:  # backends may raise instead of returning None
            stats = [None]
            self._missing("memory", "accelerator memory stats failed: %s", e)
        if not stats or any(s is None or "bytes_in_use" not in s for s in stats):
            level = logging.INFO if self._backend == "cpu" else logging.WARNING  # CPU never reports them
            self._missing(
                "memory",
                "accelerator memory stats not reported by jax backend %r",
                self._backend,
                level=level,
            )
            return {"system/accelerator_memory_available": 0.0}
        metrics = {
            "system/accelerator_memory_available": 1.0,
            "system/accelerator_memory_used_gb": max(s["bytes_in_use"] for s in stats) / _GB,
        }
        if all("peak_bytes_in_use" in s for s in stats):
            peak = max(s["peak_bytes_in_use"] for s in stats)
            metrics["system/accelerator_memory_peak_gb"] = peak / _GB
        if all("bytes_limit" in s for s in stats):
            metrics["system/accelerator_memory_limit_gb"] = min(s["bytes_limit"] for s in stats) / _GB
        return metrics

    def _init_nvml(self) -> list[Any]:
        if self._backend != "gpu":
            self._missing("nvml", "NVML not used: jax backend is %r", self._backend, level=logging.INFO)
            return []
        try:
            import pynvml

            pynvml.nvmlInit()
            indices = _visible_gpu_indices(pynvml.nvmlDeviceGetCount())
            return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        except ImportError:
            self._missing("nvml", "GPU utilisation not reported: pip install nvidia-ml-py")
        except Exception as e:  # pynvml.NVMLError (no driver library, permissions)
            self._missing("nvml", "GPU utilisation not reported: NVML failed: %s", e)
        return []

    def _gpu_utilization(self) -> dict[str, float]:
        if not self._nvml_handles:
            return {"system/nvml_available": 0.0}
        import pynvml

        try:
            rates = [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._nvml_handles]
        except Exception as e:  # pynvml.NVMLError
            self._missing("nvml_query", "NVML utilisation query failed: %s", e)
            return {"system/nvml_available": 0.0}
        return {
            "system/nvml_available": 1.0,
            "system/gpu_utilization_percent": sum(rates) / len(rates),
        }

    def close(self) -> None:
        """Releases NVML."""
        if self._nvml_handles:
            import pynvml

            pynvml.nvmlShutdown()
            self._nvml_handles = []


def _visible_gpu_indices(count: int) -> list[int]:
    """NVML indices of the GPUs this process sees (from ``CUDA_VISIBLE_DEVICES`` if numeric)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        entries = [v.strip() for v in visible.split(",") if v.strip()]
        if all(v.isdigit() for v in entries):
            return [int(v) for v in entries if int(v) < count]
    return list(range(count))


_shared: SystemMetrics | None = None


def collect() -> dict[str, float]:
    """``SystemMetrics.collect()`` of one instance per process, created on the first call."""
    global _shared
    if _shared is None:
        _shared = SystemMetrics()
    return _shared.collect()
