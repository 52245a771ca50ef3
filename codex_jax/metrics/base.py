"""CLU's ``MetricWriter`` interface without TensorFlow, and the value helpers the writers share.

``clu.metric_writers`` imports TensorFlow in its package ``__init__`` (even for ``.interface``), so
the interface is restated here with the same method names and arguments; any real CLU writer can
stand in for one of ours. Metric names carry their split as a prefix: ``'train/loss'``.
"""

from __future__ import annotations

import abc
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


class MetricWriter(abc.ABC):
    """CLU's ``MetricWriter`` interface (same method names and arguments), TensorFlow-free."""

    @abc.abstractmethod
    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Writes scalar metrics (python, numpy or jax scalars) for ``step``."""

    @abc.abstractmethod
    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        """Writes text values (e.g. generated samples) for ``step``."""

    @abc.abstractmethod
    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Writes hyperparameters (nested mappings are flattened to dotted keys)."""

    @abc.abstractmethod
    def write_histograms(
        self, step: int, arrays: Mapping[str, Any], num_buckets: Mapping[str, int] | None = None
    ) -> None:
        """Writes histograms of the values of each array."""

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """Not supported: codex_jax writers record scalars, texts, hparams and histograms."""
        raise NotImplementedError(_unsupported(self, "write_images"))

    def write_videos(self, step: int, videos: Mapping[str, Any]) -> None:
        """Not supported (see ``write_images``)."""
        raise NotImplementedError(_unsupported(self, "write_videos"))

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int) -> None:
        """Not supported (see ``write_images``)."""
        raise NotImplementedError(_unsupported(self, "write_audios"))

    def write_summaries(
        self, step: int, values: Mapping[str, Any], metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Not supported (see ``write_images``)."""
        raise NotImplementedError(_unsupported(self, "write_summaries"))

    @abc.abstractmethod
    def flush(self) -> None:
        """Pushes buffered data to its destination."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flushes and releases resources; the writer is unusable afterwards."""


def _unsupported(writer: object, method: str) -> str:
    return (
        f"{type(writer).__name__}.{method} is not supported: codex_jax writers record scalars, "
        "texts, hparams and histograms; pass a CLU writer to MultiWriter for media"
    )


def split_name(name: str) -> tuple[str | None, str]:
    """``'train/loss'`` -> ``('train', 'loss')``; ``'loss'`` -> ``(None, 'loss')``."""
    split, sep, rest = name.partition("/")
    return (split, rest) if sep else (None, name)


def to_scalar(name: str, value: Any) -> int | float:
    """A python int/float from a python, numpy or jax scalar (or size-1 array)."""
    array = np.asarray(value)
    if array.size != 1:
        raise ValueError(f"metric {name!r} is not a scalar: shape {array.shape}")
    item = array.reshape(()).item()
    if isinstance(item, bool):
        return int(item)
    if isinstance(item, int | float):
        return item
    raise TypeError(f"metric {name!r} has non-numeric value {item!r}")


def json_number(value: int | float) -> int | float | str:
    """``value``, or ``'nan'``/``'inf'``/``'-inf'`` for non-finite floats (strict JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def json_value(value: Any) -> Any:
    """A JSON-safe form of a hyperparameter value."""
    if hasattr(value, "__array__"):  # numpy / jax arrays and scalars
        array = np.asarray(value)
        value = array.item() if array.ndim == 0 else array.tolist()
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)


def scalar_hparam(value: Any) -> bool | int | float | str:
    """A hyperparameter as one bool/int/float/str (lists become their JSON text)."""
    value = json_value(value)
    return value if isinstance(value, bool | int | float | str) else json.dumps(value)


def flatten_hparams(hparams: Any, prefix: str = "") -> dict[str, Any]:
    """Flattens nested mappings (or a ``ConfigDict``) to ``{'model.num_layers': 12, ...}``: the one
    flattening of hyperparameters and configs (``codex_jax.config.schema.flatten`` is this)."""
    if hasattr(hparams, "to_dict"):
        hparams = hparams.to_dict()
    flat: dict[str, Any] = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if hasattr(value, "to_dict") or isinstance(value, Mapping):
            flat.update(flatten_hparams(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def group_by_split(scalars: Mapping[str, Any]) -> dict[str | None, dict[str, int | float]]:
    """``{'train/loss': 1}`` -> ``{'train': {'loss': 1}}`` with python scalars."""
    groups: dict[str | None, dict[str, int | float]] = {}
    for name, value in scalars.items():
        split, metric = split_name(name)
        groups.setdefault(split, {})[metric] = to_scalar(name, value)
    return groups


def histogram_stats(values: Any, num_buckets: int) -> dict[str, Any]:
    """Count, non-finite count and, over the finite values, min/max/mean/std and buckets."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    finite = flat[np.isfinite(flat)]
    stats: dict[str, Any] = {"count": int(flat.size), "nonfinite": int(flat.size - finite.size)}
    if finite.size:
        counts, edges = np.histogram(finite, bins=num_buckets)
        stats.update(
            min=float(finite.min()),
            max=float(finite.max()),
            mean=float(finite.mean()),
            std=float(finite.std()),
            bucket_edges=edges.tolist(),
            bucket_counts=counts.tolist(),
        )
    return stats


def buckets(num_buckets: Mapping[str, int] | None, name: str, default: int = 30) -> int:
    """The bucket count asked for ``name`` (``default`` when not given)."""
    return (num_buckets or {}).get(name, default)
