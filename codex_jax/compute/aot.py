"""Ahead-of-time compilation of a step: what it costs to compile (cold, and warm from the persistent
compilation cache), the memory it needs per device and its FLOPs, read from the compiled executable
(``compiled.memory_analysis()`` / ``cost_analysis()``) without running it."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable

import jax
from jax._src import compilation_cache  # private: reset() makes a changed cache folder take effect

GB = 1e9


@contextlib.contextmanager
def _fresh_cache():
    """A new, empty persistent compilation cache folder for the duration (then the previous settings)."""
    names = (
        "jax_compilation_cache_dir",
        "jax_enable_compilation_cache",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    previous = {name: getattr(jax.config, name) for name in names}
    with tempfile.TemporaryDirectory(prefix="codex-jax-xla-") as folder:
        compilation_cache.reset_cache()
        for name, value in zip(names, (folder, True, 0.0, 0), strict=True):
            jax.config.update(name, value)
        try:
            yield folder
        finally:
            compilation_cache.reset_cache()
            for name, value in previous.items():
                jax.config.update(name, value)


def compile_cold_and_warm(lower: Callable[[], jax.stages.Lowered]):
    """``(compiled, cold_s, warm_s)``: ``lower().compile()`` (e.g. a runner's ``lower_train_step``) through
    an empty persistent cache (cold) and again after dropping the in-memory caches, so the executable comes
    from that cache (warm: what a restarted run pays)."""
    with _fresh_cache():
        start = time.perf_counter()
        compiled = lower().compile()
        cold_s = time.perf_counter() - start
        jax.clear_caches()
        start = time.perf_counter()
        lower().compile()
        warm_s = time.perf_counter() - start
    return compiled, cold_s, warm_s


def memory_report(compiled) -> dict:
    """Per-device bytes (GB) of a compiled step: arguments, outputs, temporaries, and their total less
    what donation aliases (``None`` values when the backend does not report them)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {"argument_gb": None, "output_gb": None, "temp_gb": None, "total_gb": None}
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    return {
        "argument_gb": round(stats.argument_size_in_bytes / GB, 4),
        "output_gb": round(stats.output_size_in_bytes / GB, 4),
        "temp_gb": round(stats.temp_size_in_bytes / GB, 4),
        "total_gb": round(total / GB, 4),
    }


def flops(compiled) -> float | None:
    """FLOPs of one call of a compiled step per device (XLA's count), or None when not reported."""
    costs = compiled.cost_analysis()
    if isinstance(costs, list):  # older jax: one dict per computation
        costs = costs[0] if costs else None
    return float(costs["flops"]) if costs and "flops" in costs else None
