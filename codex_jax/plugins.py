"""Plugins: entry points of installed packages that add models, metrics, tokenizers, sources and
training hooks.

=========================  ==================================================================
group                      each entry point's object
=========================  ==================================================================
``codex_jax.models``       a dict of ModelConfig fields: a model preset (models/registry.py)
``codex_jax.metrics``      a TokenMetric or SampleMetric: an ``eval.metrics`` name
                           (metrics/registry.py)
``codex_jax.tokenizers``   ``load(arg) -> tokenizer`` for ``data.tokenizer='NAME:ARG'``
                           (tokenizers/__init__.py)
``codex_jax.data_sources`` ``read(arg) -> iterable of (key, text)`` for ``data.source='NAME:ARG'``
                           (corpus/sources.py)
``codex_jax.hooks``        a hook (``on_step_end``/``on_eval_end``/``on_checkpoint_save``), or a
                           callable making one per run, for ``train.hooks='NAME'``
                           (train/hooks.py)
``codex_jax.rewards``      ``fn(prompt, completion, passed) -> float``, added to a GRPO
                           completion's reward for ``train.grpo.rewards='NAME'``
                           (posttrain/rewards.py)
=========================  ==================================================================

This module is the generic loader only: each group's owner passes the check of its objects. A
zero-argument callable returning the object also works for models and metrics. A plugin that
fails to import or gives the wrong kind of object is skipped and the reason kept (``codex-jax
plugins`` prints it); the built-ins never depend on a plugin loading.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable
from typing import Any

MODELS = "codex_jax.models"
METRICS = "codex_jax.metrics"
TOKENIZERS = "codex_jax.tokenizers"
DATA_SOURCES = "codex_jax.data_sources"
HOOKS = "codex_jax.hooks"
REWARDS = "codex_jax.rewards"
GROUPS = (MODELS, METRICS, TOKENIZERS, DATA_SOURCES, HOOKS, REWARDS)


@dataclasses.dataclass
class Group:
    """What loading one entry-point group gave: objects by name, and why each failure failed."""

    loaded: dict[str, Any] = dataclasses.field(default_factory=dict)
    origin: dict[str, str] = dataclasses.field(default_factory=dict)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)


_cache: dict[str, Group] = {}


def _origin(entry_point) -> str:
    dist = getattr(entry_point, "dist", None)
    where = f" ({dist.name} {dist.version})" if dist is not None else ""
    return f"{entry_point.value}{where}"


def load(group: str, check: Callable[[str, Any], Any] | None = None, reserved=()) -> Group:
    """Loads every entry point of ``group`` once (cached); ``check(name, obj)`` returns the object
    to keep or raises. Names in ``reserved`` (the built-ins) cannot be taken by a plugin.

    The group is cached before its entry points load, so a plugin that looks a name up while
    loading sees the plugins loaded so far."""
    if group in _cache:
        return _cache[group]
    result = _cache[group] = Group()
    for entry_point in importlib.metadata.entry_points(group=group):
        name = entry_point.name
        try:
            if name in reserved:
                raise ValueError("name taken by a built-in")
            obj = entry_point.load()
            result.loaded[name] = check(name, obj) if check else obj
            result.origin[name] = _origin(entry_point)
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the built-ins
            result.failed[name] = f"{_origin(entry_point)}: {type(e).__name__}: {e}"
    return result


def reload() -> None:
    """Forgets every loaded group, so the next lookup scans the entry points again (tests, notebooks)."""
    _cache.clear()


def callable_plugin(name: str, obj: Any) -> Callable:
    """The check for tokenizer and data-source plugins: the object must be callable."""
    if not callable(obj):
        raise TypeError(f"expected a callable, got {type(obj).__name__}")
    return obj


def split_spec(spec: str, group: str, check=callable_plugin) -> tuple[Callable, str] | None:
    """``(plugin, arg)`` when ``spec`` is ``'NAME:ARG'`` and NAME a loaded plugin of ``group``."""
    name, sep, arg = spec.partition(":")
    if not sep or not name:
        return None
    plugin = load(group, check).loaded.get(name)
    return (plugin, arg) if plugin is not None else None
