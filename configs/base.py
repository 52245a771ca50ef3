"""The embedded default: a small GPT-2 style code model on the Python standard library source.

Finishes in under 10 minutes on a 2-core laptop CPU. Usage:
    python -m codex_jax.main --config=configs/base.py [--config.train.steps=600 ...]
"""

from codex_jax.config import default_config


def get_config():
    """Returns the base config (see codex_jax/config.py for every key)."""
    return default_config()
