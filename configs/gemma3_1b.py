"""Gemma-3-1B's architecture (model.preset='gemma-3-1b'): 26 layers, 1152 wide, 5 local : 1 global.

4 query / 1 KV head of 256 dims; five sliding-window (512) layers to each global one, each kind with its
own RoPE base; q/k norms, four norms per block; a 262,144-token vocabulary.

Two uses. On any CPU host, what one step costs on a TPU (per-chip memory and FLOPs):
    codex-jax compile --config=configs/gemma3_1b.py --topology=v5e:2x2
And fine-tuning the real weights from a local Hugging Face folder (its config.json then sets the
architecture and its tokenizer is used; LoRA keeps the base frozen):
    codex-jax train --config=configs/gemma3_1b.py --workdir=runs/gemma3_1b \\
        --config.model.init_from=hf:/models/Gemma-3-1B --config.lora.rank=16 \\
        --config.data.source='/src/**/*.py'
Without model.init_from it trains from random weights with a tokenizer trained on data.source.
"""

from codex_jax.config import preset_config


def get_config():
    """Returns the Gemma-3-1B config."""
    return preset_config("gemma-3-1b")
