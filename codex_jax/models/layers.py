"""The weight-holding layers of the transformer: RMS/LayerNorm, the linear projection with its LoRA adapter,
the token embedding, and the output head's logits. A QLoRA base's kernels and (with
``lora.quantize_embeddings``) its embedding and head are quantized (models/quant.py): each layer takes the
stored form, a plain array or a quantized dict, through :func:`param_or_quantized`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from codex_jax.models import grad_barrier, quant
from codex_jax.models.attention import softcap
from codex_jax.models.config import ModelConfig


def init_normal(std: float = 0.02):
    return nn.initializers.normal(stddev=std)


class Norm(nn.Module):
    """``cfg.norm`` over the last axis (LayerNorm with a bias, or RMSNorm times ``norm_offset + scale``),
    computed in float32; ``kind`` overrides the config's (the q/k norms are always RMSNorm)."""

    cfg: ModelConfig
    kind: str = ""

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        x32 = x.astype(jnp.float32)
        if (self.kind or cfg.norm) == "layernorm":
            scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), cfg.weights_dtype)
            bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), cfg.weights_dtype)
            mean = x32.mean(-1, keepdims=True)
            var = jnp.square(x32 - mean).mean(-1, keepdims=True)
            y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps) * scale + bias
        else:
            init = nn.initializers.zeros if cfg.norm_offset else nn.initializers.ones
            scale = self.param("scale", init, (x.shape[-1],), cfg.weights_dtype)
            ms = jnp.square(x32).mean(-1, keepdims=True)
            y = x32 * jax.lax.rsqrt(ms + cfg.norm_eps) * (cfg.norm_offset + scale.astype(jnp.float32))
        return y.astype(cfg.compute_dtype)


def param_or_quantized(module: nn.Module, name: str, std: float, shape: tuple[int, ...]) -> Any:
    """``module``'s param ``name``: the quantized one a QLoRA base holds (a dict, models/quant.py), or
    an array of ``shape`` (created at init with a normal(``std``) draw)."""
    if module.has_variable("params", name) and quant.is_quantized(module.get_variable("params", name)):
        return module.get_variable("params", name)
    return module.param(name, init_normal(std), shape, module.cfg.weights_dtype)


class Embed(nn.Module):
    """Token embedding ``[V, D]`` under ``nn.Embed``'s param name and init (``embedding``), in the compute
    dtype. ``table`` may be a quantized one (``lora.quantize_embeddings``, models/quant.py); a tied
    output head reads it too (``Transformer._head``)."""

    cfg: ModelConfig
    num_embeddings: int
    std: float = 0.02

    def setup(self):
        self.table = param_or_quantized(self, "embedding", self.std, (self.num_embeddings, self.cfg.d_model))

    def __call__(self, tokens_BxT):
        dtype = self.cfg.compute_dtype
        if quant.is_quantized(self.table):
            return quant.take(self.table, tokens_BxT, dtype)
        return jnp.take(self.table.astype(dtype), tokens_BxT, axis=0)


# A quantized head is dequantized in chunks of at most this many vocabulary columns (a Llama-1B-shaped
# head's 32,000 x 2048 would otherwise be a 0.13 GB bfloat16 temporary, and XLA's CPU float32 copy 0.26).
HEAD_COLUMNS = 8192


def head_logits(cfg: ModelConfig, x_BxTxD, head) -> jax.Array:
    """Float32 logits ``softcap(x @ head.T)`` of the output head ``[V, D]`` (an array, or quantized:
    dequantized inside the matmul chunk by chunk, as a frozen kernel)."""
    if quant.is_quantized(head):
        guard = grad_barrier.enabled(cfg, jax.default_backend())
        logits_BxTxV = quant.matmul(
            x_BxTxD, head, cfg.compute_dtype, guard, out_dtype=jnp.float32, most_columns=HEAD_COLUMNS
        )
    else:
        logits_BxTxV = jnp.einsum("btd,vd->btv", x_BxTxD, head, preferred_element_type=jnp.float32)
    return softcap(logits_BxTxV, cfg.final_softcap)


class Linear(nn.Module):
    """``x @ kernel + bias`` with ``nn.Dense``'s param names and init, plus a LoRA adapter when the
    ``'lora'`` collection holds ``lora_a [in, r]`` and ``lora_b [r, out]`` for this module:
    ``y += dropout(x) @ lora_a @ lora_b * (cfg.lora_alpha / r)`` (see ``models/lora.py``)."""

    cfg: ModelConfig
    features: int
    use_bias: bool
    std: float = 0.02

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        cfg = self.cfg
        kernel = param_or_quantized(self, "kernel", self.std, (x.shape[-1], self.features))
        x = x.astype(cfg.compute_dtype)
        guard = grad_barrier.enabled(cfg, jax.default_backend())
        y = quant.matmul(x, kernel, cfg.compute_dtype, guard, frozen=cfg.frozen_base)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), cfg.weights_dtype)
            y = y + bias.astype(cfg.compute_dtype)
        if self.has_variable("lora", "lora_a"):
            a_DxR: jax.Array = self.get_variable("lora", "lora_a").astype(cfg.compute_dtype)
            b_RxF: jax.Array = self.get_variable("lora", "lora_b").astype(cfg.compute_dtype)
            h = nn.Dropout(cfg.lora_dropout)(x, deterministic=deterministic)
            scale = cfg.lora_alpha / a_DxR.shape[-1]
            y = y + ((h @ a_DxR) @ b_RxF) * jnp.asarray(scale, cfg.compute_dtype)
        return y


def dense(cfg: ModelConfig, features: int, name: str, *, bias: bool, std: float = 0.02):
    return Linear(cfg, features, bias, std, name=name)
