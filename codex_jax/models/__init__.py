"""Models: the GPT-2 / Llama ``Transformer``, presets (``registry``), Hugging Face I/O (``hf``).

``from codex_jax.models import hf`` loads the converter on demand; this package import stays light.
"""

from codex_jax.models.transformer import ModelConfig, Transformer, init_cache, init_params

__all__ = ["ModelConfig", "Transformer", "init_cache", "init_params"]
