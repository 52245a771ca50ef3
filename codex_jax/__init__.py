"""codex_jax: train, LoRA-fine-tune, evaluate and sample decoder-only code language models."""

__version__ = "0.1.0"
