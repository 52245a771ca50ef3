"""The corpus manifest of a file source, read one file at a time: no process holds its texts or the list of
its files.

:func:`scan_corpus` reads every selected file once (checksum, records, the safety filter through a
``keep`` hook) and decides each document's split exactly as
:func:`~codex_jax.corpus.splits.split_documents` and :func:`~codex_jax.corpus.splits.corpus_manifest`
would over the whole corpus in memory: the same rows, totals and checksum. The per-file rows go to a
temporary JSON-lines file as they are made (:class:`FileRows` reads them back lazily); what stays in
memory is a few numbers per file at most. Along the way a :class:`HashSample` keeps the training
documents that the tokenizer is trained on (the lowest ``hash_fraction('tok:' + key)`` first, up to a
byte budget), as ``(file, document)`` positions to read again (:func:`sample_texts`).
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from codex_jax.corpus.listing import SourceFiles, path_hash
from codex_jax.corpus.records import FileReport
from codex_jax.corpus.source_spec import parse_source
from codex_jax.corpus.sources import BadRecords, check_bad_record_policy, file_documents
from codex_jax.corpus.splits import file_entry, hash_fraction, manifest_checksum
from codex_jax.errors import UserError

# keep(report, [(key, text)]) -> the records kept (redacted), the dropped ones counted in the report
Keep = Callable[[FileReport, list[tuple[str, str]]], list[tuple[str, str]]]


def line_bytes(text: str) -> int:
    """The bytes that :func:`~codex_jax.tokenizers.sentencepiece.training_lines` counts for ``text``: each
    non-empty line's UTF-8 bytes plus one."""
    data = text.encode("utf-8")
    if not data:
        return 0
    newline = np.frombuffer(data, np.uint8) == 10
    empty = int(np.count_nonzero(newline[1:] & newline[:-1])) + int(newline[0]) + int(newline[-1])
    return len(data) + 1 - empty  # each line and its newline, less the empty lines' newlines


class FileRows:
    """The manifest rows of a corpus's files, kept in a temporary JSON-lines file (deleted with this
    object) and read back one at a time; ``patches`` replace the rows at some indices."""

    def __init__(self, path: Path, count: int, patches: dict[int, dict[str, Any]] | None = None):
        self.path, self.count, self.patches = path, count, dict(patches or {})
        weakref.finalize(self, _remove, str(path))

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self.path.open() as lines:
            for index, line in enumerate(lines):
                yield self.patches.get(index) or json.loads(line)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.count <= index < self.count:
            raise IndexError(index)
        index %= self.count
        return next(row for i, row in enumerate(self) if i == index)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class HashSample:
    """The documents with the lowest sample hash whose bytes, in that order, reach ``budget``: what a
    reader taking documents in hash order until ``budget`` bytes uses. Kept as arrays of ``(hash,
    bytes, file, document)``; documents that can no longer be needed are dropped as more come, so the
    sample holds about ``budget`` bytes' worth of documents whatever the corpus size."""

    def __init__(self, budget: int, batch: int = 4_096):
        self.budget, self.batch = budget, batch
        self.largest = 0  # the largest document seen (one may still be taken out: see remove)
        self._arrays = np.zeros((4, 0), np.float64)  # hash, bytes, file, document
        self._new = array.array("d")  # the same, four numbers per document offered since

    def add(self, hash_value: float, size: int, file: int, document: int) -> None:
        """Offers one document."""
        self.largest = max(self.largest, size)
        self._new.extend((hash_value, size, file, document))
        if len(self._new) >= 4 * max(self.batch, self._arrays.shape[1]):
            self._compact()

    def remove(self, file: int, document: int) -> None:
        """Takes one document back out (moved to the other split). Whatever :meth:`_compact` dropped before
        had at least ``budget`` + :attr:`largest` bytes ahead of it, so it is still not needed."""
        self._compact()
        keep = ~((self._arrays[2] == file) & (self._arrays[3] == document))
        self._arrays = self._arrays[:, keep]

    def _compact(self) -> None:
        """Sorts by ``(hash, file, document)`` and drops what has ``budget + largest`` bytes ahead of it."""
        if self._new:
            new = np.frombuffer(self._new, np.float64).reshape(-1, 4).T
            self._arrays = np.concatenate([self._arrays, new], axis=1)
            self._new = array.array("d")
        a = self._arrays
        a = a[:, np.lexsort((a[3], a[2], a[0]))]
        ahead = np.cumsum(a[1]) - a[1]
        self._arrays = a[:, ahead < self.budget + self.largest]

    def chosen(self) -> tuple[np.ndarray, np.ndarray]:
        """``(files, documents)`` of the documents a reader needs, in hash order."""
        self._compact()
        a = self._arrays
        ahead = np.cumsum(a[1]) - a[1]
        a = a[:, ahead < self.budget]
        return a[2].astype(np.int64), a[3].astype(np.int64)


