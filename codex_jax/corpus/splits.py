"""The held-out split (by a hash of each document's key, or ``data.eval_source``) and the corpus
manifest.

A document's key is its file's relative path (text sources) or ``path:line`` (JSONL/CSV records),
so a text file is never in both splits and the split does not change between runs or machines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

from codex_jax.corpus.records import FileReport
from codex_jax.corpus.sources import Corpus, Document
from codex_jax.errors import UserError

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


def _file_entry(r: FileReport, origin: str, split: str, eval_records: int) -> dict[str, Any]:
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
            files.append(_file_entry(r, "source", split, held_out))
    else:
        files += [_file_entry(r, "source", "train", 0) for r in corpus.files]
        files += [_file_entry(r, "eval_source", "eval", r.records) for r in eval_corpus.files]
    body = {**settings, "files": files}
    checksum = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
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


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What changed between two manifests' corpora, in one line; None when nothing did."""
    if old.get("checksum") == new["checksum"]:
        return None

    def by_key(manifest):
        files = manifest.get("files", [])
        return {(f.get("from", "source"), f["path"]): f["sha256"] for f in files}

    before, after = by_key(old), by_key(new)
    added = len(after.keys() - before.keys())
    removed = len(before.keys() - after.keys())
    changed = sum(before[k] != after[k] for k in before.keys() & after.keys())
    parts = [f"{added} file(s) added, {removed} removed, {changed} changed"]
    settings = [k for k, v in new.items() if k in SETTINGS and old.get(k) != v]
    if settings:
        parts.append("settings changed: " + ", ".join(f"data.{k}" for k in settings))
    elif not (added or removed or changed):
        parts.append("records or splits changed")
    return "; ".join(parts)
