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

from codex_jax.config import preset_config


def get_config():
    """Returns the Qwen3-0.6B config."""
    return preset_config("qwen3-0.6b")