@dataclasses.dataclass
class _Extreme:
    """The document with the lowest (or highest) split hash so far, and where it is."""

    fraction: float
    row: int
    file: int
    document: int
    tok_hash: float
    size: int


@dataclasses.dataclass
class ScannedCorpus:
    """A file source read once: its manifest (``files`` is a :class:`FileRows`), the source's files
    (with ``data.eval_source``'s left out when it has one), the eval source's files, and the tokenizer's
    sample (:meth:`tokenizer_texts`)."""

    manifest: dict[str, Any]
    files: SourceFiles
    eval_files: SourceFiles | None
    sample: HashSample
    on_bad_record: str

    def tokenizer_texts(self, keep: Keep) -> Iterator[str]:
        """The training documents in ``hash_fraction('tok:' + key)`` order, as many as the sample's byte
        budget takes (read again, and filtered by ``keep`` as the scan's were)."""
        files, documents = self.sample.chosen()
        return sample_texts(self.files, files, documents, self.on_bad_record, keep)


def sample_texts(
    files: SourceFiles, file_ids: np.ndarray, document_ids: np.ndarray, on_bad: str, keep: Keep
) -> Iterator[str]:
    """The texts of documents ``(file_ids[i], document_ids[i])`` (positions in ``files``' listing and in
    their file, after ``keep``), in that order; only the files holding one are read."""
    wanted = set(np.unique(file_ids).tolist())
    texts: dict[tuple[int, int], str] = {}
    for file_id, path in enumerate(files.unskipped()):
        if file_id in wanted:
            report, records = file_documents(files.spec, path, files.root, on_bad)
            for document_id, (_, text) in enumerate(keep(report, records)):
                texts[(file_id, document_id)] = text
    for file_id, document_id in zip(file_ids.tolist(), document_ids.tolist(), strict=True):
        yield texts.pop((file_id, document_id))


class _RowWriter:
    """Writes manifest rows to a temporary JSON-lines file, one line each."""

    def __init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix="codex_jax_manifest.", suffix=".jsonl")
        self.path = Path(name)
        self.out = os.fdopen(fd, "w")
        self.count = 0
        self.totals = {"files": 0, "bytes": 0, "records": 0, "skipped": 0}

    def write(self, row: dict[str, Any]) -> int:
        """Writes ``row``; returns its index."""
        self.out.write(json.dumps(row) + "\n")
        self.totals["files"] += 1
        for name in ("bytes", "records", "skipped"):
            self.totals[name] += row[name]
        self.count += 1
        return self.count - 1

    def rows(self, patches: dict[int, dict[str, Any]]) -> FileRows:
        """The rows written, ``patches`` applied."""
        self.out.close()
        return FileRows(self.path, self.count, patches)


def _split_name(held_out: int, records: int) -> str:
    return "eval" if held_out == records else "mixed" if held_out else "train"


def scan_corpus(d, settings: dict[str, Any], keep: Keep, label: str = "") -> ScannedCorpus:
    """Reads the file source of the data section ``d`` (``source``, ``eval_source``, ``include``,
    ``exclude``, ``max_files``, ``eval_fraction``, ``on_bad_record``, ``tokenizer_train_bytes``) one file
    at a time; ``keep`` is the safety filter. The manifest's checksum covers
    ``settings`` and the rows, as :func:`~codex_jax.corpus.splits.corpus_manifest`'s does; a log line
    ``data: LABEL...`` says what was read."""
    started = time.perf_counter()
    check_bad_record_policy(d.on_bad_record)
    files = SourceFiles(parse_source(d.source), d.source, d.include, d.exclude, d.max_files)
    eval_files = None
    if d.eval_source:
        eval_files = SourceFiles(parse_source(d.eval_source), d.eval_source)
        files = files.without(np.fromiter((path_hash(p) for p in eval_files), np.uint64))
    writer, sample = _RowWriter(), HashSample(d.tokenizer_train_bytes)
    counts = {"documents": 0, "eval": 0, "overlap": 0}
    lowest, highest = _scan_source(d, files, eval_files is not None, keep, writer, sample, counts)
    if eval_files is not None:
        _scan_eval_source(d, eval_files, keep, writer, counts)
    patches = _never_empty(d, writer, counts, lowest, highest, sample)
    rows = writer.rows(patches)
    train = counts["documents"] - (0 if eval_files else counts["eval"])
    totals = {**writer.totals, "train_documents": train, "eval_documents": counts["eval"]}
    manifest = {
        **settings,
        "files": rows,
        "root": str(files.root),
        "eval_root": str(eval_files.root) if eval_files else "",
        "totals": totals,
        "checksum": manifest_checksum(settings, rows),
    }
    log_totals(label, totals, started)
    return ScannedCorpus(manifest, files, eval_files, sample, d.on_bad_record)


