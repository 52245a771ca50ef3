"""``data.mixture``: several named sources, each with a weight and its own data settings.

The value is a JSON object of sources, in the order they are mixed::

    {"lib":   {"source": "stdlib", "weight": 0.8, "exclude": "test_*.py"},
     "tests": {"source": "stdlib", "weight": 0.2, "include": "test_*.py", "eval_fraction": 0.1}}

``source`` and ``weight`` (> 0; weights are relative) are required; every other key of
:data:`SOURCE_KEYS` is optional and defaults to the ``data.*`` key of the same name. ``''`` (the
default) is no mixture: ``data.source`` alone. :func:`parse_mixture` raises :class:`UserError` naming
the first bad key (``config key 'data.mixture.lib.weight': must be > 0``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from codex_jax.corpus.examples import FORMATS
from codex_jax.errors import UserError

KEY = "data.mixture"
# Per-source keys beyond source/weight: each defaults to the data.* key of the same name.
SOURCE_KEYS = ("format", "include", "exclude", "eval_fraction", "eval_source", "max_files")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclasses.dataclass(frozen=True)
class MixtureSource:
    """One source of a mixture: its name, weight and data settings (``data.*`` where not given)."""

    name: str
    source: str
    weight: float
    format: str
    include: str
    exclude: str
    eval_fraction: float
    eval_source: str
    max_files: int

    def settings(self) -> dict[str, Any]:
        """The ``data.*`` keys this source overrides (source and the :data:`SOURCE_KEYS`)."""
        return {"source": self.source, **{k: getattr(self, k) for k in SOURCE_KEYS}}


def _fail(key: str, reason: str, value: Any) -> NoReturn:
    raise UserError(f"config key '{key}': {reason} (got {value!r})")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# key -> (ok(value), reason) for the optional per-source keys
_RULES = {
    "format": (lambda v: v in FORMATS, f"must be one of {', '.join(FORMATS)}"),
    "include": (lambda v: isinstance(v, str), "must be a string of comma-separated globs"),
    "exclude": (lambda v: isinstance(v, str), "must be a string of comma-separated globs"),
    "eval_fraction": (lambda v: _number(v) and 0 < v < 1, "must be in (0, 1)"),
    "eval_source": (lambda v: isinstance(v, str), "must be a string (a source, as data.source)"),
    "max_files": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "must be an int >= 0"),
}


def parse_mixture(value: str, data: Mapping[str, Any]) -> tuple[MixtureSource, ...]:
    """The sources of a ``data.mixture`` value (``()`` for ``''``); ``data`` holds the ``data.*``
    defaults of the optional keys. UserError naming the first bad key."""
    if not value.strip():
        return ()
    try:
        spec = json.loads(value)
    except ValueError as e:
        example = '{"a": {"source": "stdlib", "weight": 0.8}, "b": {...}}'
        _fail(KEY, f"not JSON ({e}); expected an object of named sources such as {example}", value)
    if not isinstance(spec, dict) or not spec:
        _fail(KEY, "must be a JSON object of one or more named sources", value)
    return tuple(_source(name, entry, data) for name, entry in spec.items())


def _source(name: str, entry: Any, data: Mapping[str, Any]) -> MixtureSource:
    """One validated source; the optional keys default to ``data``'s."""
    key = f"{KEY}.{name}"
    if not _NAME.fullmatch(name):
        _fail(key, "a source name must be 1-64 letters, digits, '_' or '-'", name)
    if not isinstance(entry, dict):
        _fail(key, "must be an object with at least 'source' and 'weight'", entry)
    for k in entry:
        if k not in ("source", "weight", *SOURCE_KEYS):
            _fail(f"{key}.{k}", f"unknown key (one of source, weight, {', '.join(SOURCE_KEYS)})", entry[k])
    source, weight = entry.get("source"), entry.get("weight")
    if not isinstance(source, str) or not source:
        _fail(f"{key}.source", "required: a source, as data.source", source)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
        _fail(f"{key}.weight", "must be > 0", weight)
    values = {k: entry.get(k, data[k]) for k in SOURCE_KEYS}
    for k, (ok, reason) in _RULES.items():
        if not ok(values[k]):
            _fail(f"{key}.{k}", reason, values[k])
    return MixtureSource(name=name, source=source, weight=float(weight), **values)
