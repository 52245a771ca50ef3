"""The held-out split (by a hash of each document's key) and the corpus manifest.

A document's key is its file's relative path (text sources) or ``path:line`` (JSONL/CSV records),
so a text file is never in both splits and the split does not change between runs or machines.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from codex_jax.data.sources import Corpus, Document
from codex_jax.errors import UserError


def hash_fraction(key: str) -> float:
    """A deterministic number in [0, 1) from the sha256 of ``key``."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) / 2**64


def split_documents(
    documents: list[Document], eval_fraction: float
) -> tuple[list[Document], list[Document]]:
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


def corpus_manifest(
    corpus: Corpus, eval_docs: list[Document], max_files: int, eval_fraction: float
) -> dict[str, Any]:
    """Source, per-file records (bytes, sha256, records, skipped, split), totals and a checksum.

    ``checksum`` covers everything that decides the documents and their split, so it changes
    whenever the token cache must be rebuilt (it leaves out the machine-specific root).
    """
    eval_count: dict[str, int] = {}
    for d in eval_docs:
        eval_count[d.file] = eval_count.get(d.file, 0) + 1
    files = []
    for r in corpus.files:
        held_out = eval_count.get(r.path, 0)
        split = "none" if not r.records else "eval" if held_out == r.records else "train"
        if 0 < held_out < r.records:
            split = "mixed"
        files.append(
            {
                "path": r.path,
                "bytes": r.bytes,
                "sha256": r.sha256,
                "records": r.records,
                "skipped": r.skipped,
                "split": split,
                "eval_records": held_out,
                "bad": r.bad,
            }
        )
    body = {
        "source": corpus.source,
        "max_files": max_files,
        "eval_fraction": eval_fraction,
        "files": files,
    }
    checksum = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    totals = {
        "files": len(files),
        "bytes": sum(f["bytes"] for f in files),
        "records": sum(f["records"] for f in files),
        "skipped": sum(f["skipped"] for f in files),
        "train_documents": len(corpus.documents) - len(eval_docs),
        "eval_documents": len(eval_docs),
    }
    return {**body, "root": corpus.root, "totals": totals, "checksum": checksum}
