"""Metric writers by name (``logging.writers``) and the fan-out to all of them.

Writers: ``tensorboard`` (tensorboardX, ``workdir/tensorboard``), ``ndjson``
(``workdir/metrics.ndjson``), ``console`` (stdout), ``mlflow`` (a local MLflow file store,
``workdir/mlruns``, unless ``logging.mlflow_uri``) and ``clu`` (CLU's default writer into
``workdir/clu``; needs TensorFlow). Each has CLU's ``MetricWriter`` methods.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from codex_jax.errors import UserError
from codex_jax.files import as_path
from codex_jax.metrics import mlflow_writer
from codex_jax.metrics.base import (  # noqa: F401 (re-exported)
    MetricWriter,
    flatten_hparams,
    split_name,
    to_scalar,
)
from codex_jax.metrics.clu_writer import create_clu_writer
from codex_jax.metrics.console import ConsoleWriter, format_scalar  # noqa: F401 (re-exported)
from codex_jax.metrics.ndjson import RESERVED_KEYS, NdjsonWriter, read_ndjson  # noqa: F401
from codex_jax.metrics.tensorboard import TensorBoardWriter

WRITER_NAMES = ("tensorboard", "ndjson", "console", "mlflow", "clu")


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


def _option(options: Any, key: str, default: Any) -> Any:
    if options is None:
        return default
    if isinstance(options, Mapping):
        return options.get(key, default)
    return getattr(options, key, default)


def create_writers(
    names: str,
    workdir: str | os.PathLike,
    is_main_process: bool,
    options: Any = None,
    resume_step: int | None = None,
) -> MultiWriter:
    """Builds the writers named in ``names`` (config ``logging.writers``) for ``workdir``.

    ``resume_step``: the checkpoint step a run resumes from; TensorBoard then drops later points
    (see :class:`TensorBoardWriter`), as ``metrics.ndjson`` is truncated to that step.

    ``options`` is the ``logging`` config section (``mlflow_uri``, ``mlflow_allow_remote``,
    ``mlflow_experiment``). On non-main processes (multi-host) the names and the MLflow URI are
    still checked but the result writes nothing.
    """
    parsed = parse_writer_names(names)
    workdir = as_path(workdir)
    if "mlflow" in parsed:  # checked on every process, before anything is written
        allow_remote = _option(options, "mlflow_allow_remote", False)
        uri = mlflow_writer.tracking_uri(_option(options, "mlflow_uri", ""), workdir, allow_remote)
    if not is_main_process:
        return MultiWriter([])

    def mlflow():
        experiment = _option(options, "mlflow_experiment", "codex_jax")
        return mlflow_writer.MlflowWriter(uri, experiment, workdir / mlflow_writer.RUN_FILE)

    def clu():
        return create_clu_writer(workdir / "clu")

    factories = {
        "tensorboard": lambda: TensorBoardWriter(
            workdir / "tensorboard", purge_step=None if resume_step is None else resume_step + 1
        ),
        "ndjson": lambda: NdjsonWriter(workdir / "metrics.ndjson"),
        "console": ConsoleWriter,
        "mlflow": mlflow,
        "clu": clu,
    }
    writers = []
    try:
        for name in parsed:
            writers.append(factories[name]())
    except BaseException:
        MultiWriter(writers).close()
        raise
    return MultiWriter(writers)