def _scan_source(
    d,
    files: SourceFiles,
    has_eval_source: bool,
    keep: Keep,
    writer: _RowWriter,
    sample: HashSample,
    counts: dict,
) -> tuple[_Extreme | None, _Extreme | None]:
    """Reads ``data.source``'s files (those of ``data.eval_source`` read, counted and filtered too, but left
    to it), writing one row per file and offering each training document to ``sample``; returns the train
    document of the lowest split hash and the held-out one of the highest (what the never-empty rule
    moves)."""
    lowest: _Extreme | None = None  # of the train documents (moved to eval when none is held out)
    highest: _Extreme | None = None  # of the eval documents (moved to train when all are held out)
    bad = BadRecords(d.source)
    for file_id, path in enumerate(files.unskipped()):
        report, records = file_documents(files.spec, path, files.root, d.on_bad_record)
        bad.note(report, len(records))
        records = keep(report, records)
        if files.skipped(path):  # read (counted, filtered) like the rest, then left to the eval source
            counts["overlap"] += 1
            continue
        row = writer.count
        held_out = 0
        for document_id, (key, text) in enumerate(records):
            fraction, tok_hash, size = hash_fraction(key), hash_fraction("tok:" + key), line_bytes(text)
            if not has_eval_source and fraction < d.eval_fraction:
                held_out += 1
                if highest is None or fraction > highest.fraction:
                    highest = _Extreme(fraction, row, file_id, document_id, tok_hash, size)
            else:
                sample.add(tok_hash, size, file_id, document_id)
                if lowest is None or fraction < lowest.fraction:
                    lowest = _Extreme(fraction, row, file_id, document_id, tok_hash, size)
        counts["documents"] += len(records)
        counts["eval"] += held_out
        split = "train" if has_eval_source else _split_name(held_out, report.records)
        writer.write(file_entry(report, "source", split, held_out))
    bad.finish()
    return lowest, highest


def log_totals(label: str, t: dict[str, Any], started: float) -> None:
    """The log line ``data: LABEL...`` of a corpus manifest's totals ``t`` (read since ``started``)."""
    print(
        f"data: {label}{t['files']} files, {t['bytes'] / 1e6:.1f} MB, {t['records']} documents "
        f"({t['eval_documents']} held out), {t['skipped']} skipped, read in "
        f"{time.perf_counter() - started:.1f} s",
        file=sys.stderr,
        flush=True,
    )


def _scan_eval_source(d, eval_files: SourceFiles, keep: Keep, writer: _RowWriter, counts: dict) -> None:
    """Reads ``data.eval_source`` (every document held out) after the source; UserError when the source
    has no document left for training."""
    bad = BadRecords(d.eval_source)
    for path in eval_files:
        report, records = file_documents(eval_files.spec, path, eval_files.root, d.on_bad_record)
        bad.note(report, len(records))
        records = keep(report, records)
        counts["eval"] += len(records)
        writer.write(file_entry(report, "eval_source", "eval", report.records))
    bad.finish()
    if counts["overlap"]:
        print(
            f"data: {counts['overlap']} file(s) of data.source are also in data.eval_source and are "
            "used for evaluation only",
            file=sys.stderr,
            flush=True,
        )
    if not counts["documents"]:
        raise UserError(
            "data.source has no documents left for training once the files of data.eval_source are held out"
        )
    if not counts["eval"]:
        raise UserError(
            f"the eval split has 0 tokens, fewer than data.seq_len+1={d.seq_len + 1}; use more data "
            "(data.max_files, data.eval_fraction) or a smaller data.seq_len"
        )


def _never_empty(
    d,
    writer: _RowWriter,
    counts: dict,
    lowest: _Extreme | None,
    highest: _Extreme | None,
    sample: HashSample,
) -> dict[int, dict[str, Any]]:
    """Applies :func:`~codex_jax.corpus.splits.split_documents`' rule (at least one document in each
    split) to the counts and the sample; returns the row patched (``{index: row}``), if any."""
    if d.eval_source:
        return {}
    if counts["documents"] < 2:
        raise UserError(
            f"data.source has {counts['documents']} usable document(s); at least 2 are needed to hold "
            "one out for evaluation"
        )
    moved, change = None, 0
    if not counts["eval"]:
        assert lowest is not None
        moved, change = lowest, 1
        sample.remove(lowest.file, lowest.document)
    elif counts["eval"] == counts["documents"]:
        assert highest is not None
        moved, change = highest, -1
        sample.add(highest.tok_hash, highest.size, highest.file, highest.document)
    if moved is None:
        return {}
    counts["eval"] += change
    writer.out.flush()
    with writer.path.open() as lines:
        row = json.loads(next(line for i, line in enumerate(lines) if i == moved.row))
    row["eval_records"] += change
    row["split"] = _split_name(row["eval_records"], row["records"])
    return {moved.row: row}
