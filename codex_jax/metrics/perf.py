"""Throughput and model FLOPs utilisation (MFU): peak FLOP/s per device kind and a step timer."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable

# Peak dense bf16 FLOP/s of one jax device, by `jax.devices()[0].device_kind` (lowercased).
# TPU v2/v3 expose each TensorCore as a jax device (two per chip), v4 and later one per chip.
_TPU_PEAK_FLOPS = {
    "tpu v2": 22.5e12,  # 45e12 per chip
    "tpu v3": 61.5e12,  # 123e12 per chip
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,  # v5e
    "tpu v5e": 197e12,
    "tpu v5": 459e12,  # v5p
    "tpu v5p": 459e12,
    "tpu v6 lite": 918e12,  # v6e (Trillium)
    "tpu v6e": 918e12,
}

# GPU names vary by board ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB
# HBM3"): first matching pattern wins, so specific variants come before the family.
_GPU_PEAK_FLOPS = (
    (r"h100.*pcie", 756e12),
    (r"h100.*nvl", 835e12),
    (r"h100", 989e12),  # SXM (HBM3)
    (r"h200.*nvl", 835e12),
    (r"h200", 989e12),
    (r"a100", 312e12),  # SXM and PCIe
    (r"\bl4\b", 121e12),
)


def peak_flops_per_device(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of one device of ``device_kind``, or None when unknown (e.g. CPU)."""
    kind = device_kind.strip().lower()
    if kind in _TPU_PEAK_FLOPS:
        return _TPU_PEAK_FLOPS[kind]
    if "nvidia" in kind:
        for pattern, flops in _GPU_PEAK_FLOPS:
            if re.search(pattern, kind):
                return flops
    return None


def mfu(flops_per_token: float, tokens_per_second: float, num_devices: int, device_kind: str) -> float | None:
    """Model FLOPs utilisation in [0, 1]: achieved model FLOP/s over the devices' peak.

    ``tokens_per_second`` is the global rate over all ``num_devices``; ``flops_per_token`` counts
    forward and backward (e.g. ``6*N + 12*L*H*Q*T``). None when the device's peak is unknown.
    """
    peak = peak_flops_per_device(device_kind)
    if peak is None:
        return None
    return flops_per_token * tokens_per_second / (num_devices * peak)


class StepTimer:
    """Measures step time, tokens/s and the fraction of time spent waiting for input.

    Per step: ``data_start()`` before fetching the batch, ``data_end()`` once it arrived, and
    ``step_end(tokens)`` after the step. A step's time runs from the previous ``step_end`` (or the
    first ``data_start``/``start``) to its own ``step_end``, so it includes everything done in the
    loop. Call ``start()`` after a pause (eval, checkpoint) to keep it out of the next step. With
    jax's asynchronous dispatch, step times are only honest if the step blocks (e.g. on fetched
    metrics) or averaged over many steps.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._mark: float | None = None
        self._data_start: float | None = None
        self._wait = 0.0
        self._steps: list[tuple[float, float, int]] = []  # (step_time, data_wait, tokens)

    def start(self) -> None:
        """Marks the start of the next step (discarding time since the last ``step_end``)."""
        self._mark = self._clock()
        self._wait = 0.0

    def data_start(self) -> None:
        """Marks the start of a wait for input."""
        self._data_start = self._clock()
        if self._mark is None:
            self._mark = self._data_start

    def data_end(self) -> None:
        """Marks the end of a wait for input started by ``data_start``."""
        if self._data_start is None:
            raise RuntimeError("StepTimer.data_end() called without data_start()")
        self._wait += self._clock() - self._data_start
        self._data_start = None

    def step_end(self, tokens: int) -> None:
        """Ends a step that processed ``tokens`` tokens (global, all devices)."""
        now = self._clock()
        if self._mark is None:
            raise RuntimeError("StepTimer.step_end() called before start() or data_start()")
        self._steps.append((now - self._mark, self._wait, int(tokens)))
        self._mark, self._wait = now, 0.0

    def summary(self) -> dict[str, float | int]:
        """Stats over the steps since the last summary (then forgets them); {} when none.

        Keys: ``step_time_median``, ``step_time_mean`` (seconds), ``tokens_per_second`` (total
        tokens over total time), ``data_wait_fraction`` (input wait over total time), ``steps``.
        """
        steps, self._steps = self._steps, []
        if not steps:
            return {}
        times = [t for t, _, _ in steps]
        total = sum(times)
        return {
            "step_time_median": statistics.median(times),
            "step_time_mean": total / len(times),
            "tokens_per_second": sum(n for _, _, n in steps) / total if total > 0 else 0.0,
            "data_wait_fraction": sum(w for _, w, _ in steps) / total if total > 0 else 0.0,
            "steps": len(steps),
        }
