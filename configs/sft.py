"""Supervised fine-tuning (SFT): LoRA adapters on a Hugging Face base, trained on chat answers only.

The argument after ``:`` names the base (a local Hugging Face folder, its tokenizer and chat template
too); ``data.source`` the examples (default: the small example chat set packaged with codex_jax,
configs/data/sft_chat.jsonl, a copy of tests/fixtures/sft/chat.jsonl):

    # chat conversations (messages of {role, content}), rendered with the base's chat template
    python -m codex_jax.main --config=configs/sft.py:hf:/models/Qwen2.5-Coder-0.5B-Instruct \\
        --workdir=runs/sft
    # prompt/completion pairs from JSONL (or CSV), trained on the completions
    python -m codex_jax.main --config=configs/sft.py:hf:/models/Qwen2.5-Coder-0.5B-Instruct \\
        --workdir=runs/sft-pc --config.data.format=prompt_completion \\
        --config.data.source=jsonl:tests/fixtures/sft/prompt_completion.jsonl
    # a full fine-tune instead of adapters
    ... --config.lora.rank=0 --config.train.learning_rate=2e-5
    # then: ask it (the prompt becomes a user turn), or export the adapters for peft
    python -m codex_jax.main --config=configs/sft.py:hf:/models/... --workdir=runs/sft --mode=generate \\
        --config.generate.chat=True --config.generate.prompt='Write a function that adds 3 to x.'
    python -m codex_jax.main --config=configs/sft.py:hf:/models/... --workdir=runs/sft --mode=export \\
        --config.export.format=peft --config.export.dir=runs/sft-adapter

Examples are packed whole into rows (``data.packing='segments'``: attention and positions never cross
examples) and only the assistant answers (with their end-of-turn token) count in the loss.
"""

from pathlib import Path

from codex_jax.config import default_config

EXAMPLES = Path(__file__).resolve().parent / "data" / "sft_chat.jsonl"  # packaged with the configs


def get_config(base: str = ""):
    """The SFT config; ``base`` is 'hf:FOLDER' (or 'workdir:RUN')."""
    kind, _, where = base.partition(":")
    if kind not in ("hf", "workdir") or not where:
        raise ValueError(
            "configs/sft.py needs its base after a colon: configs/sft.py:hf:FOLDER (a local Hugging Face "
            f"folder) or configs/sft.py:workdir:RUN (got {base!r})"
        )
    c = default_config()
    c.model.init_from = base
    c.data.source = f"jsonl:{EXAMPLES}"
    c.data.format = "chat"
    c.data.packing = "segments"
    c.data.train_on = "completion"
    c.data.seq_len = 512
    c.data.batch_size = 8
    c.data.eval_fraction = 0.2
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.lora.dropout = 0.0
    c.lora.base_dtype = "bfloat16"
    c.train.learning_rate = 2e-4
    c.train.steps = 200
    c.train.warmup_steps = 10
    c.train.weight_decay = 0.0
    c.train.eval_every = 50
    c.eval.num_batches = 1
    c.checkpoint.every_steps = 50
    c.generate.chat = True
    c.generate.prompt = "Write a function that adds 3 to x."
    return c
