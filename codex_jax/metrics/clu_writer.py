"""CLU's own writers (``clu.metric_writers.create_default_writer``), where TensorFlow is installed.

``clu.metric_writers`` imports TensorFlow (as on Colab); without it ``logging.writers=clu`` stops
with a UserError naming the extra to install.
"""

from __future__ import annotations

import os

from codex_jax.errors import UserError
from codex_jax.metrics.base import flatten_hparams, scalar_hparam

EXTRA_HINT = "pip install 'codex-jax[clu]'"


def _missing(reason: str) -> UserError:
    return UserError(
        f"logging.writers=clu needs TensorFlow and TensorBoard (clu.metric_writers imports them): "
        f"{EXTRA_HINT} ({reason}); or use the TensorFlow-free 'tensorboard' writer"
    )


def create_clu_writer(logdir: str | os.PathLike):
    """CLU's default writer (logging + TensorFlow summaries under ``logdir``), hparams flattened."""
    try:
        import tensorflow as tf
        from clu import metric_writers
    except ImportError as e:
        raise _missing(str(e)) from None
    tf.config.set_visible_devices([], "GPU")  # the accelerators belong to jax
    return _FlatHparams(metric_writers.create_default_writer(os.fspath(logdir), just_logging=False))


class _FlatHparams:
    """A CLU writer whose ``write_hparams`` gets flat scalar values (a config is nested)."""

    def __init__(self, writer):
        self.writer = writer

    def write_hparams(self, hparams):
        self.writer.write_hparams({k: scalar_hparam(v) for k, v in flatten_hparams(hparams).items()})

    def __getattr__(self, name):
        return getattr(self.writer, name)
