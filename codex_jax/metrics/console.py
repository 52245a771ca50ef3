"""The console writer: one compact line per call on stdout."""

from __future__ import annotations

import math
import sys

import tqdm

from codex_jax.metrics.base import (
    MetricWriter,
    buckets,
    flatten_hparams,
    group_by_split,
    histogram_stats,
)


def format_scalar(value: int | float) -> str:
    """Compact console form: ``2.3000``, ``1.0e-03``, ``466000``, ``12``, ``nan``."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0 or 1e-2 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.1e}" if abs(value) < 1e-2 else f"{value:.0f}"


# Splits kept off the console (they still go to TensorBoard, NDJSON, MLflow): one line per step is enough.
QUIET_SPLITS = ("system",)


class ConsoleWriter(MetricWriter):
    """Prints one compact line per call to stdout via ``tqdm.write`` (keeps progress bars intact).

    ``step 10 train loss=2.3000 learning_rate=1.0e-03 eval loss=2.4000``
    """

    def _print(self, line: str) -> None:
        tqdm.tqdm.write(line, file=sys.stdout)

    def write_scalars(self, step, scalars):
        parts = [f"step {int(step)}"]
        for split, metrics in group_by_split(scalars).items():
            if split in QUIET_SPLITS:
                continue
            if split is not None:
                parts.append(split)
            parts.extend(f"{k}={format_scalar(v)}" for k, v in metrics.items())
        if len(parts) > 1:
            self._print(" ".join(parts))

    def write_texts(self, step, texts):
        for name, text in texts.items():
            self._print(f"step {int(step)} {name}: {text}")

    def write_hparams(self, hparams):
        flat = flatten_hparams(hparams)
        self._print(f"hparams: {len(flat)} values (the full config is in workdir/config.json)")

    def write_histograms(self, step, arrays, num_buckets=None):
        for name, values in arrays.items():
            s = histogram_stats(values, buckets(num_buckets, name))
            if "mean" in s:
                stats = " ".join(f"{k}={format_scalar(s[k])}" for k in ("mean", "std", "min", "max"))
            else:
                stats = "no finite values"
            self._print(f"step {int(step)} histogram {name}: {stats} nonfinite={s['nonfinite']}")

    def flush(self):
        sys.stdout.flush()

    def close(self):
        self.flush()
