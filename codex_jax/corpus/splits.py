"""The held-out split (by a hash of each document's key, or ``data.eval_source``) and the corpus
manifest.

A document's key is its file's relative path (text sources) or ``path:line`` (JSONL/CSV records),
so a text file is never in both splits and the split does not change between runs or machines.
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from codex_jax.corpus.records import FileReport
from codex_jax.corpus.sources import Corpus, Document
from codex_jax.errors import UserError
from codex_jax.files import AnyPath, is_remote

# The data.* settings that decide the documents and their split (recorded in the manifest).
SETTINGS = ("source", "eval_source", "include", "exclude", "max_files", "eval_fraction")


def hash_fraction(key: str) -> float:
    """A deterministic number in [0, 1) from the sha256 of ``key``."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) / 2**64


def split_documents(documents: list[Document], eval_fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, eval) documents: eval when ``hash_fraction(key) < eval_fraction``.

    At least one document lands in each split (the lowest hash is moved to eval, the highest to
    train when a split would be empty); UserError when there are fewer than two documents.
    """
    if len(documents) < 2:
        raise UserError(
            f"data.source has {len(documents)} usable document(s); at least 2 are needed to hold "
            "one out for evaluation"
        )
    fractions = [hash_fraction(d.key) for d in documents]
    is_eval = [f < eval_fraction for f in fractions]
    if not any(is_eval):
        is_eval[min(range(len(documents)), key=fractions.__getitem__)] = True
    if all(is_eval):
        is_eval[max(range(len(documents)), key=fractions.__getitem__)] = False
    train = [d for d, e in zip(documents, is_eval, strict=True) if not e]
    held_out = [d for d, e in zip(documents, is_eval, strict=True) if e]
    return train, held_out


def without_files(corpus: Corpus, other: Corpus) -> tuple[Corpus, int]:
    """``corpus`` less the files that ``other`` also reads (same file on disk), and how many."""
    taken = {os.path.realpath(r.location) for r in other.files}
    gone = {r.path for r in corpus.files if os.path.realpath(r.location) in taken}
    if not gone:
        return corpus, 0
    files = [r for r in corpus.files if r.path not in gone]
    documents = [d for d in corpus.documents if d.file not in gone]
    return dataclasses.replace(corpus, files=files, documents=documents), len(gone)


def file_entry(r: FileReport, origin: str, split: str, eval_records: int) -> dict[str, Any]:
    """The manifest row of one file read from ``origin`` (``'source'``/``'eval_source'``): ``split`` is
    ``'none'`` when it gave no record."""
    return {
        "path": r.path,
        "from": origin,
        "bytes": r.bytes,
        "sha256": r.sha256,
        "records": r.records,
        "skipped": r.skipped,
        "split": split if r.records else "none",
        "eval_records": eval_records,
        "bad": r.bad,
    }


def corpus_manifest(
    corpus: Corpus,
    eval_docs: list[Document],
    settings: dict[str, Any],
    eval_corpus: Corpus | None = None,
) -> dict[str, Any]:
    """Settings, per-file records (bytes, sha256, records, skipped, split), totals and checksum.

    Files of ``eval_corpus`` (``data.eval_source``) are all eval and marked ``"from":
    "eval_source"``. ``checksum`` covers everything that decides the documents and their split,
    so it changes whenever the token cache must be rebuilt (it leaves out the machine-specific
    roots).
    """
    files = []
    if eval_corpus is None:
        eval_count: dict[str, int] = {}
        for d in eval_docs:
            eval_count[d.file] = eval_count.get(d.file, 0) + 1
        for r in corpus.files:
            held_out = eval_count.get(r.path, 0)
            split = "eval" if held_out == r.records else "mixed" if held_out else "train"
            files.append(file_entry(r, "source", split, held_out))
    else:
        files += [file_entry(r, "source", "train", 0) for r in corpus.files]
        files += [file_entry(r, "eval_source", "eval", r.records) for r in eval_corpus.files]
    body = {**settings, "files": files}
    checksum = manifest_checksum(settings, files)
    totals = {
        "files": len(files),
        "bytes": sum(f["bytes"] for f in files),
        "records": sum(f["records"] for f in files),
        "skipped": sum(f["skipped"] for f in files),
        "train_documents": len(corpus.documents) - (0 if eval_corpus else len(eval_docs)),
        "eval_documents": len(eval_docs),
    }
    roots = {"root": corpus.root, "eval_root": eval_corpus.root if eval_corpus else ""}
    return {**body, **roots, "totals": totals, "checksum": checksum}


def manifest_checksum(settings: dict[str, Any], files: Iterable[dict[str, Any]]) -> str:
    """The sha256 of ``json.dumps({**settings, "files": list(files)}, sort_keys=True)``, computed one row
    at a time (the rows need not be in memory together)."""
    text = json.dumps({**settings, "files": []}, sort_keys=True)
    head, tail = text.split('"files": []', 1)  # a JSON string escapes its quotes: one match only
    digest = hashlib.sha256((head + '"files": [').encode())
    for index, row in enumerate(files):
        digest.update(((", " if index else "") + json.dumps(row, sort_keys=True)).encode())
    digest.update(("]" + tail).encode())
    return digest.hexdigest()


def write_manifest(path: AnyPath, manifest: dict[str, Any]) -> None:
    """Writes ``manifest`` as indented JSON with one line per file, row by row (its ``files`` may be a
    lazy sequence), atomically (a temporary file and a rename; one upload on a bucket)."""
    head, tail = json.dumps({**manifest, "files": "FILES"}, indent=2).split('"files": "FILES"', 1)
    target = path if is_remote(path) else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w") as out:
        out.write(head + '"files": [\n')
        for index, row in enumerate(manifest["files"]):
            out.write((",\n" if index else "") + "    " + json.dumps(row))
        out.write("\n  ]" + tail + "\n")
    if target != path:
        os.replace(target, path)


class _ManifestRows:
    """The ``files`` rows of a manifest file written by :func:`write_manifest`, read one line at a time."""

    def __init__(self, path: AnyPath):
        self.path = path

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self.path.open() as lines:
            for line in lines:
                if line == _ROWS_START:
                    break
            for line in lines:
                row = line.strip().rstrip(",")
                if row in ("]", ""):
                    return
                yield json.loads(row)


_ROWS_START = '  "files": [\n'


def read_manifest(path: AnyPath) -> dict[str, Any] | None:
    """The manifest in ``path`` with its ``files`` rows read lazily (a million-file manifest is never in
    memory at once), or None when it is missing or not a manifest."""
    try:
        with path.open() as lines:
            head = []
            for line in lines:
                if line == _ROWS_START:
                    break
                head.append(line)
            else:  # not written by write_manifest: small, or not a manifest
                return _loaded("".join(head))
            closing = ""
            for line in lines:
                if line.strip() in ("]", "],"):
                    closing = line
                    break
            rest = "".join(lines)
    except (OSError, UnicodeDecodeError):
        return None
    text = "".join(head) + '  "files": []' + (",\n" if closing.strip() == "]," else "\n") + rest
    manifest = _loaded(text)
    if manifest is not None:
        manifest["files"] = _ManifestRows(path)
    return manifest


def _loaded(text: str) -> dict[str, Any] | None:
    """The JSON object in ``text``, or None."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _file_keys(files: Iterable[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, contents)``: 64-bit hashes of every row's ``(from, path)`` and the first 64 bits of its
    sha256, sorted by key (one row per key, the last as in a dict)."""
    keys, contents = array.array("Q"), array.array("Q")
    for f in files:
        key = f"{f.get('from', 'source')}\0{f['path']}"
        keys.append(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))
        contents.append(int(str(f["sha256"])[:16] or "0", 16))
    key_array, content_array = np.frombuffer(keys, np.uint64), np.frombuffer(contents, np.uint64)
    last = len(key_array) - 1 - np.unique(key_array[::-1], return_index=True)[1]
    return key_array[last], content_array[last]


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What changed between two manifests' corpora, in one line; None when nothing did. The files are
    compared as arrays of 64-bit hashes (their rows may be lazy: never all in memory)."""
    if old.get("checksum") == new["checksum"]:
        return None
    before_keys, before = _file_keys(old.get("files", []))
    after_keys, after = _file_keys(new.get("files", []))
    _, in_before, in_after = np.intersect1d(before_keys, after_keys, assume_unique=True, return_indices=True)
    added = len(after_keys) - len(in_after)
    removed = len(before_keys) - len(in_before)
    changed = int((before[in_before] != after[in_after]).sum())
    parts = [f"{added} file(s) added, {removed} removed, {changed} changed"]
    settings = [k for k, v in new.items() if k in SETTINGS and old.get(k) != v]
    if settings:
        parts.append("settings changed: " + ", ".join(f"data.{k}" for k in settings))
    elif not (added or removed or changed):
        parts.append("records or splits changed")
    return "; ".join(parts)
