"""Training SentencePiece models: from files (``codex-jax tokenizer train``) or for a run.

:func:`train_from_inputs` streams the lines of its inputs (globs, ``'stdlib'``, ``jsonl:``/
``csv:`` sources; one file in memory at a time) into the trainer, optionally a seeded sample of
``max_sentences`` of them, and writes ``spm.model`` + ``manifest.json``. :func:`load_or_train`
gives a run its tokenizer: a given one, the workdir's, or one trained on the training split.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from codex_jax.corpus.records import FileReport
from codex_jax.corpus.source_spec import SourceSpec
from codex_jax.corpus.sources import read_file, source_files, warn_bad_records
from codex_jax.errors import UserError
from codex_jax.files import as_path, write_bytes_atomic
from codex_jax.tokenizers.sentencepiece import (
    MODEL_FILENAME,
    TRAINER_OPTIONS,
    TRAINER_SEED,
    SentencePieceTokenizer,
    train_model,
    trainer_options,
    training_lines,
)

MANIFEST_FILENAME = "manifest.json"


def resolve_inputs(inputs: list[str]) -> list[tuple[str, SourceSpec, Path, Path]]:
    """``(input, spec, root, file)`` for every file of ``inputs`` in order, each file once."""
    if not inputs:
        raise UserError("no --input given")
    out, seen = [], set()
    for source in inputs:
        spec, root, files = source_files(source, what="--input")
        for path in files:
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                out.append((source, spec, root, path))
    return out


def _lines(files, reports: list[FileReport] | None) -> Iterator[str]:
    """The non-empty lines of every document of ``files`` (reports appended when given)."""
    for _, spec, root, path in files:
        report, records = read_file(spec, path, root)
        if reports is not None:
            reports.append(report)
        for _, text in records:
            report.records += 1
            yield from (line for line in text.split("\n") if line)


def _sampled(lines: Iterable[str], chosen: list[int]) -> Iterator[str]:
    """The lines at the sorted positions ``chosen`` (all lines are read: files get checksums)."""
    want = iter(chosen)
    target = next(want, None)
    for index, line in enumerate(lines):
        if index == target:
            yield line
            target = next(want, None)


def _input_reports(inputs: list[str], files, reports: list[FileReport]) -> list[dict[str, Any]]:
    """The manifest's ``inputs``: each input's files (path, size, checksum, records); warns on
    stderr about the bad records of each input."""
    by_input: dict[str, list[dict[str, Any]]] = {source: [] for source in inputs}
    for (source, *_), r in zip(files, reports, strict=True):
        by_input[source].append(
            {
                "path": r.location,
                "bytes": r.bytes,
                "sha256": r.sha256,
                "records": r.records,
                "skipped": r.skipped,
            }
        )
    for source in inputs:
        warn_bad_records(source, [r for (s, *_), r in zip(files, reports, strict=True) if s == source])
    return [{"input": s, "files": by_input[s]} for s in inputs]


def train_from_inputs(
    inputs: list[str],
    out: str | os.PathLike,
    vocab_size: int,
    model_type: str = "bpe",
    max_sentences: int = 0,
    seed: int = TRAINER_SEED,
) -> tuple[SentencePieceTokenizer, dict[str, Any]]:
    """Trains on the lines of ``inputs`` and writes ``out/spm.model`` and ``out/manifest.json``.

    With ``max_sentences`` > 0 and more lines than that, a first pass counts the lines and a
    seeded sample of ``max_sentences`` of them (in file order) is used. The same inputs, options
    and seed always give the same model bytes.
    """
    if max_sentences < 0:
        raise UserError(f"--max-sentences must be >= 0, got {max_sentences}")
    files = resolve_inputs(inputs)
    total = sum(1 for _ in _lines(files, None)) if max_sentences else None
    reports: list[FileReport] = []
    fed = 0

    def sentences() -> Iterator[str]:
        nonlocal fed
        lines = _lines(files, reports)
        if total is not None and total > max_sentences:
            lines = _sampled(lines, sorted(random.Random(seed).sample(range(total), max_sentences)))
        for line in lines:
            fed += 1
            yield line

    started = time.perf_counter()
    try:
        tok = train_model(sentences(), vocab_size, model_type, seed, vocab_flag="--vocab-size")
    except UserError:
        if fed == 0:
            raise UserError(
                f"no training text in {' '.join(inputs)}: {len(reports)} file(s), all empty or unreadable"
            ) from None
        raise
    manifest = {
        "sha256": tok.checksum,
        "vocab_size": tok.vocab_size,
        "model_type": model_type,
        "seed": seed,
        "max_sentences": max_sentences,
        "sentences": fed,
        "train_seconds": round(time.perf_counter() - started, 3),
        "inputs": _input_reports(inputs, files, reports),
        "options": {**TRAINER_OPTIONS, "model_type": model_type, "vocab_size": vocab_size},
        "sentencepiece_version": spm.__version__,
    }
    write_model(tok, as_path(out), manifest)
    return tok, manifest


def write_model(tok: SentencePieceTokenizer, directory: Path, manifest: dict[str, Any]) -> None:
    """Writes ``spm.model`` and then ``manifest.json`` into ``directory`` (atomically each)."""
    tok.save(directory)
    text = json.dumps(manifest, indent=2, ensure_ascii=True) + "\n"
    write_bytes_atomic(directory / MANIFEST_FILENAME, text.encode())


def load_or_train(
    tokenizer_path: str,
    directory: Path,
    vocab_size: int,
    train_texts: Callable[[], Iterable[str]],
    max_train_bytes: int,
    write: bool = True,
    symbols: Sequence[str] = (),
) -> SentencePieceTokenizer:
    """The tokenizer of a run: ``tokenizer_path``, else ``directory``'s, else a newly trained one.

    A given model may have at most ``vocab_size`` pieces; one found in ``directory`` must have
    exactly ``vocab_size``. A new BPE model is trained on ``train_texts()`` (at most
    ``max_train_bytes``; ``symbols`` become single pieces) and, when ``write``, saved to ``directory``
    with a ``manifest.json``.
    """
    if tokenizer_path:
        tok = SentencePieceTokenizer.load(tokenizer_path)
        if tok.vocab_size > vocab_size:
            raise UserError(
                f"data.tokenizer {tokenizer_path} has {tok.vocab_size} pieces, more than "
                f"model.vocab_size={vocab_size}; raise model.vocab_size"
            )
        return tok
    if (directory / MODEL_FILENAME).is_file():
        return _load_trained(directory, vocab_size)
    lines = list(training_lines(train_texts(), max_train_bytes))
    num_bytes = sum(len(line.encode("utf-8")) + 1 for line in lines)
    print(
        f"tokenizer: training BPE ({vocab_size} pieces) on {num_bytes / 1e6:.1f} MB ...",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    tok = train_model(lines, vocab_size, symbols=symbols)
    seconds = time.perf_counter() - start
    print(f"tokenizer: trained in {seconds:.1f} s", file=sys.stderr, flush=True)
    if write:
        manifest = {
            "sha256": tok.checksum,
            "vocab_size": tok.vocab_size,
            "model_type": "bpe",
            "train_bytes": num_bytes,
            "train_lines": len(lines),
            "train_seconds": round(seconds, 3),
            "seed": TRAINER_SEED,
            "options": {**trainer_options("bpe", symbols), "vocab_size": vocab_size},
            "sentencepiece_version": spm.__version__,
        }
        write_model(tok, directory, manifest)
    return tok


def _load_trained(directory: Path, vocab_size: int) -> SentencePieceTokenizer:
    """The model an earlier run trained into ``directory``, checked against manifest and size."""
    tok = SentencePieceTokenizer.load(directory)
    manifest_path = directory / MANIFEST_FILENAME
    if manifest_path.is_file():
        expected = json.loads(manifest_path.read_text()).get("sha256")
        if expected != tok.checksum:
            raise UserError(
                f"{directory / MODEL_FILENAME} does not match the sha256 in {manifest_path}; "
                f"delete {directory} to retrain the tokenizer"
            )
    if tok.vocab_size != vocab_size:
        raise UserError(
            f"the tokenizer in {directory} has {tok.vocab_size} pieces but "
            f"model.vocab_size={vocab_size}; delete {directory} to retrain it, or set "
            f"model.vocab_size={tok.vocab_size}"
        )
    return tok
