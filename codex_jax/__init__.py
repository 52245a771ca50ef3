"""codex_jax: train, LoRA-fine-tune, evaluate and sample decoder-only code language models."""

__version__ = "0.1.0"

from codex_jax import runtime as _runtime  # noqa: E402

_runtime.tune_malloc()  # before JAX allocates, on every entry point (codex_jax/runtime.py)
