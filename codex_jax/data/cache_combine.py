"""The build folder of a token cache build, and the cache finished from its shards.

A build (:mod:`codex_jax.data.cache_build`) tokenizes tasks into shard files in a build folder
(``cache/build-<key digest>/``)::

    000012.train.tokens  000012.eval.tokens  000012.eval.order.npy  000012.json

``NNNNNN.json`` is the task's marker, written last: :func:`read_marker` says whether a task is done.
When every task is done the streams are *combined* without tokenizing anything again: ``train`` is
the shards' ``train`` tokens concatenated in task order (a file copy), ``eval`` is every shard's eval
documents gathered in the order of their order keys (``hash_fraction('eval-order:' + key)``, the
order the in-memory path sorts them in). Neither depends on the number of processes or hosts, so
every build of the same tasks gives the same bytes. :func:`finish_files` combines a files build,
writes its file reports and the cache's key, and removes the build folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from codex_jax.errors import UserError
from codex_jax.files import write_bytes_atomic

SPLITS = ("train", "eval")
_COPY_BYTES = 8 << 20  # buffer of the combining copies
_OPEN_SHARDS = 32  # eval shards open at once while the eval stream is gathered

# A document moved to the other split when its own split is empty: (from split, task, offset, length).
_Moved = tuple[str, int, int, int]


def build_folder(directory: Path, key: dict) -> Path:
    """The build folder of the streams under ``key`` (a digest of the key: a new key starts afresh)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return directory / f"build-{digest}"


def marker_path(folder: Path, index: int) -> Path:
    """The marker file of task ``index`` (written last: its task is done when it is there)."""
    return folder / f"{index:06d}.json"


def shard_path(folder: Path, index: int, name: str) -> Path:
    """The shard file ``name`` (``train.tokens``, ``eval.tokens``, ``eval.order.npy``) of task ``index``."""
    return folder / f"{index:06d}.{name}"


def read_marker(folder: Path, index: int, dtype: np.dtype) -> dict | None:
    """The marker of task ``index`` when the task is done (its shard files have the sizes it records)."""
    try:
        marker = json.loads(marker_path(folder, index).read_text())
    except (OSError, ValueError):
        return None
    for split, count in marker["tokens"].items():
        path = shard_path(folder, index, f"{split}.tokens")
        if (path.stat().st_size if path.exists() else -1) != count * dtype.itemsize:
            return None
    return marker


def _copy_range(source, out, start: int, stop: int) -> None:
    """Bytes ``[start, stop)`` of the open file ``source`` appended to ``out``."""
    source.seek(start)
    left = stop - start
    while left > 0:
        chunk = source.read(min(left, _COPY_BYTES))
        if not chunk:
            raise UserError(f"token cache shard {source.name} is shorter than its marker says")
        out.write(chunk)
        left -= len(chunk)


def combine(folder: Path, count: int, dtype: np.dtype, directory: Path) -> dict[str, int]:
    """Writes ``directory/{train,eval}.tokens`` from the shards of tasks ``0..count-1`` (all done, by
    every host); returns the token count of each split.

    ``train`` is the shards' train tokens in task order; ``eval`` is every eval document in the order
    of its order key (a stable sort: ties keep task order). As in
    :func:`~codex_jax.corpus.splits.split_documents`, an empty eval split takes the train document with
    the lowest split hash, and an empty train split the eval document with the highest.
    """
    markers = _done_markers(folder, count, dtype)
    moved = moved_document(markers)
    counts = {}
    tmp = {s: directory / f".{s}.tokens.{os.getpid()}.tmp" for s in SPLITS}
    directory.mkdir(parents=True, exist_ok=True)
    counts["train"] = _write_train(folder, markers, moved, dtype.itemsize, tmp["train"])
    counts["eval"] = _write_eval(folder, count, moved, dtype.itemsize, tmp["eval"])
    for split in SPLITS:
        os.replace(tmp[split], directory / f"{split}.tokens")
    return counts


