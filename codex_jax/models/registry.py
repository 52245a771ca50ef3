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
from codex_jax.models.families import pattern


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


def _decoder(family, layers, heads, kv_heads, width, d_ff, vocab, max_len, **extra) -> dict[str, Any]:
    """A preset of ``family`` (its features from ``models/families.py``) with these shapes."""
    return {**_llama(layers, heads, kv_heads, width, d_ff, vocab, max_len), "family": family, **extra}


def _qwen3(layers, heads, width, d_ff, tie) -> dict[str, Any]:
    return _decoder(
        "qwen3",
        layers,
        heads,
        8,
        width,
        d_ff,
        151936,
        40960,
        head_dim=128,
        rope_theta=1000000.0,
        norm_eps=1e-6,
        tie_embeddings=tie,
    )


def _gemma2(layers, heads, kv_heads, width, d_ff, query_scale_dim) -> dict[str, Any]:
    return _decoder(
        "gemma2",
        layers,
        heads,
        kv_heads,
        width,
        d_ff,
        256000,
        8192,
        head_dim=256,
        norm_eps=1e-6,
        tie_embeddings=True,
        query_scale_dim=float(query_scale_dim),
        attn_softcap=50.0,
        final_softcap=30.0,
        sliding_window=4096,
        layer_types=pattern(layers, 2),
    )


def _gemma3(layers, heads, kv_heads, width, d_ff, vocab, window, **extra) -> dict[str, Any]:
    return _decoder(
        "gemma3",
        layers,
        heads,
        kv_heads,
        width,
        d_ff,
        vocab,
        131072,
        head_dim=256,
        norm_eps=1e-6,
        tie_embeddings=True,
        query_scale_dim=256.0,
        sliding_window=window,
        layer_types=pattern(layers, 6),
        rope_theta=1000000.0,
        rope_local_theta=10000.0,
        **extra,
    )


def _starcoder2(layers, heads, kv_heads, width, rope_theta) -> dict[str, Any]:
    return _decoder(
        "starcoder2",
        layers,
        heads,
        kv_heads,
        width,
        4 * width,
        49152,
        16384,
        sliding_window=4096,
        rope_theta=rope_theta,
        norm_eps=1e-5,
        tie_embeddings=True,
    )


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
    "qwen3-0.6b": _qwen3(28, 16, 1024, 3072, True),
    "qwen3-1.7b": _qwen3(28, 16, 2048, 6144, True),
    "qwen3-4b": _qwen3(36, 32, 2560, 9728, True),
    "qwen3-8b": _qwen3(36, 32, 4096, 12288, False),
    "codegemma-2b": _decoder(
        "gemma", 18, 8, 1, 2048, 16384, 256000, 8192, head_dim=256, norm_eps=1e-6, tie_embeddings=True
    ),
    "codegemma-7b": _decoder(
        "gemma", 28, 16, 16, 3072, 24576, 256000, 8192, head_dim=256, norm_eps=1e-6, tie_embeddings=True
    ),
    "gemma-2-2b": _gemma2(26, 8, 4, 2304, 9216, 256),
    "gemma-2-9b": _gemma2(42, 16, 8, 3584, 14336, 256),
    "gemma-3-1b": dict(_gemma3(26, 4, 1, 1152, 6912, 262144, 512), max_seq_len=32768),
    "gemma-3-4b": _gemma3(34, 8, 4, 2560, 10240, 262208, 1024, rope_linear_factor=8.0),
    "starcoder2-3b": _starcoder2(30, 24, 2, 3072, 999999.4420358813),
    "starcoder2-7b": _starcoder2(32, 36, 4, 4608, 1000000.0),
    "starcoder2-15b": _starcoder2(40, 48, 4, 6144, 100000.0),
    "phi-3-mini-4k": _decoder("phi3", 32, 32, 32, 3072, 8192, 32064, 4096, sliding_window=2047),
    # Mixtures of experts (models/moe.py).
    "mixtral-8x7b": _decoder(
        "mixtral",
        32,
        32,
        8,
        4096,
        14336,
        32000,
        32768,
        rope_theta=1000000.0,
        num_experts=8,
        experts_per_token=2,
    ),
    "qwen3-30b-a3b": _decoder(
        "qwen3_moe",
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
