"""Packed token streams: tokenize documents, join them with EOS, keep them as memmaps on disk.

``workdir/cache/`` holds ``{split}.tokens`` (raw uint16, or uint32 for vocabularies over 65,536)
and ``key.json``. The key names the corpus manifest checksum and the tokenizer checksum; a cache
whose key differs, or whose files are missing or of the wrong size, is rebuilt, never reused.
The streams do not depend on ``data.seq_len``: windows of any length are views of them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tqdm

from codex_jax import files
from codex_jax.data import cache_build, cache_shards
from codex_jax.errors import UserError
from codex_jax.files import write_bytes_atomic
from codex_jax.tokenizers.base import Tokenizer

CACHE_VERSION = 2
KEY_FILENAME = "key.json"
_CHUNK_CHARS = 4_000_000
_PROGRESS_MIN_CHARS = 8_000_000
_UPLOAD_ITEMS = 16 << 20  # tokens per piece of an upload


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def cache_key(corpus_checksum: str, tokenizer: Tokenizer) -> dict:
    """What a cache was built from; a cache is reused only when this matches exactly."""
    return {
        "version": CACHE_VERSION,
        "corpus_checksum": corpus_checksum,
        "tokenizer_checksum": tokenizer.checksum,
        "dtype": token_dtype(tokenizer.vocab_size).name,
    }


def pack(tokenizer: Tokenizer, texts: Sequence[str], desc: str = "", progress: bool = True) -> np.ndarray:
    """All texts tokenized (batch-encoded in chunks) into one stream, each followed by EOS.

    A progress bar goes to stderr when ``progress`` and the texts are large.
    """
    dtype = token_dtype(tokenizer.vocab_size)
    eos = np.asarray([tokenizer.eos_id], dtype=dtype)
    chunks = cache_build.text_ranges(texts, _CHUNK_CHARS)
    total = sum(size for _, _, size in chunks)
    show = progress and total >= _PROGRESS_MIN_CHARS
    pieces = [np.zeros((0,), dtype)]
    bar = tqdm.tqdm(
        total=total,
        unit="char",
        unit_scale=True,
        desc=f"tokenizing {desc}",
        file=sys.stderr,
        disable=not show,
        leave=False,
    )
    with bar:
        for start, stop, size in chunks:
            for ids in tokenizer.encode_batch(texts[start:stop]):
                pieces += [np.asarray(ids, dtype=dtype), eos]
            bar.update(size)
    return np.concatenate(pieces)


def stored_key(directory: Path) -> Any:
    """The parsed ``key.json`` of the cache in ``directory`` (None when missing or unreadable)."""
    try:
        return json.loads((directory / KEY_FILENAME).read_text())
    except (OSError, ValueError):
        return None


def load(directory: Path, key: dict) -> dict[str, np.ndarray] | None:
    """The cached streams (read-only memmaps) when ``directory`` holds them under ``key``."""
    return check(directory, key)[0]


def check(directory: Path, key: dict) -> tuple[dict[str, np.ndarray] | None, str]:
    """``(streams, '')`` when the cache in ``directory`` is valid for ``key``, else
    ``(None, why not)``. An ArrayRecord cache (:mod:`codex_jax.data.cache_shards`) is read into local
    streams; a missing or corrupt shard of it is a UserError."""
    try:
        stored = json.loads((directory / KEY_FILENAME).read_text())
    except FileNotFoundError:
        return None, "no cache yet"
    except (OSError, ValueError):
        return None, f"unreadable {KEY_FILENAME}"
    old = stored.get("key") if isinstance(stored, dict) else None
    if old != key:
        changed = [k for k in key if not isinstance(old, dict) or old.get(k) != key[k]]
        return None, "changed: " + ", ".join(k.replace("_", " ") for k in changed)
    if stored.get("format") == cache_shards.FORMAT:  # prepared by codex-jax prepare
        return cache_shards.open_streams(directory, stored), ""
    streams: dict[str, np.ndarray] = {}
    dtype = np.dtype(key["dtype"])
    for split, length in stored.get("tokens", {}).items():
        path = directory / f"{split}.tokens"
        if not path.is_file():
            return None, f"{path.name} is missing"
        if files.size(path) != length * dtype.itemsize or not length:
            size, expected = files.size(path), length * dtype.itemsize
            return None, f"{path.name} has {size} bytes, not {expected}"
        # a gs:// cache is memory-mapped from a local copy (files.local_copy)
        streams[split] = np.memmap(files.local_copy(path), dtype=dtype, mode="r", shape=(length,))
    return streams, ""


def save(directory: Path, key: dict, streams: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Writes the streams and then their key (the old key goes first); returns them as memmaps. A
    failed write (disk full, I/O error) is a UserError and leaves no key."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / KEY_FILENAME).unlink(missing_ok=True)
        for split, stream in streams.items():
            if files.is_remote(directory):  # one upload per stream: an object appears whole or not at all
                with (directory / f"{split}.tokens").open("wb") as out:
                    for start in range(0, len(stream), _UPLOAD_ITEMS):  # a memmap: a piece at a time
                        out.write(np.ascontiguousarray(stream[start : start + _UPLOAD_ITEMS]).tobytes())
                continue
            tmp = directory / f".{split}.tokens.{os.getpid()}.tmp"
            try:
                np.ascontiguousarray(stream).tofile(tmp)
            finally:
                if tmp.exists() and tmp.stat().st_size != stream.nbytes:  # cut short: not left behind
                    tmp.unlink()
            os.replace(tmp, directory / f"{split}.tokens")
        record: dict[str, Any] = {"key": key, "tokens": {s: int(len(a)) for s, a in streams.items()}}
        write_bytes_atomic(directory / KEY_FILENAME, (json.dumps(record, indent=2) + "\n").encode())
    except OSError as e:  # disk full, I/O error: no key is written, so the next run builds it again
        raise UserError(f"token cache {directory}: cannot write ({e.strerror or e})") from e
    loaded = load(directory, key)
    assert loaded is not None, f"token cache in {directory} did not read back"
    return loaded


def load_or_build(
    directory: Path,
    key: dict,
    tokenizer: Tokenizer,
    texts: Mapping[str, Sequence[str]],
    write: bool = True,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, np.ndarray]:
    """The token stream of every split in ``texts``: from the cache when its key matches, else
    tokenized now (and cached when ``write``).

    A local cache is built by :func:`codex_jax.data.cache_build.build_texts`: in ``workers``
    processes, resumably (a killed build continues where it stopped), the same bytes as :func:`pack`.
    """

    def build() -> dict[str, np.ndarray] | None:
        if write and cache_build.is_local(directory):
            try:
                cache_build.build_texts(directory, key, tokenizer, dict(texts), workers, progress=progress)
            except OSError as e:  # disk full, I/O error: no key is written
                raise UserError(f"token cache {directory}: cannot write ({e.strerror or e})") from e
            return None  # saved, key included
        return {split: pack(tokenizer, docs, split, progress) for split, docs in texts.items()}

    return load_or_build_streams(directory, key, list(texts), build, write)


def load_or_build_streams(
    directory: Path,
    key: dict,
    names: Sequence[str],
    build: Callable[[], dict[str, np.ndarray] | None],
    write: bool,
) -> dict[str, np.ndarray]:
    """The streams ``names`` from the cache when its key matches, else ``build()`` (cached when ``write``;
    a ``build`` that saved the cache itself returns None); every stream is stored in the key's dtype."""
    streams, why = check(directory, key)
    if streams is not None and set(streams) == set(names):
        print(f"data: reusing token cache {directory}", file=sys.stderr, flush=True)
        return streams
    if streams is not None:
        why = f"splits {sorted(streams)} differ from {sorted(names)}"
    print(f"data: building the token cache ({why})", file=sys.stderr, flush=True)
    started = time.perf_counter()
    built = build()
    saved = load(directory, key) if built is None else None
    assert built is not None or saved is not None, f"token cache in {directory} did not read back"
    streams = saved or {name: _as_dtype(s, key["dtype"]) for name, s in (built or {}).items()}
    seconds = time.perf_counter() - started
    sizes = ", ".join(f"{s} {len(a):,}" for s, a in streams.items())
    print(f"data: tokenized in {seconds:.1f} s ({sizes} tokens)", file=sys.stderr, flush=True)
    return save(directory, key, streams) if write and saved is None else streams


def _as_dtype(stream: np.ndarray, dtype: str) -> np.ndarray:
    """``stream`` in ``dtype``; a memmap of that dtype stays one (workers reopen it by path)."""
    return stream if stream.dtype == np.dtype(dtype) else np.asarray(stream, dtype=dtype)


def windows(stream: np.ndarray, window_len: int) -> np.ndarray:
    """Non-overlapping ``[N, window_len]`` windows of ``stream``; the tail is dropped.

    A memmap stream gives a memmap opened directly on its file (so worker processes can reopen
    it by path instead of copying it).
    """
    count = len(stream) // window_len
    if isinstance(stream, np.memmap) and stream.filename and count:
        return np.memmap(
            stream.filename,
            dtype=stream.dtype,
            mode="r",
            offset=stream.offset,
            shape=(count, window_len),
        )
    return np.asarray(stream[: count * window_len]).reshape(count, window_len)
