"""Named model presets: ``ModelConfig``-compatible dicts, extensible by plugins.

A plugin package declares entry points in the ``codex_jax.models`` group; each entry point's name
is the preset name and its object is a dict of ModelConfig fields (or a zero-argument callable
returning one)::

    [project.entry-points."codex_jax.models"]
    my-model = "my_pkg.presets:MY_MODEL"

A plugin that fails to load, returns something else or reuses a built-in name is skipped; why is
kept in :func:`plugin_errors`, and the built-ins keep working. Loading goes through
:func:`codex_jax.plugins.load` (``plugins.reload()`` forgets them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from codex_jax import plugins
from codex_jax.errors import UserError
from codex_jax.models.config import ModelConfig


def _gpt2(layers: int, heads: int, width: int) -> dict[str, Any]:
    return dict(
        family="gpt2",
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=heads,
        d_model=width,
        d_ff=4 * width,
        vocab_size=50257,
        max_seq_len=1024,
        norm_eps=1e-5,
        tie_embeddings=True,
    )


def _llama(layers, heads, kv_heads, width, d_ff, vocab, max_len, **extra) -> dict[str, Any]:
    fields = dict(
        family="llama",
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        d_model=width,
        d_ff=d_ff,
        vocab_size=vocab,
        max_seq_len=max_len,
        norm_eps=1e-5,
        tie_embeddings=False,
        rope_theta=10000.0,
    )
    return {**fields, **extra}


BUILTIN: dict[str, dict[str, Any]] = {
    "gpt2-tiny": dict(_gpt2(2, 4, 128), vocab_size=1024, max_seq_len=512),
    "gpt2-small": _gpt2(12, 12, 768),
    "gpt2-medium": _gpt2(24, 16, 1024),
    "gpt2-large": _gpt2(36, 20, 1280),
    "gpt2-xl": _gpt2(48, 25, 1600),
    "llama-tiny": _llama(2, 4, 2, 128, 344, 1024, 512),
    "tinyllama-1.1b": _llama(22, 32, 4, 2048, 5632, 32000, 2048),
    "llama-2-7b": _llama(32, 32, 32, 4096, 11008, 32000, 4096),
    "llama-3.2-1b": _llama(
        16,
        32,
        8,
        2048,
        8192,
        128256,
        131072,
        rope_theta=500000.0,
        rope_llama3_scaling=(32.0, 1.0, 4.0, 8192),
        tie_embeddings=True,
    ),
    "llama-3.1-8b": _llama(
        32,
        32,
        8,
        4096,
        14336,
        128256,
        131072,
        rope_theta=500000.0,
        rope_llama3_scaling=(8.0, 1.0, 4.0, 8192),
    ),
    "mistral-7b-v0.1": _llama(32, 32, 8, 4096, 14336, 32000, 32768, sliding_window=4096),
    "qwen2.5-0.5b": _llama(
        24,
        14,
        2,
        896,
        4864,
        151936,
        32768,
        rope_theta=1000000.0,
        norm_eps=1e-6,
        attention_bias=True,
        tie_embeddings=True,
    ),
    # Mixture of experts (models/moe.py): Mixtral is Llama attention with 8 experts, top-2.
    "mixtral-8x7b": _llama(
        32, 32, 8, 4096, 14336, 32000, 32768, rope_theta=1000000.0, num_experts=8, experts_per_token=2
    ),
    # Qwen3-30B-A3B's shape (128 experts of width 768, top-8; Qwen3's q/k norms are not in the llama
    # family): parameter count, memory and FLOPs for `codex-jax compile` with an expert axis.
    "qwen3-30b-a3b-shape": _llama(
        48,
        32,
        4,
        2048,
        6144,
        151936,
        40960,
        head_dim=128,
        rope_theta=1000000.0,
        norm_eps=1e-6,
        num_experts=128,
        experts_per_token=8,
        moe_d_ff=768,
    ),
}

_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def _check_preset(name: str, value: Any) -> dict[str, Any]:
    """The check of a ``codex_jax.models`` plugin: a (callable returning a) dict of valid fields."""
    if callable(value):
        value = value()
    if not isinstance(value, dict):
        raise TypeError(f"expected a dict of ModelConfig fields, got {type(value).__name__}")
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown ModelConfig fields {unknown}")
    ModelConfig.from_dict(value)  # validates the values
    return dict(value)


def plugins_group() -> plugins.Group:
    """The loaded ``codex_jax.models`` plugin presets and the failures (cached by :mod:`plugins`)."""
    return plugins.load(plugins.MODELS, _check_preset, reserved=BUILTIN)


def plugin_errors() -> dict[str, str]:
    """Why each skipped plugin preset was skipped: ``{name: 'module:attr (dist): Error: message'}``."""
    return dict(plugins_group().failed)


def names() -> list[str]:
    """All preset names, built-ins and plugins."""
    return sorted({*BUILTIN, *plugins_group().loaded})


def get(name: str) -> dict[str, Any]:
    """A copy of the preset ``name`` as a dict of ModelConfig fields."""
    group = plugins_group()
    presets = {**group.loaded, **BUILTIN}
    if name not in presets:
        hint = f" (plugin failed: {group.failed[name]})" if name in group.failed else ""
        raise UserError(f"unknown model preset {name!r}{hint}; known: {', '.join(names())}")
    return dict(presets[name])


def config(name: str, **overrides) -> ModelConfig:
    """The ModelConfig of preset ``name`` with some fields overridden."""
    return ModelConfig.from_dict({**get(name), **overrides})
