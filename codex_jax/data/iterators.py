"""Grain iterators over packed windows: endless shuffled train batches and fixed eval batches.

:func:`make_train_iterator` shuffles windows with the seed (a new order every epoch, forever) and
gives each process its block of rows of every global batch, optionally prefetched by a thread or
by worker processes (the same batches either way); :func:`eval_batches` is a fixed, unshuffled
list. Windows are ``seq_len + 1`` tokens: inputs are ``w[:, :-1]`` and targets ``w[:, 1:]``.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from codex_jax.compute.batch import STEP_SCALE, TOKENS
from codex_jax.data.packing import row_target_counts
from codex_jax.errors import UserError


class WindowSource:
    """Random access to windows; pickles a file-backed memmap by path, not by content."""

    def __init__(self, windows: np.ndarray):
        self._windows = windows

    def __len__(self) -> int:
        return len(self._windows)

    def __getitem__(self, index):
        return self._windows[index]

    def __repr__(self) -> str:  # stable across runs and processes: no object ids
        w = self._windows
        where = getattr(w, "filename", None) or "memory"
        return f"WindowSource(shape={tuple(w.shape)}, dtype={w.dtype}, at={where})"

    def __getstate__(self) -> dict:
        w = self._windows
        if isinstance(w, np.memmap) and w.filename and isinstance(w.base, mmap.mmap):
            return {"file": (w.filename, w.dtype.str, w.offset, tuple(w.shape))}
        return {"array": np.asarray(w)}

    def __setstate__(self, state: dict) -> None:
        if "file" in state:
            filename, dtype, offset, shape = state["file"]
            self._windows = np.memmap(filename, dtype=dtype, mode="r", offset=offset, shape=shape)
        else:
            self._windows = state["array"]


class GatherRows:
    """Maps a global batch of window indices to this process's int32 rows ``[start:stop]``."""

    def __init__(self, source: WindowSource | MixedRows, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.source[indices[self.start : self.stop]], dtype=np.int32)

    def __repr__(self) -> str:
        return f"GatherRows({self.source!r}, start={self.start}, stop={self.stop})"


class GatherExamples:
    """Maps global batch ``index`` (its window indices) to this process's rows of every array of a masked
    batch (int32), with the ``step_scale`` of its optimizer step: ``accum_steps / trained targets`` of the
    ``accum_steps`` global batches that step takes (see :mod:`codex_jax.compute.batch`)."""

    def __init__(self, rows: dict, start: int, stop: int, order, global_batch: int, accum_steps: int):
        self.source = {k: as_row_source(v) for k, v in rows.items()}
        self.start, self.stop, self.order = start, stop, order
        self.global_batch, self.accum_steps = global_batch, accum_steps
        self.counts = row_target_counts(rows)  # trained targets per row

    def __call__(self, index: int, indices: np.ndarray) -> dict:
        rows = {
            k: np.asarray(v[indices[self.start : self.stop]], dtype=np.int32) for k, v in self.source.items()
        }
        if self.accum_steps == 1:
            step_rows = indices
        else:
            first = index // self.accum_steps * self.accum_steps * self.global_batch
            step_rows = np.asarray(
                [self.order[i] for i in range(first, first + self.accum_steps * self.global_batch)]
            )
        trained = max(int(self.counts[step_rows].sum()), 1)
        rows[STEP_SCALE] = np.full((self.stop - self.start,), self.accum_steps / trained, np.float32)
        return rows

    def __repr__(self) -> str:
        return f"GatherExamples({self.source!r}, start={self.start}, stop={self.stop}, K={self.accum_steps})"


def order_seed(seed: int) -> int:
    """The 32-bit shuffle seed for ``seed`` (hashed, so seed+1 is not seed's next epoch)."""
    return int.from_bytes(hashlib.sha256(f"train-order:{seed}".encode()).digest()[:4], "little")


