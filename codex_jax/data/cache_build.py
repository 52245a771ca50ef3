"""Building token streams in parallel, resumably, and in shares across hosts.

A build is a fixed, ordered list of *tasks*; each tokenizes some documents into shard files in a
build folder (its layout: :mod:`codex_jax.data.cache_combine`). A task whose marker is there is done
and is not run again, so a killed build continues where it stopped. Tasks run in worker processes
(``data.cache_workers``; ``spawn``ed, so no JAX state is forked; a worker tokenizes with one thread),
each holding one task's documents at a time. In a multi-host run host ``p`` of ``P`` runs the tasks
``i`` with ``i % P == p`` into the same (shared) build folder; the streams are then *combined*
(:func:`~codex_jax.data.cache_combine.combine`) without tokenizing anything again, to the same bytes
whatever the number of processes or hosts.

Two kinds of task: :class:`TextsTask` (documents already in memory, one split: the cache of a mixture's
source or of a plugin source) and :class:`FilesTask` (files read by the worker itself, each file's
records passed through the safety filter and split by the hash of each document's key, so no process
holds the corpus's texts or tokens: :func:`file_tasks` cuts a lazy iterator of files into tasks of about
``task_bytes`` and at most :data:`TASK_FILES` files each; their file reports are written to
``files.jsonl`` one task at a time). ``prepare_data`` builds a file source's cache from FilesTasks
(:mod:`codex_jax.data.streaming`).
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tqdm

from codex_jax.corpus.records import FileReport
from codex_jax.corpus.sources import SourceSpec, file_documents
from codex_jax.corpus.splits import hash_fraction
from codex_jax.data.cache_combine import (
    SPLITS,
    build_folder,
    concatenate,
    finish_files,
    marker_path,
    read_marker,
    shard_path,
    write_key,
)
from codex_jax.errors import UserError
from codex_jax.files import as_path, is_remote, write_bytes_atomic
from codex_jax.files import size as files_size
from codex_jax.safety.data import CorpusFilter
from codex_jax.tokenizers.base import Tokenizer

_ENCODE_CHARS = 1_000_000  # characters encoded per encode_batch call (its lists of ints: ~30 B a token)
TASK_FILES = 1_000  # files per task at most (a task holds their names and reports)


@dataclasses.dataclass(frozen=True)
class TextsTask:
    """Documents already in memory, all of ``split``, in stream order."""

    split: str
    texts: tuple[str, ...]

    def documents(self) -> Iterator[tuple[str, str, float, float]]:
        """``(split, text, split hash, eval order key)`` of every document (both 0: already ordered)."""
        for text in self.texts:
            yield self.split, text, 0.0, 0.0

    def splits(self) -> tuple[str, ...]:
        """The splits this task writes shards of."""
        return (self.split,)


@dataclasses.dataclass(frozen=True)
class FilesTask:
    """Files of a source read by the worker: every document goes to ``split``, or (``split=''``) to
    eval when ``hash_fraction(key) < eval_fraction``, as :func:`~codex_jax.corpus.splits.split_documents`
    decides; ``safety`` is the (resolved) ``data.safety_policy`` applied to each file's records."""

    spec: SourceSpec
    root: str
    files: tuple[str, ...]
    split: str = ""
    eval_fraction: float = 0.0
    on_bad_record: str = "skip"
    safety: str = ""
    reports: list[FileReport] = dataclasses.field(default_factory=list, compare=False)
    eval_records: dict[str, int] = dataclasses.field(default_factory=dict, compare=False)

    def documents(self) -> Iterator[tuple[str, str, float, float]]:
        """``(split, text, split hash, eval order key)`` of every good record; one report per file in
        ``reports``."""
        keep = _safety_filter(self.safety)
        for name in self.files:
            report, records = file_documents(self.spec, as_path(name), as_path(self.root), self.on_bad_record)
            self.reports.append(report)
            for key, text in keep.filter_file(report, records):
                fraction = hash_fraction(key)
                split = self.split or ("eval" if fraction < self.eval_fraction else "train")
                if split == "eval":
                    self.eval_records[report.path] = self.eval_records.get(report.path, 0) + 1
                yield split, text, fraction, hash_fraction("eval-order:" + key)

    def splits(self) -> tuple[str, ...]:
        """The splits this task writes shards of."""
        return SPLITS


_SAFETY_FILTERS: dict[str, CorpusFilter] = {}


def _safety_filter(spec: str) -> CorpusFilter:
    """The safety filter of the resolved policy ``spec`` ('' : off), one per process (its counts unused:
    the corpus manifest has them)."""
    if spec not in _SAFETY_FILTERS:
        _SAFETY_FILTERS[spec] = CorpusFilter(spec, "")
    return _SAFETY_FILTERS[spec]


Task = TextsTask | FilesTask


def text_ranges(texts: Sequence[str], max_chars: int) -> list[tuple[int, int, int]]:
    """``(start, stop, chars)`` ranges of consecutive texts of about ``max_chars`` characters each (at
    least one text per range)."""
    ranges, start = [], 0
    while start < len(texts):
        stop, size = start, 0
        while stop < len(texts) and (size < max_chars or stop == start):
            size += len(texts[stop])
            stop += 1
        ranges.append((start, stop, size))
        start = stop
    return ranges


