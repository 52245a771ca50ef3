"""Metric writers with CLU's ``MetricWriter`` methods: TensorBoard, NDJSON, console.

``clu.metric_writers`` imports TensorFlow in its package ``__init__`` (even for ``.interface``),
so the writers here implement the same methods on tensorboardX, a JSON-lines file and stdout. Any
real CLU writer object (present where TensorFlow is installed, e.g. Colab) can join a
``MultiWriter``.

Metric names carry their split as a prefix: ``{'train/loss': 2.3, 'eval/perplexity': 9.9}``.

NDJSON format (``metrics.ndjson``, one JSON object a line, appended and flushed line by line):

- scalars, one line per (step, split): ``{"step": 10, "split": "train", "loss": 2.3, "lr": 0.001}``.
  A name without ``/`` has ``"split": null``. Values are plain ints/floats; non-finite floats are
  written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` (strict JSON has no NaN) and turned back
  into floats by ``read_ndjson``.
- every other line has a ``kind``: ``{"step", "split", "kind": "text", "name", "text"}``,
  ``{"step", "split", "kind": "histogram", "name", "count", "nonfinite", "min", "max", "mean",
  "std", "bucket_edges", "bucket_counts"}`` and ``{"step": null, "split": "hparams",
  "kind": "hparams", "hparams": {flattened dotted keys}}``.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tqdm

from codex_jax.errors import UserError

logger = logging.getLogger(__name__)

RESERVED_KEYS = ("step", "split", "kind")
WRITER_NAMES = ("tensorboard", "ndjson", "console")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


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


# ----------------------------------------------------------------------------- value helpers


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


def _json_number(value: int | float) -> int | float | str:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _json_value(value: Any) -> Any:
    """A JSON-safe form of a hyperparameter value."""
    if hasattr(value, "__array__"):  # numpy / jax arrays and scalars
        array = np.asarray(value)
        value = array.item() if array.ndim == 0 else array.tolist()
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return _json_number(value)
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return str(value)


def flatten_hparams(hparams: Any, prefix: str = "") -> dict[str, Any]:
    """Flattens nested mappings (or a ``ConfigDict``) to ``{'model.num_layers': 12, ...}``."""
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


def _group_by_split(scalars: Mapping[str, Any]) -> dict[str | None, dict[str, int | float]]:
    groups: dict[str | None, dict[str, int | float]] = {}
    for name, value in scalars.items():
        split, metric = split_name(name)
        groups.setdefault(split, {})[metric] = to_scalar(name, value)
    return groups


def _histogram_stats(values: Any, num_buckets: int) -> dict[str, Any]:
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


def _buckets(num_buckets: Mapping[str, int] | None, name: str, default: int = 30) -> int:
    return (num_buckets or {}).get(name, default)


# ----------------------------------------------------------------------------- NDJSON


class NdjsonWriter(MetricWriter):
    """Appends one JSON object a line to ``path`` (format in the module docstring).

    Each line is written with one call and flushed, so a killed process leaves complete lines; an
    incomplete last line left by a crash mid-write is dropped when the file is reopened.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_last_line(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def write_scalars(self, step, scalars):
        for split, metrics in _group_by_split(scalars).items():
            clash = [k for k in metrics if k in RESERVED_KEYS]
            if clash:
                raise ValueError(f"metric names {clash} clash with NDJSON keys {RESERVED_KEYS}")
            record = {"step": int(step), "split": split}
            record.update({k: _json_number(v) for k, v in metrics.items()})
            self._write(record)

    def write_texts(self, step, texts):
        for name, text in texts.items():
            split, metric = split_name(name)
            self._write(
                {"step": int(step), "split": split, "kind": "text", "name": metric, "text": text}
            )

    def write_hparams(self, hparams):
        flat = {k: _json_value(v) for k, v in flatten_hparams(hparams).items()}
        self._write({"step": None, "split": "hparams", "kind": "hparams", "hparams": flat})

    def write_histograms(self, step, arrays, num_buckets=None):
        for name, values in arrays.items():
            split, metric = split_name(name)
            record = {"step": int(step), "split": split, "kind": "histogram", "name": metric}
            record.update(_histogram_stats(values, _buckets(num_buckets, name)))
            self._write(record)

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


def _drop_partial_last_line(path: Path) -> None:
    """Truncates ``path`` after its last newline (a line cut short by a killed writer)."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            newline = f.read(pos - start).rfind(b"\n")
            if newline >= 0:
                pos = start + newline + 1
                break
            pos = start
        if pos != end:
            logger.warning("%s: dropping an incomplete last line (%d bytes)", path, end - pos)
            f.truncate(pos)


def read_ndjson(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a ``metrics.ndjson`` file; ``"nan"``/``"inf"``/``"-inf"`` scalars become floats.

    An unparsable last line without a newline (a writer killed mid-line) is skipped.
    """
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # no trailing newline: cut short
                break
            raise ValueError(f"{path}:{number}: invalid JSON line: {e}") from e
        if "kind" not in record:
            for key, value in record.items():
                if key not in RESERVED_KEYS and isinstance(value, str) and value in _NONFINITE:
                    record[key] = _NONFINITE[value]
        records.append(record)
    return records


# ----------------------------------------------------------------------------- console


def format_scalar(value: int | float) -> str:
    """Compact console form: ``2.3000``, ``1.0e-03``, ``466000``, ``12``, ``nan``."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-2 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.1e}" if abs(value) < 1e-2 else f"{value:.0f}"


class ConsoleWriter(MetricWriter):
    """Prints one compact line per call to stdout via ``tqdm.write`` (keeps progress bars intact).

    ``step 10 train loss=2.3000 learning_rate=1.0e-03 eval loss=2.4000``
    """

    def _print(self, line: str) -> None:
        tqdm.tqdm.write(line, file=sys.stdout)

    def write_scalars(self, step, scalars):
        parts = [f"step {int(step)}"]
        for split, metrics in _group_by_split(scalars).items():
            if split is not None:
                parts.append(split)
            parts.extend(f"{k}={format_scalar(v)}" for k, v in metrics.items())
        self._print(" ".join(parts))

    def write_texts(self, step, texts):
        for name, text in texts.items():
            self._print(f"step {int(step)} {name}: {text}")

    def write_hparams(self, hparams):
        flat = flatten_hparams(hparams)
        self._print(f"hparams: {len(flat)} values (the full config is in workdir/config.json)")

    def write_histograms(self, step, arrays, num_buckets=None):
        for name, values in arrays.items():
            s = _histogram_stats(values, _buckets(num_buckets, name))
            if "mean" in s:
                stats = " ".join(
                    f"{k}={format_scalar(s[k])}" for k in ("mean", "std", "min", "max")
                )
            else:
                stats = "no finite values"
            self._print(f"step {int(step)} histogram {name}: {stats} nonfinite={s['nonfinite']}")

    def flush(self):
        sys.stdout.flush()

    def close(self):
        self.flush()


# ----------------------------------------------------------------------------- TensorBoard


def _import_tensorboardx():
    """Imports tensorboardX without letting it import torch.

    tensorboardX imports torch when installed (1+ s, and on GPU torch can load its own cuDNN before
    jax does). If torch is not imported yet, hide it during the import; a later import still works.
    """
    if "torch" in sys.modules:
        import tensorboardX

        return tensorboardX
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
    try:
        import tensorboardX
    finally:
        del sys.modules["torch"]
    return tensorboardX


class TensorBoardWriter(MetricWriter):
    """Writes TensorBoard event files under ``logdir`` with tensorboardX (no TensorFlow)."""

    def __init__(self, logdir: str | os.PathLike):
        tensorboardx = _import_tensorboardx()
        self.logdir = Path(logdir)
        self._writer = tensorboardx.SummaryWriter(logdir=str(self.logdir))

    def write_scalars(self, step, scalars):
        for name, value in scalars.items():
            self._writer.add_scalar(name, float(to_scalar(name, value)), int(step))

    def write_texts(self, step, texts):
        for name, text in texts.items():
            self._writer.add_text(name, text, int(step))

    def write_hparams(self, hparams):
        from tensorboardX.summary import hparams as hparams_summary

        flat = {k: _tensorboard_hparam(v) for k, v in flatten_hparams(hparams).items()}
        # Written into this run (not a sub-run as SummaryWriter.add_hparams does), so TensorBoard's
        # HParams tab shows them next to this run's scalars.
        for summary in hparams_summary(flat, {}):
            self._writer.file_writer.add_summary(summary)

    def write_histograms(self, step, arrays, num_buckets=None):
        for name, values in arrays.items():
            bins = (num_buckets or {}).get(name, "tensorflow")
            self._writer.add_histogram(name, np.asarray(values, np.float64), int(step), bins=bins)

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


def _tensorboard_hparam(value: Any) -> bool | int | float | str:
    value = _json_value(value)
    return value if isinstance(value, bool | int | float | str) else json.dumps(value)


# ----------------------------------------------------------------------------- fan-out


class MultiWriter(MetricWriter):
    """Sends every call to each writer (any object with CLU's ``MetricWriter`` methods)."""

    def __init__(self, writers: Iterable[Any]):
        self.writers: Sequence[Any] = tuple(writers)

    def write_scalars(self, step, scalars):
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_texts(self, step, texts):
        for w in self.writers:
            w.write_texts(step, texts)

    def write_hparams(self, hparams):
        for w in self.writers:
            w.write_hparams(hparams)

    def write_histograms(self, step, arrays, num_buckets=None):
        for w in self.writers:
            w.write_histograms(step, arrays, num_buckets=num_buckets)

    def write_images(self, step, images):
        for w in self.writers:
            w.write_images(step, images)

    def write_videos(self, step, videos):
        for w in self.writers:
            w.write_videos(step, videos)

    def write_audios(self, step, audios, *, sample_rate):
        for w in self.writers:
            w.write_audios(step, audios, sample_rate=sample_rate)

    def write_summaries(self, step, values, metadata=None):
        for w in self.writers:
            w.write_summaries(step, values, metadata)

    def flush(self):
        for w in self.writers:
            w.flush()

    def close(self):
        for w in self.writers:
            w.close()


def parse_writer_names(names: str) -> list[str]:
    """``'tensorboard, ndjson'`` -> ``['tensorboard', 'ndjson']``; unknown names raise UserError."""
    parsed: list[str] = []
    for name in (n.strip() for n in names.split(",")):
        if not name or name in parsed:
            continue
        if name not in WRITER_NAMES:
            raise UserError(
                f"logging.writers: unknown writer {name!r} in {names!r}; "
                f"choose a comma separated subset of {', '.join(WRITER_NAMES)}"
            )
        parsed.append(name)
    return parsed


def create_writers(names: str, workdir: str | os.PathLike, is_main_process: bool) -> MultiWriter:
    """Builds the writers named in ``names`` (config ``logging.writers``) for ``workdir``.

    TensorBoard logs go to ``workdir/tensorboard/``, NDJSON to ``workdir/metrics.ndjson``. On
    non-main processes (multi-host) the names are still checked but the result writes nothing.
    """
    parsed = parse_writer_names(names)
    if not is_main_process:
        return MultiWriter([])
    workdir = Path(workdir)
    factories = {
        "tensorboard": lambda: TensorBoardWriter(workdir / "tensorboard"),
        "ndjson": lambda: NdjsonWriter(workdir / "metrics.ndjson"),
        "console": ConsoleWriter,
    }
    return MultiWriter(factories[name]() for name in parsed)
