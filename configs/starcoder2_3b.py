"""StarCoder2-3B's architecture (model.preset='starcoder2-3b'): 30 layers, 3072 wide, 24 / 2 heads.

LayerNorm and biases, a plain GELU MLP, a 4,096-token sliding window, a 49,152-token vocabulary.

Two uses. On any CPU host, what one step costs on a TPU (per-chip memory and FLOPs):
    codex-jax compile --config=configs/starcoder2_3b.py --topology=v5e:2x2
And fine-tuning the real weights from a local Hugging Face folder (its config.json then sets the
architecture and its tokenizer is used; LoRA keeps the base frozen):
    codex-jax train --config=configs/starcoder2_3b.py --workdir=runs/starcoder2_3b \\
        --config.model.init_from=hf:/models/StarCoder2-3B --config.lora.rank=16 \\
        --config.data.source='/src/**/*.py'
Without model.init_from it trains from random weights with a tokenizer trained on data.source.
"""

from codex_jax.config import default_config


def get_config():
    """Returns the StarCoder2-3B config."""
    c = default_config()
    c.model.preset = "starcoder2-3b"
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