def text_tasks(texts: Sequence[str], split: str, task_chars: int) -> list[TextsTask]:
    """``texts`` cut into consecutive tasks of about ``task_chars`` characters."""
    return [TextsTask(split, tuple(texts[a:b])) for a, b, _ in text_ranges(texts, task_chars)]


def file_tasks(
    spec: SourceSpec,
    root: Path,
    files: Iterable[Path],
    task_bytes: int,
    split: str = "",
    eval_fraction: float = 0.0,
    on_bad_record: str = "skip",
    safety: str = "",
    task_files: int = 0,
) -> Iterator[FilesTask]:
    """Consecutive files cut into tasks of about ``task_bytes`` bytes each, and at most ``task_files``
    files (0: :data:`TASK_FILES`) (lazily: ``files`` may be a generator)."""
    task_files = task_files or TASK_FILES
    batch: list[str] = []
    size = 0
    for path in files:
        batch.append(os.fspath(path))
        size += files_size(as_path(path))
        if size >= task_bytes or len(batch) >= task_files:
            yield FilesTask(spec, os.fspath(root), tuple(batch), split, eval_fraction, on_bad_record, safety)
            batch, size = [], 0
    if batch:
        yield FilesTask(spec, os.fspath(root), tuple(batch), split, eval_fraction, on_bad_record, safety)


def is_local(directory: Path) -> bool:
    """Whether ``directory`` is on a local (or mounted) filesystem: a build folder needs one."""
    return not is_remote(directory)


