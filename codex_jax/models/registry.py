"""Named model presets: ``ModelConfig``-compatible dicts, extensible by plugins.

A plugin package declares entry points in the ``codex_jax.models`` group; each entry point's name
is the preset name and its object is a dict of ModelConfig fields (or a zero-argument callable
returning one)::

    [project.entry-points."codex_jax.models"]
    my-model = "my_pkg.presets:MY_MODEL"

A plugin that fails to load, returns something else or reuses a built-in name is skipped; why is
kept in :func:`plugin_errors`, and the built-ins keep working.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any

from codex_jax.errors import UserError
from codex_jax.models.config import ModelConfig

ENTRY_POINT_GROUP = "codex_jax.models"


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
}

_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}
_plugins: dict[str, dict[str, Any]] | None = None
_plugin_errors: dict[str, str] = {}


def _load_plugin(entry_point) -> dict[str, Any]:
    value = entry_point.load()
    if callable(value):
        value = value()
    if not isinstance(value, dict):
        raise TypeError(f"expected a dict of ModelConfig fields, got {type(value).__name__}")
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown ModelConfig fields {unknown}")
    ModelConfig.from_dict(value)  # validates the values
    return dict(value)


def _discover() -> dict[str, dict[str, Any]]:
    global _plugins
    if _plugins is None:
        found: dict[str, dict[str, Any]] = {}
        _plugins = found  # a plugin that looks up a built-in while loading sees the plugins loaded so far
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            name = entry_point.name
            try:
                if name in BUILTIN:
                    raise ValueError("name taken by a built-in preset")
                found[name] = _load_plugin(entry_point)
            except Exception as e:  # noqa: BLE001  (a broken plugin must not break the built-ins)
                _plugin_errors[name] = f"{entry_point.value}: {type(e).__name__}: {e}"
    return _plugins


def reload_plugins() -> None:
    """Forget discovered plugins so the next lookup scans entry points again (tests, notebooks)."""
    global _plugins
    _plugins = None
    _plugin_errors.clear()


def plugin_errors() -> dict[str, str]:
    """Why each skipped plugin preset was skipped: ``{name: 'module:attr: Error: message'}``."""
    _discover()
    return dict(_plugin_errors)


def names() -> list[str]:
    """All preset names, built-ins and plugins."""
    return sorted({*BUILTIN, *_discover()})


def get(name: str) -> dict[str, Any]:
    """A copy of the preset ``name`` as a dict of ModelConfig fields."""
    presets = {**_discover(), **BUILTIN}
    if name not in presets:
        hint = f" (plugin failed: {_plugin_errors[name]})" if name in _plugin_errors else ""
        raise UserError(f"unknown model preset {name!r}{hint}; known: {', '.join(names())}")
    return dict(presets[name])


def config(name: str, **overrides) -> ModelConfig:
    """The ModelConfig of preset ``name`` with some fields overridden."""
    return ModelConfig.from_dict({**get(name), **overrides})
