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

from codex_jax.config import preset_config


def get_config():
    """Returns the StarCoder2-3B config."""
    return preset_config("starcoder2-3b")