def _write_array(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    np.ascontiguousarray(array).tofile(tmp)
    os.replace(tmp, path)


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _run_in_worker(folder: str, index: int, task: Task, dtype: str) -> tuple[int, int, float]:
    assert _WORKER_TOKENIZER is not None
    return run_task(Path(folder), index, task, _WORKER_TOKENIZER, np.dtype(dtype), num_threads=1)


def run_task(
    folder: Path, index: int, task: Task, tokenizer: Tokenizer, dtype: np.dtype, num_threads: int = -1
) -> tuple[int, int, float]:
    """Tokenizes one task into its shard files, then writes its marker; ``(index, chars, cpu seconds)``.

    Each document is followed by EOS. The eval shard keeps each document's order key and length in
    ``eval.order.npy``; the marker keeps the extreme documents of each split (for the never-empty
    split rule) and the task's file reports.
    """
    started = time.process_time()
    eos = np.asarray([tokenizer.eos_id], dtype=dtype)
    pieces: dict[str, list[np.ndarray]] = {s: [] for s in task.splits()}
    counts = {s: 0 for s in task.splits()}
    order: list[tuple[float, int]] = []
    extremes: dict[str, list[float | int] | None] = {s: None for s in task.splits()}
    chars = 0
    pending: list[tuple[str, str, float, float]] = []

    def flush() -> None:
        rows = tokenizer.encode_batch([doc[1] for doc in pending], num_threads)
        for (split, _, fraction, order_key), ids in zip(pending, rows, strict=True):
            tokens = np.asarray(ids, dtype=dtype)
            length = len(tokens) + 1
            best = extremes[split]
            # train: the lowest hash (moved to eval when eval is empty); eval: the highest (moved to train)
            if best is None or (fraction < best[0] if split == "train" else fraction > best[0]):
                extremes[split] = [fraction, counts[split], length]
            if split == "eval":
                order.append((order_key, length))
            pieces[split] += [tokens, eos]
            counts[split] += length
        pending.clear()

    size = 0
    for document in task.documents():
        pending.append(document)
        size += len(document[1])
        chars += len(document[1])
        if size >= _ENCODE_CHARS:
            flush()
            size = 0
    flush()
    for split in task.splits():
        _write_array(
            shard_path(folder, index, f"{split}.tokens"), np.concatenate([np.zeros(0, dtype), *pieces[split]])
        )
    keys = np.asarray([k for k, _ in order], dtype=np.float64)
    lengths = np.asarray([n for _, n in order], dtype=np.int64)
    np.save(
        shard_path(folder, index, "eval.order.npy"),
        np.stack([keys.view(np.int64), lengths]) if order else np.zeros((2, 0), np.int64),
    )
    eval_records = getattr(task, "eval_records", {})
    reports = [
        {**dataclasses.asdict(r), "eval_records": eval_records.get(r.path, 0)}
        for r in getattr(task, "reports", [])
    ]
    marker = {"tokens": counts, "chars": chars, "extremes": extremes, "reports": reports}
    write_bytes_atomic(marker_path(folder, index), (json.dumps(marker) + "\n").encode())
    return index, chars, time.process_time() - started


@dataclasses.dataclass
class BuildStats:
    """What a build did: tasks run here and skipped (done before), characters, worker CPU seconds."""

    tasks: int = 0
    ran: int = 0
    skipped: int = 0
    chars: int = 0
    cpu_seconds: float = 0.0
    seconds: float = 0.0


def run_tasks(
    folder: Path,
    tasks: Iterable[Task],
    tokenizer: Tokenizer,
    dtype: np.dtype,
    workers: int = 1,
    process_index: int = 0,
    process_count: int = 1,
    progress: bool = True,
) -> BuildStats:
    """Runs this process's share of ``tasks`` (index ``i`` with ``i % process_count == process_index``)
    that are not done yet, in ``workers`` processes (1: in this process); returns the stats.

    At most ``2 * workers`` tasks are in flight, so memory stays bounded however many tasks there are.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stats, started = BuildStats(), time.perf_counter()
    bar = tqdm.tqdm(
        unit="char", unit_scale=True, desc="tokenizing", file=sys.stderr, disable=not progress, leave=False
    )

    def done(result: tuple[int, int, float]) -> None:
        stats.ran += 1
        stats.chars += result[1]
        stats.cpu_seconds += result[2]
        bar.update(result[1])

    def todo() -> Iterator[tuple[int, Task]]:
        for index, task in enumerate(tasks):
            stats.tasks += 1
            if index % process_count != process_index:
                continue
            if read_marker(folder, index, dtype) is not None:
                stats.skipped += 1
                continue
            yield index, task

    with bar:
        if workers <= 1:
            for index, task in todo():
                done(run_task(folder, index, task, tokenizer, dtype))
        else:
            try:
                with _main_module_hidden():
                    _run_pool(folder, todo(), tokenizer, dtype, workers, done)
            except concurrent.futures.process.BrokenProcessPool as e:
                raise UserError(
                    f"data.cache_workers={workers}: a tokenizing worker process died ({e}); the tasks done "
                    "so far are kept: rerun to continue, or set data.cache_workers=1"
                ) from None
    stats.seconds = time.perf_counter() - started
    return stats


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Spawned workers do not run the main module again: multiprocessing re-imports ``__main__`` from its
    ``__file__`` or ``__spec__`` in every child, which re-runs an unguarded script (and its training). The
    workers need only codex_jax's modules, so both are hidden while the pool starts them."""
    main = sys.modules["__main__"]
    saved: dict[str, Any] = {
        name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__
    }
    main.__dict__.pop("__file__", None)
    main.__dict__["__spec__"] = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _run_pool(
    folder: Path,
    todo: Iterator[tuple[int, Task]],
    tokenizer: Tokenizer,
    dtype: np.dtype,
    workers: int,
    done: Callable[[tuple[int, int, float]], None],
) -> None:
    """Runs ``todo`` in ``workers`` spawned processes (no JAX threads or state are forked), at most
    ``2 * workers`` tasks in flight."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(tokenizer,)
    ) as pool:
        pending: set[concurrent.futures.Future] = set()
        for index, task in todo:
            pending.add(pool.submit(_run_in_worker, str(folder), index, task, dtype.name))
            if len(pending) >= 2 * workers:
                finished, pending = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
                for future in finished:
                    done(future.result())
        for future in concurrent.futures.as_completed(pending):
            done(future.result())


def build_texts(
    directory: Path,
    key: dict,
    tokenizer: Tokenizer,
    texts: dict[str, Sequence[str]],
    workers: int = 1,
    task_chars: int = 16_000_000,
    progress: bool = True,
) -> dict[str, int]:
    """Tokenizes in-memory ``texts`` (``{split: documents}``) into ``directory/{split}.tokens`` with
    ``workers`` processes, resumably; writes the key and removes the build folder; returns the counts."""
    folder = build_folder(directory, key)
    dtype = np.dtype(key["dtype"])
    tasks = [task for split, docs in texts.items() for task in text_tasks(docs, split, task_chars)]
    workers = min(workers, len(tasks))  # one task: no process to spawn
    stats = run_tasks(folder, tasks, tokenizer, dtype, workers, progress=progress)
    if stats.skipped:
        print(
            f"data: resumed the token cache build: {stats.skipped} of {stats.tasks} tasks were done",
            file=sys.stderr,
        )
    (directory / "key.json").unlink(missing_ok=True)
    counts = concatenate(folder, len(tasks), dtype, directory, list(texts))
    write_key(directory, key, counts)
    shutil.rmtree(folder, ignore_errors=True)
    return counts


def build_files(
    directory: Path,
    key: dict,
    tokenizer: Tokenizer,
    tasks: Iterable[FilesTask],
    workers: int = 1,
    process_index: int = 0,
    process_count: int = 1,
    progress: bool = True,
) -> BuildStats:
    """Runs this host's share of ``tasks`` (see :func:`file_tasks`) into ``directory``'s build folder;
    a single host (``process_count=1``) also finishes the cache (:func:`finish_files`). In a multi-host
    run every host calls this with its own index, and then, after a barrier, one host calls
    :func:`finish_files` with ``stats.tasks``."""
    folder = build_folder(directory, key)
    dtype = np.dtype(key["dtype"])
    stats = run_tasks(folder, tasks, tokenizer, dtype, workers, process_index, process_count, progress)
    if process_count == 1:
        finish_files(directory, key, stats.tasks)
    return stats
