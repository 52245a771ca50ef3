"""A token cache kept as ArrayRecord shards (what ``codex-jax prepare`` writes), and how training opens it.

The folder holds ``{split}-NNNNN-of-MMMMM.array_record`` shards and ``key.json``. Every record is
:data:`RECORD_TOKENS` consecutive tokens of the split's stream (raw little-endian uint16/uint32; the
split's last record may be shorter), and the shards of a split in name order are the whole stream: the
same bytes as the in-process build's ``{split}.tokens``. ``key.json`` is the cache's key (as
:func:`codex_jax.data.cache.cache_key` makes it) plus ``"format": "array_record"``, each shard's name,
record count, token count and sha256, and the data settings it was prepared with.

The streams are laid out from the build's task shards (:mod:`codex_jax.data.cache_combine`) as
*segments* ``(task, split file, token offset, token count)``: :func:`plan_segments` decides them (the
same rules as :func:`~codex_jax.data.cache_combine.combine`), :func:`write_shard` writes one output
shard from them. Training opens the cache with :func:`open_streams`: each shard is checked (present,
its sha256) and read once into a local memory-mapped stream; nothing is tokenized again.
"""

from __future__ import annotations

import atexit
import bisect
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from codex_jax import files
from codex_jax.corpus.splits import SETTINGS
from codex_jax.data.cache_combine import eval_order, moved_document
from codex_jax.errors import UserError

FORMAT = "array_record"
RECORD_TOKENS = 1 << 15  # tokens per record (64 KiB of uint16)
SHARD_TOKENS = 1 << 26  # tokens per shard by default (128 MiB of uint16)
_READ_RECORDS = 256  # records read at a time when a shard is opened

# (task, split file of that task: 'train' or 'eval', offset in tokens, length in tokens)
Segment = tuple[int, str, int, int]


def plan_segments(markers: Sequence[dict], orders: Sequence[np.ndarray]) -> dict[str, list[Segment]]:
    """The segments of every split's stream, from the tasks' markers (``tokens``, ``extremes``) and eval
    order arrays in task order: ``train`` is the tasks' train tokens in task order, ``eval`` the eval
    documents in order-key order, with the never-empty split rule, as
    :func:`~codex_jax.data.cache_combine.combine` writes them."""
    moved = moved_document(list(markers))
    train: list[Segment] = []
    for index, marker in enumerate(markers):
        count = marker["tokens"]["train"]
        if moved and moved[0] == "train" and moved[1] == index:
            train += [(index, "train", 0, moved[2]), (index, "train", moved[2] + moved[3], count)]
        elif count:
            train.append((index, "train", 0, count))
    evals: list[Segment] = []
    if moved and moved[0] == "eval":
        train.append((moved[1], "eval", moved[2], moved[2] + moved[3]))
    if moved and moved[0] == "train":
        evals.append((moved[1], "train", moved[2], moved[2] + moved[3]))
    tasks, offsets, lengths = eval_order(orders, moved)
    for task, offset, length in zip(tasks.tolist(), offsets.tolist(), lengths.tolist(), strict=True):
        evals.append((task, "eval", offset, offset + length))
    # as (task, file, start, stop) above; stored as (task, file, offset, length)
    return {
        "train": [(t, f, a, b - a) for t, f, a, b in train if b > a],
        "eval": [(t, f, a, b - a) for t, f, a, b in evals if b > a],
    }


def split_tokens(segments: Sequence[Segment]) -> int:
    """The token count of the stream made of ``segments``."""
    return sum(length for _, _, _, length in segments)


