"""Building token streams in parallel, resumably, and in shares across hosts.

A build is a fixed, ordered list of *tasks* (:mod:`codex_jax.data.cache_tasks`); each tokenizes some
documents into shard files in a build folder (its layout: :mod:`codex_jax.data.cache_combine`). A task
whose marker is there is done and is not run again, so a killed build continues where it stopped. Tasks
run in ``data.cache_workers`` worker processes (:mod:`codex_jax.data.cache_workers`; ``spawn``ed, so no
JAX state is forked; a worker tokenizes with one thread), each holding one task's documents at a time. In
a multi-host run host ``p`` of ``P`` runs the tasks ``i`` with ``i % P == p`` into the same (shared)
build folder; the streams are then *combined* (:func:`~codex_jax.data.cache_combine.combine`) without
tokenizing anything again, to the same bytes whatever the number of processes or hosts.

This module cuts the work into tasks and runs the builds. :func:`build_texts` tokenizes documents in
memory, cut by :func:`text_tasks` into TextsTasks. :func:`build_files` tokenizes files, cut by
:func:`file_tasks` (lazily, from an iterator of files) into FilesTasks of about ``task_bytes`` and at
most :data:`TASK_FILES` files each; their file reports are written to ``files.jsonl`` one task at a
time. ``prepare_data`` builds a file source's cache from FilesTasks (:mod:`codex_jax.data.streaming`).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from codex_jax.corpus.source_spec import SourceSpec
from codex_jax.data.cache_combine import build_folder, concatenate, finish_files, write_key
from codex_jax.data.cache_tasks import FilesTask, TextsTask
from codex_jax.data.cache_workers import BuildStats, run_tasks
from codex_jax.files import as_path, is_remote
from codex_jax.files import size as files_size
from codex_jax.tokenizers.base import Tokenizer

TASK_FILES = 1_000  # files per task at most (a task holds their names and reports)


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
