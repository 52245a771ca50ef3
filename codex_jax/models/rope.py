"""Rotary position embeddings: frequencies with Llama 3, YaRN or linear scaling, and their use (over the
leading ``rope_fraction`` of each head's dims: Phi's partial rotary embeddings). Hugging Face's
``modeling_rope_utils`` defines each scaling; these functions compute the same numbers."""

from __future__ import annotations

import math

import jax.numpy as jnp

from codex_jax.models.config import ModelConfig


def rope_frequencies(cfg: ModelConfig):
    """Inverse frequencies ``[rotary_dims // 2]`` with Llama 3, YaRN or linear scaling applied."""
    dim = rotary_dims(cfg)
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    if cfg.rope_yarn:
        return _yarn(inv_freq, dim, cfg.rope_theta, cfg.rope_yarn)
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


def _yarn(inv_freq, dim: int, base: float, yarn: tuple):
    """YaRN's blend of interpolated (``inv_freq / factor``) and original frequencies over a linear ramp
    between the dims that rotate ``beta_fast`` and ``beta_slow`` times in the original context."""
    factor, original_len, beta_fast, beta_slow, _, truncate = yarn

    def correction_dim(rotations):
        return dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    high = high + 0.001 if low == high else high
    ramp = jnp.clip((jnp.arange(dim // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    return (inv_freq / factor) * (1 - extrapolation) + inv_freq * extrapolation


def attention_factor(cfg: ModelConfig) -> float:
    """The factor on RoPE's cos and sin (YaRN's; 1.0 otherwise)."""
    return float(cfg.rope_yarn[4]) if cfg.rope_yarn else 1.0


def rotary_dims(cfg: ModelConfig) -> int:
    """How many leading dims of each head RoPE rotates (all but with a partial ``rope_fraction``)."""
    return int(cfg.dims_per_head * cfg.rope_fraction)


def apply_rope(x_BxTxNxH, positions_BxT, inv_freq, factor: float = 1.0):
    """Rotary embedding in the Hugging Face (rotate-half) convention over the first ``2 * len(inv_freq)``
    dims of each head (cos and sin times ``factor``: YaRN's); the rest pass unchanged."""
    angles_BxTxH2 = positions_BxT[..., None].astype(jnp.float32) * inv_freq
    cos = jnp.cos(angles_BxTxH2)[:, :, None, :]
    sin = jnp.sin(angles_BxTxH2)[:, :, None, :]
    if factor != 1.0:
        cos, sin = cos * factor, sin * factor
    x32 = x_BxTxNxH.astype(jnp.float32)
    rot = 2 * inv_freq.shape[-1]
    x1, x2 = jnp.split(x32[..., :rot], 2, axis=-1)
    rotated = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    if rot < x32.shape[-1]:
        rotated.append(x32[..., rot:])
    return jnp.concatenate(rotated, axis=-1).astype(x_BxTxNxH.dtype)
