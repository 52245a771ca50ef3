"""Plugins: entry points of installed packages that add models, metrics, tokenizers and sources.

=========================  ==================================================================
group                      each entry point's object
=========================  ==================================================================
``codex_jax.models``       a dict of ModelConfig fields: a model preset (models/registry.py)
``codex_jax.metrics``      a TokenMetric or SampleMetric: an ``eval.metrics`` name
                           (metrics/registry.py)
``codex_jax.tokenizers``   ``load(arg) -> tokenizer`` for ``data.tokenizer='NAME:ARG'``
``codex_jax.data_sources`` ``read(arg) -> iterable of (key, text)`` for ``data.source='NAME:ARG'``
=========================  ==================================================================

A zero-argument callable returning the object also works for models and metrics. A plugin that
fails to import or gives the wrong kind of object is skipped and the reason kept (``codex-jax
plugins`` prints it); the built-ins never depend on a plugin loading.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
from collections.abc import Callable
from typing import Any

MODELS = "codex_jax.models"
METRICS = "codex_jax.metrics"
TOKENIZERS = "codex_jax.tokenizers"
DATA_SOURCES = "codex_jax.data_sources"
GROUPS = (MODELS, METRICS, TOKENIZERS, DATA_SOURCES)


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
    to keep or raises. Names in ``reserved`` (the built-ins) cannot be taken by a plugin."""
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
    """Forgets every loaded group (and the model registry's), so the next lookup scans again."""
    from codex_jax.models import registry as models

    _cache.clear()
    models.reload_plugins()


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


def report() -> dict[str, dict[str, dict[str, str]]]:
    """``{group: {'loaded': {name: 'module:attr (dist version)'}, 'failed': {name: why}}}``."""
    from codex_jax.metrics import registry as metrics
    from codex_jax.models import registry as models

    out = {}
    models_found = {n: "" for n in models.names() if n not in models.BUILTIN}
    model_origins = {ep.name: _origin(ep) for ep in importlib.metadata.entry_points(group=MODELS)}
    out[MODELS] = {
        "loaded": {n: model_origins.get(n, "") for n in models_found},
        "failed": models.plugin_errors(),
    }
    groups = {
        METRICS: metrics.plugins_group(),
        TOKENIZERS: load(TOKENIZERS, callable_plugin),
        DATA_SOURCES: load(DATA_SOURCES, callable_plugin),
    }
    for group, found in groups.items():
        out[group] = {"loaded": dict(found.origin), "failed": dict(found.failed)}
    return out


def main(argv: list[str]) -> int:
    """``codex-jax plugins [--json]``: what loaded from each group and why any plugin failed."""
    import json
    import sys

    found = report()
    if "--json" in argv:
        print(json.dumps(found, indent=2))
        return 0
    for group, result in found.items():
        print(f"{group}:")
        if not result["loaded"] and not result["failed"]:
            print("  (no plugins)")
        for name, origin in sorted(result["loaded"].items()):
            print(f"  ok      {name}  {origin}".rstrip())
        for name, why in sorted(result["failed"].items()):
            print(f"  FAILED  {name}  {why}")
    failed = sum(len(r["failed"]) for r in found.values())
    if failed:
        print(f"{failed} plugin(s) failed to load; the built-ins work without them", file=sys.stderr)
    return 0


def read_plugin_source(source: str):
    """The Corpus of ``data.source='NAME:ARG'`` when NAME is a data-source plugin, else None.

    The plugin's ``read(ARG)`` yields ``(key, text)`` pairs; each is one document and one
    manifest entry (``data.max_files``/``include``/``exclude`` do not apply).
    """
    found = split_spec(source, DATA_SOURCES)
    if found is None:
        return None
    from codex_jax.corpus.records import FileReport
    from codex_jax.corpus.sources import Corpus, Document
    from codex_jax.errors import UserError

    read, arg = found
    reports, documents = [], []
    try:
        for key, text in read(arg):
            data = str(text).replace("\r\n", "\n").encode("utf-8")
            digest = hashlib.sha256(data).hexdigest()
            reports.append(FileReport(str(key), len(data), digest, records=1))
            documents.append(Document(str(key), str(key), data.decode("utf-8")))
    except Exception as e:  # noqa: BLE001 - the plugin's own failure, reported as the user's
        raise UserError(f"data.source {source!r}: the plugin failed: {type(e).__name__}: {e}") from e
    if not documents:
        raise UserError(f"data.source {source!r}: the plugin yielded no documents")
    return Corpus(source, f"plugin:{source.partition(':')[0]}", reports, documents)


TOKENIZER_ATTRS = ("encode", "encode_batch", "decode", "vocab_size", "eos_id", "checksum")


def load_plugin_tokenizer(spec: str):
    """The tokenizer of ``data.tokenizer='NAME:ARG'`` when NAME is a tokenizer plugin, else None.

    ``load(ARG)`` must return an object with the interface of
    ``codex_jax.tokenizers.base.Tokenizer`` (subclassing it is simplest).
    """
    found = split_spec(spec, TOKENIZERS)
    if found is None:
        return None
    from codex_jax.errors import UserError

    load_fn, arg = found
    try:
        tokenizer = load_fn(arg)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"data.tokenizer {spec!r}: the plugin failed: {type(e).__name__}: {e}") from e
    missing = [a for a in TOKENIZER_ATTRS if not hasattr(tokenizer, a)]
    if missing:
        raise UserError(f"data.tokenizer {spec!r}: the plugin's tokenizer lacks {missing}")
    return tokenizer