def _done_markers(folder: Path, count: int, dtype: np.dtype) -> list[dict]:
    """The token counts and extremes of tasks ``0..count-1``; an error when one is not done."""
    markers = []
    for index in range(count):
        marker = read_marker(folder, index, dtype)
        if marker is None:
            raise UserError(
                f"token cache build {folder}: task {index} of {count} is not done (a host's share is missing)"
            )
        markers.append({"tokens": marker["tokens"], "extremes": marker["extremes"]})  # not the file reports
    return markers


def moved_document(markers: list[dict]) -> _Moved | None:
    """The document moved over when one split is empty (the never-empty split rule), or None; an error
    when there are documents but too few to fill both splits."""
    totals = {s: sum(m["tokens"][s] for m in markers) for s in SPLITS}
    documents = sum(1 for m in markers for s in SPLITS if m["extremes"][s] is not None)
    moved: _Moved | None = None
    for split, other, pick in (("train", "eval", min), ("eval", "train", max)):
        if not totals[other] and totals[split]:
            candidates = [(m["extremes"][split], i) for i, m in enumerate(markers) if m["extremes"][split]]
            best = pick(candidates, key=lambda c: (c[0][0], c[1] if pick is min else -c[1]))
            moved = (split, best[1], int(best[0][1]), int(best[0][2]))
    if documents and not (totals["train"] and totals["eval"]) and moved is None:
        raise UserError("data.source has too few usable documents to hold one out for evaluation")
    return moved


def _write_train(folder: Path, markers: list[dict], moved: _Moved | None, item: int, path: Path) -> int:
    """Writes the train stream to ``path`` (the shards in task order, less a document moved to eval,
    plus one moved from eval); returns its token count."""
    with open(path, "wb") as out:
        for index in range(len(markers)):
            with open(shard_path(folder, index, "train.tokens"), "rb") as source:
                size = markers[index]["tokens"]["train"] * item
                if moved and moved[0] == "train" and moved[1] == index:
                    _copy_range(source, out, 0, moved[2] * item)
                    _copy_range(source, out, (moved[2] + moved[3]) * item, size)
                else:
                    _copy_range(source, out, 0, size)
        if moved and moved[0] == "eval":
            with open(shard_path(folder, moved[1], "eval.tokens"), "rb") as source:
                _copy_range(source, out, moved[2] * item, (moved[2] + moved[3]) * item)
        return out.tell() // item


