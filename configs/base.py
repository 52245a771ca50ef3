"""The embedded default: a small GPT-2 style code model on the Python standard library source.

Sized for a 2-core laptop CPU: about 5 minutes end to end (tokenizer, tokenization, 900 steps of
16 x 256 tokens, evaluations). The vocabulary is small (384 pieces: the 256 byte-fallback pieces plus the
most useful merges), which suits a model this small. Usage:

    python -m codex_jax.main --config=configs/base.py [--config.train.steps=2000 ...]
"""

from codex_jax.config import default_config


def get_config():
    """Returns the base config (see codex_jax/config.py for every key)."""
    c = default_config()
    c.model.vocab_size = 384
    c.model.d_model = 128
    c.model.d_ff = 512
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = 4
    c.train.steps = 900
    c.train.warmup_steps = 40
    c.train.learning_rate = 1e-2
    c.train.eval_every = 150
    c.checkpoint.every_steps = 150
    return c
