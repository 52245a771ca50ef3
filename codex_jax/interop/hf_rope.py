"""RoPE settings between a Hugging Face ``rope_parameters`` dict and :class:`ModelConfig`'s fields: default,
linear, llama3 and YaRN scaling, and partial rotary embeddings (``models/rope.py`` computes them)."""

from __future__ import annotations

import math
from typing import Any

from codex_jax.errors import UserError
from codex_jax.models.config import ModelConfig


def rope_from_hf(params: dict, max_len: int) -> dict[str, Any]:
    """ModelConfig's RoPE fields of one Hugging Face ``rope_parameters`` dict."""
    kind = params.get("rope_type", params.get("type", "default"))
    fields: dict[str, Any] = {"rope_theta": float(params.get("rope_theta", 10000.0))}
    fraction = float(params.get("partial_rotary_factor", 1.0))
    if fraction != 1.0:
        fields["rope_fraction"] = fraction
    if kind == "linear":
        fields["rope_linear_factor"] = float(params["factor"])
    elif kind == "llama3":
        fields["rope_llama3_scaling"] = (
            float(params["factor"]),
            float(params["low_freq_factor"]),
            float(params["high_freq_factor"]),
            int(params["original_max_position_embeddings"]),
        )
    elif kind == "yarn":
        factor = float(params.get("factor") or max_len / params["original_max_position_embeddings"])
        attention = params.get("attention_factor")
        if attention is None:
            mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
            attention = (
                _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all)
                if mscale and mscale_all
                else (_yarn_mscale(factor))
            )
        fields["rope_yarn"] = (
            factor,
            int(params["original_max_position_embeddings"]),
            float(params.get("beta_fast") or 32),
            float(params.get("beta_slow") or 1),
            float(attention),
            float(bool(params.get("truncate", True))),
        )
    else:
        if kind != "default":
            raise UserError(
                f"config.json: rope type {kind!r} (have: default, linear, llama3, yarn) is not supported"
            )
    return fields


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention scale for a context ``factor`` times longer (its paper's eq. 21)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_to_hf(cfg: ModelConfig, scaled: bool = True) -> dict[str, Any]:
    """Hugging Face's ``rope_parameters`` of ``cfg`` (``scaled=False``: Gemma 3's sliding layers)."""
    out: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_fraction != 1.0:
        out["partial_rotary_factor"] = cfg.rope_fraction
    if scaled and cfg.rope_llama3_scaling:
        factor, low, high, original = cfg.rope_llama3_scaling
        out.update(
            rope_type="llama3",
            factor=factor,
            low_freq_factor=low,
            high_freq_factor=high,
            original_max_position_embeddings=original,
        )
    elif scaled and cfg.rope_linear_factor != 1.0:
        out.update(rope_type="linear", factor=cfg.rope_linear_factor)
    elif scaled and cfg.rope_yarn:
        factor, original, beta_fast, beta_slow, attention, truncate = cfg.rope_yarn
        out.update(
            rope_type="yarn",
            factor=factor,
            original_max_position_embeddings=int(original),
            beta_fast=beta_fast,
            beta_slow=beta_slow,
            attention_factor=attention,
            truncate=bool(truncate),
        )
    return out
