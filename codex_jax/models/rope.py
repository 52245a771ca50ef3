"""Rotary position embeddings: frequencies with Llama 3 or linear scaling, and their use (over the leading
``rope_fraction`` of each head's dims: Phi's partial rotary embeddings)."""

from __future__ import annotations

import math

import jax.numpy as jnp

from codex_jax.models.config import ModelConfig


def rope_frequencies(cfg: ModelConfig):
    """Inverse frequencies ``[rotary_dims // 2]`` with Llama 3 or linear scaling applied."""
    dim = rotary_dims(cfg)
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    if cfg.rope_llama3_scaling:
        factor, low_ff, high_ff, original_len = cfg.rope_llama3_scaling
        low_wavelen = original_len / low_ff
        high_wavelen = original_len / high_ff
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original_len / wavelen - low_ff) / (high_ff - low_ff)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = jnp.where(is_medium, smoothed, scaled)
    return inv_freq / cfg.rope_linear_factor


def rotary_dims(cfg: ModelConfig) -> int:
    """How many leading dims of each head RoPE rotates (all but with a partial ``rope_fraction``)."""
    return int(cfg.dims_per_head * cfg.rope_fraction)


def apply_rope(x_BxTxNxH, positions_BxT, inv_freq):
    """Rotary embedding in the Hugging Face (rotate-half) convention over the first ``2 * len(inv_freq)``
    dims of each head; the rest pass unchanged."""
    angles_BxTxH2 = positions_BxT[..., None].astype(jnp.float32) * inv_freq
    cos = jnp.cos(angles_BxTxH2)[:, :, None, :]
    sin = jnp.sin(angles_BxTxH2)[:, :, None, :]
    x32 = x_BxTxNxH.astype(jnp.float32)
    rot = 2 * inv_freq.shape[-1]
    x1, x2 = jnp.split(x32[..., :rot], 2, axis=-1)
    rotated = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    if rot < x32.shape[-1]:
        rotated.append(x32[..., rot:])
    return jnp.concatenate(rotated, axis=-1).astype(x_BxTxNxH.dtype)
