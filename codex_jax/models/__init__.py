"""Models: the GPT-2 / Llama ``Transformer``, attention kernels per device (``attention``), presets
(``registry``), LoRA maths (``lora``).

Hugging Face conversion lives in ``codex_jax.interop``; this package import stays light.
"""

from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_cache, init_params

__all__ = ["ModelConfig", "Transformer", "init_cache", "init_params"]
