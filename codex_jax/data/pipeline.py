"""From ``cfg.data`` to batches: prepare the corpus once, then a grain iterator over its windows.

:func:`prepare_data` reads the source, splits it by file, trains or loads the tokenizer, packs the
token streams (cached in ``workdir/cache``) and writes ``workdir/data_manifest.json``.
:func:`make_train_iterator` shuffles windows with the seed (a new order every epoch, forever) and
gives each process its block of rows of every global batch; :func:`eval_batches` is a fixed,
unshuffled list.
Windows are ``seq_len + 1`` tokens: inputs are ``w[:, :-1]`` and targets ``w[:, 1:]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grain
import numpy as np

from codex_jax.data import cache
from codex_jax.data.sources import Document, read_source
from codex_jax.data.splits import corpus_manifest, hash_fraction, split_documents
from codex_jax.errors import UserError
from codex_jax.tokenizers.sentencepiece import (
    SentencePieceTokenizer,
    load_or_train,
    write_bytes_atomic,
)

if TYPE_CHECKING:
    from ml_collections import ConfigDict

MANIFEST_FILENAME = "data_manifest.json"


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """What training needs from the data: the tokenizer and the train/eval windows."""

    tokenizer: SentencePieceTokenizer
    train_windows: np.ndarray  # [N, seq_len + 1], uint16/uint32 (a memmap when cached)
    eval_windows: np.ndarray  # [M, seq_len + 1]
    manifest_path: Path
    manifest: dict[str, Any]


def prepare_data(cfg: ConfigDict, workdir: str | Path, write: bool | None = None) -> DataBundle:
    """Reads, splits, tokenizes and windows ``cfg.data.source``; files go under ``workdir``.

    Only the writer (by default process 0 of ``jax.process_index()``) writes files; every other
    process builds the same deterministic result in memory or reads what is already there.
    """
    workdir = Path(workdir)
    if write is None:
        import jax

        write = jax.process_index() == 0
    train_docs, eval_docs, manifest = _read_and_split(cfg)

    def tokenizer_texts():  # training documents in a hash order, so a budget samples them all
        return (d.text for d in sorted(train_docs, key=lambda d: hash_fraction("tok:" + d.key)))

    tokenizer = load_or_train(
        cfg.data.tokenizer,
        workdir / "tokenizer",
        cfg.model.vocab_size,
        tokenizer_texts,
        cfg.data.tokenizer_train_bytes,
        write,
    )
    if tokenizer.eos_id < 0:
        raise UserError(f"data.tokenizer {cfg.data.tokenizer} has no EOS piece to end documents")
    seq_len = cfg.data.seq_len
    key = cache.cache_key(manifest["checksum"], tokenizer, seq_len)
    # Eval documents in a hash order, so that the first eval batches sample every held-out file.
    eval_docs = sorted(eval_docs, key=lambda d: hash_fraction("eval-order:" + d.key))
    texts = {"train": [d.text for d in train_docs], "eval": [d.text for d in eval_docs]}
    progress = bool(cfg.logging.progress)
    streams = cache.load_or_build(workdir / "cache", key, tokenizer, texts, write, progress)
    windows = _windows(streams, seq_len)
    manifest["tokenizer"] = {
        "path": cfg.data.tokenizer or str(workdir / "tokenizer"),
        "sha256": tokenizer.checksum,
        "vocab_size": tokenizer.vocab_size,
    }
    manifest["seq_len"] = seq_len
    manifest["tokens"] = {split: len(s) for split, s in streams.items()}
    manifest["windows"] = {split: len(w) for split, w in windows.items()}
    manifest_path = workdir / MANIFEST_FILENAME
    if write:
        write_bytes_atomic(manifest_path, manifest_json(manifest).encode())
    return DataBundle(tokenizer, windows["train"], windows["eval"], manifest_path, manifest)


def _read_and_split(cfg: ConfigDict) -> tuple[list[Document], list[Document], dict[str, Any]]:
    """(train documents, eval documents, corpus manifest) of ``cfg.data``, with a log line."""
    started = time.perf_counter()
    corpus = read_source(cfg.data.source, cfg.data.max_files)
    train_docs, eval_docs = split_documents(corpus.documents, cfg.data.eval_fraction)
    manifest = corpus_manifest(corpus, eval_docs, cfg.data.max_files, cfg.data.eval_fraction)
    t = manifest["totals"]
    print(
        f"data: {t['files']} files, {t['bytes'] / 1e6:.1f} MB, {t['records']} documents "
        f"({t['eval_documents']} held out), {t['skipped']} skipped, read in "
        f"{time.perf_counter() - started:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return train_docs, eval_docs, manifest


def _windows(streams: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """``[N, seq_len + 1]`` windows of every stream; UserError when a split has none."""
    windows = {split: cache.windows(s, seq_len + 1) for split, s in streams.items()}
    for split, w in windows.items():
        if not len(w):
            raise UserError(
                f"the {split} split has {len(streams[split])} tokens, fewer than data.seq_len+1="
                f"{seq_len + 1}; use more data (data.max_files, data.eval_fraction) or a smaller "
                "data.seq_len"
            )
    return windows


def manifest_json(manifest: dict[str, Any]) -> str:
    """The manifest as indented JSON with one line per file."""
    text = json.dumps({**manifest, "files": "FILES"}, indent=2)
    rows = ",\n".join("    " + json.dumps(f) for f in manifest["files"])
    return text.replace('"files": "FILES"', '"files": [\n' + rows + "\n  ]", 1) + "\n"


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

    def __init__(self, source: WindowSource, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.source[indices[self.start : self.stop]], dtype=np.int32)

    def __repr__(self) -> str:
        return f"GatherRows({self.source!r}, start={self.start}, stop={self.stop})"


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
) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of int32 ``[batch_size, seq_len + 1]`` train batches.

    Global batch k is windows ``k * G ... (k + 1) * G - 1`` of the shuffled order (G =
    ``batch_size * process_count``, a new permutation every epoch) and process p gets its rows
    ``[p * batch_size, (p + 1) * batch_size)``: the processes' batches concatenated in process
    order are what a single process with batch G sees. ``get_state()``/``set_state()`` (or
    ``grain.checkpoint``) resume exactly.
    """
    if not len(windows):
        raise UserError("no training windows: the train split is shorter than data.seq_len + 1")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    start = process_index * batch_size
    ds = (
        grain.MapDataset.range(len(windows))
        .shuffle(seed=order_seed(seed))
        .repeat()
        .batch(batch_size * process_count, drop_remainder=True, batch_fn=np.asarray)
        .map(GatherRows(WindowSource(windows), start, start + batch_size))
    )
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if num_workers > 0:
        _ensure_absl_flags_parsed()
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it_ds)


def _ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app, use their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def eval_batches(
    windows: np.ndarray,
    batch_size: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[np.ndarray]:
    """``num_batches`` global batches of eval windows spread evenly over the eval split; this process's rows.

    The windows are taken at evenly spaced positions so every held-out file contributes in proportion to
    its size. Process p gets rows ``[p * batch_size, (p + 1) * batch_size)`` of every global batch, as in
    :func:`make_train_iterator`. UserError when there are fewer than ``num_batches * batch_size *
    process_count`` windows.
    """
    global_batch = batch_size * process_count
    needed = num_batches * global_batch
    if len(windows) < needed:
        raise UserError(
            f"evaluation needs {needed} windows (eval.num_batches={num_batches} x global batch "
            f"{global_batch}) but the eval split has {len(windows)}; lower eval.num_batches or "
            "data.batch_size, or raise data.eval_fraction"
        )
    picked = np.linspace(0, len(windows) - 1, needed).round().astype(np.int64)
    first = process_index * batch_size
    return [
        np.asarray(windows[picked[k * global_batch + first : k * global_batch + first + batch_size]],
                   dtype=np.int32)
        for k in range(num_batches)
    ]
