"""Running a build's tasks (:mod:`codex_jax.data.cache_tasks`): :func:`run_task` tokenizes one task into
its shard files and then writes its done-marker (layout: :mod:`codex_jax.data.cache_combine`);
:func:`run_tasks` runs this host's share of the tasks not done yet, in this process or in ``spawn``ed
worker processes (``data.cache_workers``; no JAX state is forked; a worker tokenizes with one thread),
at most two tasks per worker in flight.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import contextlib
import dataclasses
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tqdm

from codex_jax.data.cache_combine import marker_path, read_marker, shard_path
from codex_jax.data.cache_tasks import Task
from codex_jax.errors import UserError
from codex_jax.files import write_bytes_atomic
from codex_jax.tokenizers.base import Tokenizer

_ENCODE_CHARS = 1_000_000  # characters encoded per encode_batch call (its lists of ints: ~30 B a token)


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
