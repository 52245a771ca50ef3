"""LoRA fine-tuning: adapters on every projection of a frozen base, on your own code.

The argument after ``:`` names the base (``model.init_from``); ``data.source`` the code to learn:

    # the checkpoint configs/base.py wrote (runs/base), fine-tuned on a code folder
    python -m codex_jax.main --config=configs/lora.py --workdir=runs/lora \\
        --config.data.source='/src/myproject/**/*.py'
    # a Hugging Face model from a local folder (its tokenizer too), e.g. TinyLlama
    python -m codex_jax.main --config=configs/lora.py:hf:/models/TinyLlama-1.1B \\
        --workdir=runs/lora-tinyllama --config.data.source='/src/myproject/**/*.py'
    # then: the adapters for peft, or the merged model for transformers
    python -m codex_jax.main --config=configs/lora.py --workdir=runs/lora --mode=export \\
        --config.data.source='/src/myproject/**/*.py' \\
        --config.export.format=peft --config.export.dir=runs/lora-adapter

Checkpoints hold the adapters and their optimizer state only; the base is read again from
``model.init_from`` on resume, eval, generate and export (and refused if it changed).
"""

from codex_jax.config import default_config


def get_config(base: str = "workdir:runs/base"):
    """The LoRA config; ``base`` is 'workdir:RUN' (default: runs/base) or 'hf:FOLDER'."""
    if not base.startswith(("workdir:", "hf:")):
        raise ValueError(f"configs/lora.py:{base}: expected workdir:RUN or hf:FOLDER")
    c = default_config()
    c.model.init_from = base
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.lora.dropout = 0.05
    c.train.steps = 300
    c.train.warmup_steps = 20
    c.train.weight_decay = 0.0
    c.train.eval_every = 50
    c.checkpoint.every_steps = 50
    if base.startswith("hf:"):  # a large pretrained model: bf16 base, small steps, longer context
        c.lora.base_dtype = "bfloat16"
        c.train.learning_rate = 2e-4
        c.data.seq_len = 512
        c.data.batch_size = 8
    else:  # the small configs/base.py model (256 positions)
        c.train.learning_rate = 2e-3
        c.data.seq_len = 256
    return c