def _eval_documents(
    folder: Path, count: int, moved: _Moved | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`eval_order` of the eval order files of tasks ``0..count-1`` in ``folder``."""
    orders = [np.load(shard_path(folder, i, "eval.order.npy"), allow_pickle=False) for i in range(count)]
    return eval_order(orders, moved)


def eval_order(
    orders: Sequence[np.ndarray], moved: _Moved | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(task, offset, length)`` of every eval document (less one moved to train), in the order of
    the documents' order keys (a stable sort: ties keep task order); offsets and lengths in tokens.
    ``orders[i]`` is task ``i``'s ``eval.order.npy`` (``[2, documents]``: order keys as int64 bits,
    lengths)."""
    keys, lengths, tasks, offsets = [], [], [], []
    for index, order in enumerate(orders):
        keys.append(order[0].view(np.float64))
        lengths.append(order[1])
        tasks.append(np.full(order.shape[1], index, np.int64))
        offsets.append(np.cumsum(order[1]) - order[1])
    key_all, length_all = np.concatenate(keys), np.concatenate(lengths)
    task_all, offset_all = np.concatenate(tasks), np.concatenate(offsets)
    if moved and moved[0] == "eval":
        keep = ~((task_all == moved[1]) & (offset_all == moved[2]))
        key_all, length_all, task_all, offset_all = (
            key_all[keep],
            length_all[keep],
            task_all[keep],
            offset_all[keep],
        )
    order_all = np.argsort(key_all, kind="stable")
    return task_all[order_all], offset_all[order_all], length_all[order_all]


def _write_eval(folder: Path, count: int, moved: _Moved | None, item: int, path: Path) -> int:
    """Writes the eval stream to ``path`` (a document moved from train, then every eval document in
    order-key order); returns its token count. At most :data:`_OPEN_SHARDS` shards are open at a time
    (unbuffered: each read is one document's range)."""
    task_all, offset_all, length_all = _eval_documents(folder, count, moved)
    sources: dict[int, Any] = {}
    try:
        with open(path, "wb") as out:
            if moved and moved[0] == "train":
                with open(shard_path(folder, moved[1], "train.tokens"), "rb") as source:
                    _copy_range(source, out, moved[2] * item, (moved[2] + moved[3]) * item)
            for task_id, offset_id, length_id in zip(task_all, offset_all, length_all, strict=True):
                task, offset, length = int(task_id), int(offset_id), int(length_id)
                if task not in sources:
                    if len(sources) >= _OPEN_SHARDS:  # the least recently opened goes
                        sources.pop(next(iter(sources))).close()
                    sources[task] = open(shard_path(folder, task, "eval.tokens"), "rb", buffering=0)  # noqa: SIM115
                _copy_range(sources[task], out, offset * item, (offset + length) * item)
            written = out.tell() // item
    finally:
        for source in sources.values():
            source.close()
    return written


def concatenate(
    folder: Path, count: int, dtype: np.dtype, directory: Path, names: Sequence[str]
) -> dict[str, int]:
    """Writes ``directory/{name}.tokens`` for every split in ``names``: the shards of that split of tasks
    ``0..count-1`` (all done) in task order; returns the token counts."""
    markers = [read_marker(folder, index, dtype) for index in range(count)]
    missing = [i for i, m in enumerate(markers) if m is None]
    if missing:
        raise UserError(f"token cache build {folder}: task {missing[0]} of {count} is not done")
    directory.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in names:
        tmp = directory / f".{name}.tokens.{os.getpid()}.tmp"
        with open(tmp, "wb") as out:
            for index, marker in enumerate(markers):
                assert marker is not None
                if name in marker["tokens"]:
                    with open(shard_path(folder, index, f"{name}.tokens"), "rb") as source:
                        _copy_range(source, out, 0, marker["tokens"][name] * dtype.itemsize)
            counts[name] = out.tell() // dtype.itemsize
        os.replace(tmp, directory / f"{name}.tokens")
    return counts


def write_key(directory: Path, key: dict, counts: dict[str, int]) -> None:
    """The cache's ``key.json`` (as :func:`codex_jax.data.cache.save` writes it), written last."""
    record = {"key": key, "tokens": {s: int(n) for s, n in counts.items()}}
    write_bytes_atomic(directory / "key.json", (json.dumps(record, indent=2) + "\n").encode())


def write_file_reports(folder: Path, count: int, path: Path) -> dict[str, int]:
    """Writes every file's report (tasks ``0..count-1``, in order) to ``path`` as JSON lines, one task at
    a time (a million-file corpus is never in memory at once); returns the totals."""
    totals = {"files": 0, "bytes": 0, "records": 0, "skipped": 0, "eval_records": 0}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as out:
        for index in range(count):
            for report in json.loads(marker_path(folder, index).read_text())["reports"]:
                report.pop("on_bad", None)
                out.write(json.dumps(report) + "\n")
                totals["files"] += 1
                for name in ("bytes", "records", "skipped", "eval_records"):
                    totals[name] += report[name]
    os.replace(tmp, path)
    return totals


def finish_files(directory: Path, key: dict, count: int) -> dict[str, int]:
    """Combines the ``count`` finished tasks of a files build into ``directory/{train,eval}.tokens``,
    writes ``directory/files.jsonl`` (one report per file) and the key, removes the build folder;
    returns the token counts."""
    folder = build_folder(directory, key)
    (directory / "key.json").unlink(missing_ok=True)
    counts = combine(folder, count, np.dtype(key["dtype"]), directory)
    write_file_reports(folder, count, directory / "files.jsonl")
    write_key(directory, key, counts)
    shutil.rmtree(folder, ignore_errors=True)
    return counts
