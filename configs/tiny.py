"""Seconds-scale config for tests and smoke runs: a two-layer model on 40 stdlib files."""

from codex_jax.config import default_config


def get_config():
    """Returns the tiny config."""
    c = default_config()
    c.data.max_files = 40
    c.data.seq_len = 64
    c.data.batch_size = 8
    c.data.eval_fraction = 0.2
    c.data.tokenizer_train_bytes = 2_000_000
    c.model.num_layers = 2
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.d_model = 64
    c.model.d_ff = 128
    c.model.vocab_size = 512
    c.train.steps = 20
    c.train.warmup_steps = 2
    c.train.learning_rate = 3e-3
    c.train.log_every = 2
    c.train.eval_every = 10
    c.eval.num_batches = 2
    c.checkpoint.every_steps = 10
    c.generate.max_new_tokens = 8
    c.logging.progress = False
    return c
