"""DPO: tune a trained model on preference pairs (a chosen and a rejected answer to each prompt).

The argument after ``:`` names the starting model (``model.init_from``); ``train.dpo.data`` the pairs
(default: the 16 small code pairs packaged with codex_jax, configs/data/dpo_pairs.jsonl):

    # LoRA adapters on the checkpoint configs/base.py wrote (runs/base): the reference is the base
    python -m codex_jax.main --config=configs/dpo.py --workdir=runs/dpo
    # your own pairs (JSONL or Parquet, local or gs://), 10% held out in another file
    python -m codex_jax.main --config=configs/dpo.py --workdir=runs/dpo \\
        --config.train.dpo.data=pairs.jsonl --config.train.dpo.eval_data=held_out.jsonl
    # a full fine-tune: the reference log-probs are computed once and cached in the workdir
    ... --config.lora.rank=0 --config.train.learning_rate=1e-5

Every step takes ``data.batch_size`` pairs; ``data.source`` (the base's corpus) still gives the tokenizer
and the held-out loss. Metrics: train/rewards/*, train/logps/* and, with held-out pairs, eval/dpo/*.
"""

from pathlib import Path

from codex_jax.config import default_config

PAIRS = Path(__file__).resolve().parent / "data" / "dpo_pairs.jsonl"  # packaged with the configs


def get_config(base: str = "workdir:runs/base"):
    """The DPO config; ``base`` is 'workdir:RUN' (default: runs/base) or 'hf:FOLDER'."""
    if not base.startswith(("workdir:", "hf:")):
        raise ValueError(f"configs/dpo.py:{base}: expected workdir:RUN or hf:FOLDER")
    c = default_config()
    c.model.init_from = base
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.train.objective = "dpo"
    c.train.dpo.data = str(PAIRS)
    c.train.dpo.loss = "sigmoid"
    c.train.dpo.beta = 0.1
    c.train.steps = 100
    c.train.warmup_steps = 10
    c.train.weight_decay = 0.0
    c.train.learning_rate = 5e-4 if base.startswith("workdir:") else 5e-5
    c.train.eval_every = 25
    c.checkpoint.every_steps = 25
    c.data.batch_size = 8
    c.data.seq_len = 256
    c.generate.max_new_tokens = 0
    return c