def shard_ranges(total: int, shard_tokens: int = SHARD_TOKENS) -> list[tuple[int, int]]:
    """``[start, stop)`` token ranges of a stream's shards: ``shard_tokens`` (rounded up to whole
    records) each, at least one shard."""
    step = max(RECORD_TOKENS, -(-shard_tokens // RECORD_TOKENS) * RECORD_TOKENS)
    return [(a, min(a + step, total)) for a in range(0, total, step)] or [(0, 0)]


def shard_name(split: str, index: int, count: int) -> str:
    """``{split}-NNNNN-of-MMMMM.array_record``."""
    return f"{split}-{index:05d}-of-{count:05d}.{FORMAT}"


def range_bytes(
    segments: Sequence[Segment],
    start: int,
    stop: int,
    itemsize: int,
    open_task_file: Callable[[int, str], BinaryIO],
) -> Iterator[bytes]:
    """The bytes of tokens ``[start, stop)`` of the stream made of ``segments``, a piece at a time;
    ``open_task_file(task, split)`` opens a task's ``{split}.tokens`` shard (opened once each here)."""
    starts = np.cumsum([0] + [length for *_, length in segments]).tolist()
    first = max(0, bisect.bisect_right(starts, start) - 1)
    opened: dict[tuple[int, str], BinaryIO] = {}
    try:
        for index in range(first, len(segments)):
            if starts[index] >= stop:
                break
            task, split, offset, length = segments[index]
            a = max(start, starts[index]) - starts[index]
            b = min(stop, starts[index] + length) - starts[index]
            if (task, split) not in opened:
                opened[(task, split)] = open_task_file(task, split)
            source = opened[(task, split)]
            source.seek((offset + a) * itemsize)
            left = (b - a) * itemsize
            while left > 0:
                chunk = source.read(min(left, 8 << 20))
                if not chunk:
                    raise UserError(f"token cache build: task {task}'s {split} shard is shorter than planned")
                left -= len(chunk)
                yield chunk
    finally:
        for f in opened.values():
            f.close()


def write_shard(path: Path, pieces: Iterator[bytes], itemsize: int) -> dict[str, Any]:
    """Writes ``pieces`` (a stream's bytes) to the local ArrayRecord file ``path`` as records of
    :data:`RECORD_TOKENS` tokens; returns ``{'records', 'tokens', 'sha256'}`` of the file."""
    from array_record.python.array_record_module import ArrayRecordWriter

    record_bytes = RECORD_TOKENS * itemsize
    writer = ArrayRecordWriter(os.fspath(path), "group_size:1")
    records = written = 0
    buffer = bytearray()
    try:
        for piece in pieces:
            buffer += piece
            while len(buffer) >= record_bytes:
                writer.write(bytes(buffer[:record_bytes]))
                del buffer[:record_bytes]
                records, written = records + 1, written + record_bytes
        if buffer:
            writer.write(bytes(buffer))
            records, written = records + 1, written + len(buffer)
    finally:
        writer.close()
    return {"records": records, "tokens": written // itemsize, "sha256": files.sha256_file(path)}


def key_record(
    key: dict, shards: dict[str, list[dict[str, Any]]], settings: dict[str, Any], prepared_by: str
) -> dict[str, Any]:
    """The ``key.json`` of an ArrayRecord cache (shards in name order per split)."""
    tokens = {split: sum(s["tokens"] for s in shards[split]) for split in shards}
    return {
        "key": key,
        "tokens": tokens,
        "format": FORMAT,
        "record_tokens": RECORD_TOKENS,
        "shards": shards,
        "settings": settings,
        "prepared_by": prepared_by,
    }


def prepared_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The data settings recorded with a prepared cache (to name what differs when one is refused)."""
    settings = {k: manifest.get(k) for k in SETTINGS}
    safety = manifest.get("safety") or {}
    settings["safety_policy"] = safety.get("policy") if isinstance(safety, dict) else None
    settings["on_bad_record"] = manifest.get("on_bad_record")
    return settings


def refuse_other(directory: Path, stored: Any, key: dict, manifest: dict[str, Any]) -> None:
    """A UserError when ``stored`` (a ``key.json``) is a prepared ArrayRecord cache built under another key
    than ``key``, naming what differs (data settings, the corpus's files, the tokenizer)."""
    if not isinstance(stored, dict) or stored.get("format") != FORMAT or stored.get("key") == key:
        return
    old, new = stored.get("settings") or {}, prepared_settings(manifest)
    diffs = [f"data.{k}={old.get(k)!r} there, {new[k]!r} here" for k in new if old.get(k) != new[k]]
    old_key = stored.get("key") or {}
    if old_key.get("tokenizer_checksum") != key["tokenizer_checksum"]:
        diffs.append("another tokenizer")
    if old_key.get("dtype") != key["dtype"]:
        diffs.append(f"token dtype {old_key.get('dtype')} there, {key['dtype']} here")
    if not diffs:
        diffs.append("the corpus's files or records changed (corpus checksum)")
    raise UserError(
        f"the token cache in {directory} was prepared (codex-jax prepare) for other data: "
        f"{'; '.join(diffs)}; prepare it again with this config, or remove it to build in-process"
    )


def open_streams(directory: Path, stored: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every split's stream of the ArrayRecord cache in ``directory`` (``stored``: its ``key.json``),
    read once into local memory-mapped files (removed when this process exits); a UserError naming the
    shard when one is missing, corrupt or of the wrong length."""
    dtype = np.dtype(stored["key"]["dtype"])
    local = Path(tempfile.mkdtemp(prefix="codex_jax_shards."))
    atexit.register(shutil.rmtree, local, True)
    streams: dict[str, np.ndarray] = {}
    for split, shards in stored["shards"].items():
        path = local / f"{split}.tokens"
        with open(path, "wb") as out:
            for shard in shards:
                _copy_shard(directory / shard["name"], shard, out, dtype)
        length = path.stat().st_size // dtype.itemsize
        if length != stored["tokens"][split] or not length:
            raise UserError(
                f"token cache {directory}: the {split} shards hold {length} tokens, "
                f"not {stored['tokens'][split]}"
            )
        streams[split] = np.memmap(path, dtype=dtype, mode="r", shape=(length,))
    return streams


def _copy_shard(path: Path, shard: dict[str, Any], out: BinaryIO, dtype: np.dtype) -> None:
    """Appends the tokens of one checked shard to ``out``."""
    from array_record.python.array_record_module import ArrayRecordReader

    where = f"token cache shard {path}"
    if not path.exists():
        raise UserError(f"{where} is missing; prepare the cache again (codex-jax prepare)")
    local = files.local_copy(path)
    if files.sha256_file(local) != shard["sha256"]:
        raise UserError(f"{where} is corrupt (its sha256 differs from key.json); prepare the cache again")
    try:
        reader = ArrayRecordReader(os.fspath(local))
        try:
            count = reader.num_records()
            if count != shard["records"]:
                raise UserError(f"{where} has {count} records, not {shard['records']}")
            written = 0
            for first in range(0, count, _READ_RECORDS):
                for record in reader.read(list(range(first, min(first + _READ_RECORDS, count)))):
                    out.write(record)
                    written += len(record)
        finally:
            reader.close()
    except RuntimeError as e:
        raise UserError(
            f"{where} is not a readable ArrayRecord file ({' '.join(str(e).split())[:200]})"
        ) from None
    if written != shard["tokens"] * dtype.itemsize:
        raise UserError(f"{where} holds {written // dtype.itemsize} tokens, not {shard['tokens']}")
