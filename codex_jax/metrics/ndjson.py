"""The NDJSON writer (``workdir/metrics.ndjson``) and its reader.

One JSON object a line, appended and flushed line by line:

- scalars, one line per (step, split): ``{"step": 10, "split": "train", "loss": 2.3, "lr": 0.001}``.
  A name without ``/`` has ``"split": null``. Values are plain ints/floats; non-finite floats are
  written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` (strict JSON has no NaN) and turned back
  into floats by :func:`read_ndjson`.
- every other line has a ``kind``: ``{"step", "split", "kind": "text", "name", "text"}``,
  ``{"step", "split", "kind": "histogram", "name", "count", "nonfinite", "min", "max", "mean",
  "std", "bucket_edges", "bucket_counts"}`` and ``{"step": null, "split": "hparams",
  "kind": "hparams", "hparams": {flattened dotted keys}}``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from codex_jax.errors import UserError
from codex_jax.files import as_path, is_remote
from codex_jax.metrics.base import (
    MetricWriter,
    buckets,
    flatten_hparams,
    group_by_split,
    histogram_stats,
    json_number,
    json_value,
    split_name,
)

logger = logging.getLogger(__name__)

RESERVED_KEYS = ("step", "split", "kind")
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class NdjsonWriter(MetricWriter):
    """Appends one JSON object a line to ``path`` (format in the module docstring).

    Each line is written with one call and flushed, so a killed process leaves complete lines; an
    incomplete last line left by a crash mid-write is dropped when the file is reopened. A failed
    write (disk full, I/O error) is a UserError naming the file.

    On a bucket (``gs://``) an object cannot be appended to: the writer keeps the file's text and
    uploads it whole after every line (an upload replaces the object at once, so a reader or a
    killed writer leaves complete lines there too). That costs one upload of the whole file a line:
    fine for metrics logged every few seconds; raise ``train.log_every`` for very long runs.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = as_path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._failed = False
        self._text: list[str] | None = None  # a bucket's file: its text, uploaded whole
        if is_remote(self.path):
            old = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
            self._text = [old[: old.rfind("\n") + 1]]  # without a cut-short last line
            return
        _drop_partial_last_line(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def _write(self, record: dict[str, Any]) -> None:
        try:
            if self._text is not None:
                self._text.append(json.dumps(record, allow_nan=False) + "\n")
                self.path.write_text("".join(self._text), encoding="utf-8")
                return
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        except OSError as e:
            self._failed = True
            raise UserError(f"{self.path}: cannot write metrics ({e.strerror or e})") from e

    def write_scalars(self, step, scalars):
        for split, metrics in group_by_split(scalars).items():
            clash = [k for k in metrics if k in RESERVED_KEYS]
            if clash:
                raise ValueError(f"metric names {clash} clash with NDJSON keys {RESERVED_KEYS}")
            record = {"step": int(step), "split": split}
            record.update({k: json_number(v) for k, v in metrics.items()})
            self._write(record)

    def write_texts(self, step, texts):
        for name, text in texts.items():
            split, metric = split_name(name)
            self._write({"step": int(step), "split": split, "kind": "text", "name": metric, "text": text})

    def write_hparams(self, hparams):
        flat = {k: json_value(v) for k, v in flatten_hparams(hparams).items()}
        self._write({"step": None, "split": "hparams", "kind": "hparams", "hparams": flat})

    def write_histograms(self, step, arrays, num_buckets=None):
        for name, values in arrays.items():
            split, metric = split_name(name)
            record = {"step": int(step), "split": split, "kind": "histogram", "name": metric}
            record.update(histogram_stats(values, buckets(num_buckets, name)))
            self._write(record)

    def flush(self):
        if self._text is None:
            self._file.flush()

    def close(self):
        if self._text is not None:
            return  # every line is uploaded already
        try:
            self._file.close()
        except OSError as e:  # the unwritten tail of a failed write: that failure is the one to report
            if not self._failed:
                raise UserError(f"{self.path}: cannot write metrics ({e.strerror or e})") from e


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
    lines = as_path(path).read_text(encoding="utf-8").split("\n")
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
