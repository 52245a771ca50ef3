"""Process settings that must come before JAX allocates or compiles: glibc's allocator and the persistent
XLA compilation cache.

:func:`tune_malloc` runs when ``codex_jax`` is imported (every entry point: ``python -m codex_jax.main``,
``codex-jax``, ``import codex_jax.api``, tools/). glibc's defaults hand XLA's large per-step buffers back to
the kernel when they are freed and fault them in again on the next step (on CPU, a tenth or more of a step's
time in page faults); with a high mmap threshold, no trimming and a top pad, freed buffers stay in the heap
and are reused. One arena for every thread: XLA's step runs on other threads than the one that imported
codex_jax, and a thread's own arena (heaps of at most 64 MB) serves a larger buffer with a fresh ``mmap``
whatever the threshold (the base config's step: 190,000 page faults and half its kernel time). The
process keeps what it freed for the next step instead of returning it: its RSS stays near its peak between
steps. The same as starting with ``MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647
MALLOC_TOP_PAD_=536870912 MALLOC_ARENA_MAX=1``. Skipped when any ``MALLOC_*`` variable is set (the user's
own settings win), with ``CODEX_JAX_MALLOC=0``, or without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from pathlib import Path
from typing import Any

# mallopt parameters (malloc.h) and the values set: mallopt takes an int, so 2**31 - 1 is "never".
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -2, -3, -8
MALLOC_SETTINGS = (
    (M_MMAP_THRESHOLD, 2**31 - 1),
    (M_TRIM_THRESHOLD, 2**31 - 1),
    (M_TOP_PAD, 512 << 20),
    (M_ARENA_MAX, 1),
)


@functools.cache
def tune_malloc() -> bool:
    """Sets :data:`MALLOC_SETTINGS` through ``mallopt`` once per process; whether they were set."""
    if os.environ.get("CODEX_JAX_MALLOC", "1") == "0" or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has a mallopt that does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/codex_jax/xla`` (``~/.cache/codex_jax/xla`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "codex_jax" / "xla"


def use_compilation_cache(setting: str) -> str | None:
    """Turns on JAX's persistent compilation cache (``runtime.compilation_cache``): ``'auto'`` (the user's
    cache dir, :func:`default_cache_dir`), a folder, or ``''`` (off). A cache folder already given to
    JAX (``JAX_COMPILATION_CACHE_DIR``, ``jax.config``) is kept. Returns the folder in use, or None."""
    import jax  # here, not at the top: importing codex_jax (codex-jax --help) does not import jax

    if not setting:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    config: Any = jax.config  # its flags are attributes that mypy does not see
    if not config.jax_compilation_cache_dir:
        folder = default_cache_dir() if setting == "auto" else Path(setting).expanduser()
        jax.config.update("jax_compilation_cache_dir", str(folder))
    return config.jax_compilation_cache_dir if config.jax_enable_compilation_cache else None
