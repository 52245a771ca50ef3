"""The TensorBoard writer: event files under ``workdir/tensorboard`` with tensorboardX."""

from __future__ import annotations

import os
import sys

import numpy as np

from codex_jax.files import as_path
from codex_jax.metrics.base import MetricWriter, flatten_hparams, scalar_hparam, to_scalar


def _import_tensorboardx():
    """Imports tensorboardX without letting it import torch.

    tensorboardX imports torch when installed (1+ s, and on GPU torch can load its own cuDNN before
    jax does). If torch is not imported yet, hide it during the import; a later import still works.
    """
    if "torch" in sys.modules:
        import tensorboardX

        return tensorboardX
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        import tensorboardX
    finally:
        del sys.modules["torch"]
    return tensorboardX


class TensorBoardWriter(MetricWriter):
    """Writes TensorBoard event files under ``logdir`` with tensorboardX (no TensorFlow).

    ``purge_step`` (a resumed run: the first step it writes again) starts the new event file with a
    SessionLog START at that step, so TensorBoard drops the points an interrupted run logged from there
    on instead of showing two lines for the same steps.
    """

    def __init__(self, logdir: str | os.PathLike, purge_step: int | None = None):
        tensorboardx = _import_tensorboardx()
        # tensorboardX writes a gs:// logdir itself (google-cloud-storage: the whole event file is
        # uploaded at each flush; it honours STORAGE_EMULATOR_HOST like gcsfs).
        self.logdir = as_path(logdir)
        self._writer = tensorboardx.SummaryWriter(logdir=str(self.logdir), purge_step=purge_step)

    def write_scalars(self, step, scalars):
        for name, value in scalars.items():
            self._writer.add_scalar(name, float(to_scalar(name, value)), int(step))

    def write_texts(self, step, texts):
        for name, text in texts.items():
            self._writer.add_text(name, text, int(step))

    def write_hparams(self, hparams):
        from tensorboardX.summary import hparams as hparams_summary

        flat = {k: scalar_hparam(v) for k, v in flatten_hparams(hparams).items()}
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
