"""Qwen3-0.6B's architecture (model.preset='qwen3-0.6b'): 28 layers, 1024 wide, q/k norms, 151,936 tokens.

16 query / 8 KV heads of 128 dims (head_dim apart from the width), tied embeddings.

Two uses. On any CPU host, what one step costs on a TPU (per-chip memory and FLOPs):
    codex-jax compile --config=configs/qwen3_0_6b.py --topology=v5e:2x2
And fine-tuning the real weights from a local Hugging Face folder (its config.json then sets the
architecture and its tokenizer is used; LoRA keeps the base frozen):
    codex-jax train --config=configs/qwen3_0_6b.py --workdir=runs/qwen3_0_6b \\
        --config.model.init_from=hf:/models/Qwen3-0.6B --config.lora.rank=16 \\
        --config.data.source='/src/**/*.py'
Without model.init_from it trains from random weights with a tokenizer trained on data.source.
"""

from codex_jax.config import default_config


def get_config():
    """Returns the Qwen3-0.6B config."""
    c = default_config()
    c.model.preset = "qwen3-0.6b"
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "dots_saveable"
    c.parallel.mesh.data = 1
    c.parallel.mesh.fsdp = -1  # parameters and optimizer state sharded over every device
    c.data.seq_len = 2048
    c.data.batch_size = 8
    c.train.steps = 1000
    c.train.warmup_steps = 50
    c.train.learning_rate = 1e-4
    c.train.log_every = 10
    c.train.eval_every = 200
    c.eval.num_batches = 4
    c.checkpoint.every_steps = 200
    return c