def make_train_iterator(
    windows: np.ndarray,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    prefetch: int = 0,
    accum_steps: int = 1,
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of int32 ``[batch_size, seq_len + 1]`` train batches.

    Global batch k is windows ``k * G ... (k + 1) * G - 1`` of the shuffled order (G =
    ``batch_size * process_count``, a new permutation every epoch) and process p gets its rows
    ``[p * batch_size, (p + 1) * batch_size)``: the processes' batches concatenated in process
    order are what a single process with batch G sees. ``get_state()``/``set_state()`` (or
    ``grain.checkpoint``) resume exactly.

    ``prefetch`` batches are prepared ahead: by one background thread when ``num_workers`` is 0,
    else by each of ``num_workers`` processes. Neither changes the batches or their order.

    ``windows`` may be a dict of row arrays (a masked batch, :mod:`codex_jax.compute.batch`): batches are
    then dicts, and ``accum_steps`` (micro-batches per optimizer step) sets their ``step_scale``.
    """
    if not row_count(windows):
        raise UserError("no training windows: the train split is shorter than data.seq_len + 1")
    order = grain.MapDataset.range(row_count(windows)).shuffle(seed=order_seed(seed)).repeat()
    ds = batches_of(windows, order, batch_size, process_index, process_count, accum_steps)
    return TrainBatches(ds, num_workers, prefetch)


def batches_of(
    rows,
    order: grain.MapDataset,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    accum_steps: int = 1,
) -> grain.MapDataset:
    """The MapDataset of this process's batches: global batch k is rows ``order[k * G : (k + 1) * G]``
    (G = ``batch_size * process_count``), of which process p takes its block of ``batch_size``.

    ``rows``: windows (an array, or :class:`MixedRows`) or a dict of row arrays (masked batches, with
    the ``step_scale`` of ``accum_steps`` micro-batches per optimizer step).
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    start = process_index * batch_size
    ds = order.batch(batch_size * process_count, drop_remainder=True, batch_fn=np.asarray)
    if isinstance(rows, dict):
        gather = GatherExamples(
            rows, start, start + batch_size, order, batch_size * process_count, accum_steps
        )
        return ds.map_with_index(gather)
    return ds.map(GatherRows(as_row_source(rows), start, start + batch_size))


def as_row_source(rows) -> WindowSource | MixedRows:
    """``rows`` ready for worker processes: :class:`MixedRows` as they are, arrays in a WindowSource."""
    return rows if isinstance(rows, MixedRows) else WindowSource(rows)


class MixedRows:
    """The rows of several sources as one array: row ``offsets[j] + r`` is source j's row r.

    Index it with an int or an int array; every part is a :class:`WindowSource`, so it pickles
    memmaps by path (grain worker processes reopen them).
    """

    def __init__(self, parts):
        self.parts = [as_row_source(p) for p in parts]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        first = np.asarray(self.parts[0][0])
        self.dtype, self.shape = first.dtype, (int(self.offsets[-1]), *first.shape)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index):
        flat = np.atleast_1d(np.asarray(index, np.int64))
        which = np.searchsorted(self.offsets, flat, side="right") - 1
        out = np.empty((len(flat), *self.shape[1:]), self.dtype)
        for j in np.unique(which):
            picked = which == j
            out[picked] = self.parts[j][flat[picked] - self.offsets[j]]
        return out[0] if np.ndim(index) == 0 else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = np.concatenate([np.asarray(p[np.arange(len(p))]) for p in self.parts])
        return whole if dtype is None else whole.astype(dtype)

    def __repr__(self) -> str:  # stable across runs and processes
        return f"MixedRows({', '.join(repr(p) for p in self.parts)})"


class TrainBatches(grain.DatasetIterator):
    """Reads a MapDataset of batches in order, with a prefetch thread or worker processes.

    The state is ``{"next_index": k}`` (batches returned so far) whatever the reading mode, so a
    checkpoint resumes with any ``data.num_workers``/``data.prefetch``: ``set_state`` restarts
    reading at batch k. The readers start on the first ``next``.
    """

    def __init__(self, dataset: grain.MapDataset, num_workers: int, prefetch: int):
        super().__init__()
        self._dataset, self._num_workers, self._prefetch = dataset, num_workers, prefetch
        self._next_index = 0
        self._it: Iterator[np.ndarray] | None = None  # the readers, once started
        if num_workers < 0 or prefetch < 0:
            raise ValueError(f"num_workers={num_workers} and prefetch={prefetch} must be >= 0")

    def _start(self):
        threaded = self._prefetch if self._num_workers == 0 else 0
        read = grain.ReadOptions(num_threads=min(threaded, 1), prefetch_buffer_size=threaded)
        ds = self._dataset[self._next_index :] if self._next_index else self._dataset
        it_ds = ds.to_iter_dataset(read)
        if self._num_workers > 0:
            _ensure_absl_flags_parsed()
            per_worker = max(self._prefetch, 1)
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(self._num_workers, per_worker))
        return iter(it_ds)

    def __next__(self) -> np.ndarray:
        if self._it is None:
            self._it = self._start()
        batch = next(self._it)
        self._next_index += 1
        return batch

    def get_state(self) -> dict:
        return {"next_index": self._next_index}

    def set_state(self, state: dict) -> None:
        self.close()
        self._next_index = int(state["next_index"])

    def close(self) -> None:
        """Stops the readers (worker processes, threads); the next ``next`` restarts them."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app, use their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def eval_batches(
    windows: np.ndarray | dict[str, np.ndarray],
    batch_size: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[Any]:
    """``num_batches`` global batches of eval windows spread evenly over the eval split; this
    process's rows.

    The windows are taken at evenly spaced positions so every held-out file contributes in
    proportion to its size. Process p gets rows ``[p * batch_size, (p + 1) * batch_size)`` of every
    global batch, as in :func:`make_train_iterator`. UserError when there are fewer than
    ``num_batches * batch_size * process_count`` windows; masked rows (a dict) are topped up with blank rows
    instead (mask 0: they count nothing), since example splits are often small.
    """
    global_batch = batch_size * process_count
    needed = num_batches * global_batch
    if isinstance(windows, dict) and row_count(windows) < needed:  # blank rows (mask 0) count nothing
        windows = {
            k: np.concatenate([v, np.zeros((needed - len(v), *v.shape[1:]), v.dtype)])
            for k, v in windows.items()
        }
    if row_count(windows) < needed:
        raise UserError(
            f"evaluation needs {needed} windows (eval.num_batches={num_batches} x global batch "
            f"{global_batch}) but the eval split has {row_count(windows)}; lower eval.num_batches or "
            "data.batch_size, or raise data.eval_fraction"
        )
    picked = np.linspace(0, row_count(windows) - 1, needed).round().astype(np.int64)
    first = process_index * batch_size
    rows = [picked[k * global_batch + first :][:batch_size] for k in range(num_batches)]
    if isinstance(windows, dict):
        return [{k: np.asarray(v[r], dtype=np.int32) for k, v in windows.items()} for r in rows]
    return [np.asarray(windows[r], dtype=np.int32) for r in rows]


def row_count(windows) -> int:
    """Rows of bare windows or of a dict of row arrays."""
    return len(windows[TOKENS]) if isinstance(windows, dict) else len(windows)
