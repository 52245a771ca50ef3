"""A SentencePiece tokenizer for code: lossless BPE training, loading and fast batch encoding.

The trainer options keep code exactly: identity normalisation, no dummy prefix, runs of spaces
kept and allowed to become single pieces (4 or 8 spaces of indentation are one token), ``'\\n'``
a piece of its own, and byte fallback so any text encodes: ``decode(encode(text)) == text``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from codex_jax.errors import UserError

MODEL_FILENAME = "spm.model"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
TRAINER_SEED = 0

# Fixed options: the same text always trains byte-identical model files (the thread count is
# stored in the model, so it is fixed too; it does not change the pieces).
TRAINER_OPTIONS: dict[str, Any] = {
    "model_type": "bpe",
    "byte_fallback": True,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": False,
    "allow_whitespace_only_pieces": True,
    "split_by_whitespace": True,
    "split_digits": False,
    "user_defined_symbols": ["\n"],
    "character_coverage": 0.9995,
    "unk_id": UNK_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
    "pad_id": PAD_ID,
    "max_sentence_length": 16384,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "hard_vocab_limit": True,
    "num_threads": 8,
}


def sha256_hex(data: bytes) -> str:
    """The sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


class SentencePieceTokenizer:
    """Text <-> token ids with a SentencePiece model held in memory."""

    def __init__(self, model_bytes: bytes):
        self._model_bytes = model_bytes
        self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self._checksum = sha256_hex(model_bytes)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        """Loads a ``.model`` file, or ``spm.model`` in a directory; UserError when missing/bad."""
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_FILENAME
        if not path.is_file():
            raise UserError(f"tokenizer model not found: {path}")
        try:
            return cls(path.read_bytes())
        except (RuntimeError, OSError) as e:
            raise UserError(f"cannot load SentencePiece model {path}: {e}") from None

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes the model to ``directory/spm.model`` (atomically); returns its path."""
        path = Path(directory) / MODEL_FILENAME
        write_bytes_atomic(path, self._model_bytes)
        return path

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Token ids of every text, encoded by SentencePiece's thread pool (-1: all cores)."""
        return self._sp.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; control ids (BOS/EOS/PAD) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        """The piece string of one id (for debugging and tests)."""
        return self._sp.id_to_piece(int(token_id))

    @property
    def vocab_size(self) -> int:
        """Number of pieces (ids are in ``[0, vocab_size)``)."""
        return self._sp.vocab_size()

    @property
    def eos_id(self) -> int:
        """End-of-document id (-1 when the model has none)."""
        return self._sp.eos_id()

    @property
    def bos_id(self) -> int:
        """Beginning-of-document id (-1 when the model has none)."""
        return self._sp.bos_id()

    @property
    def pad_id(self) -> int:
        """Padding id (-1 when the model has none; models trained here have one)."""
        return self._sp.pad_id()

    @property
    def unk_id(self) -> int:
        """Unknown-piece id."""
        return self._sp.unk_id()

    @property
    def checksum(self) -> str:
        """sha256 of the model file bytes."""
        return self._checksum


def training_lines(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """The non-empty lines of ``texts`` (without ``'\\n'``), at most ``max_bytes`` in all."""
    used = 0
    for text in texts:
        for line in text.split("\n"):
            if not line:
                continue
            size = len(line.encode("utf-8")) + 1
            if used + size > max_bytes:
                return
            used += size
            yield line


def train_bpe(lines: Iterable[str], vocab_size: int) -> SentencePieceTokenizer:
    """Trains a lossless BPE model of exactly ``vocab_size`` pieces on ``lines`` (deterministic)."""
    model = io.BytesIO()
    spm.set_random_generator_seed(TRAINER_SEED)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=model,
            vocab_size=vocab_size,
            minloglevel=2,
            **TRAINER_OPTIONS,
        )
    except RuntimeError as e:
        raise UserError(
            f"SentencePiece could not train {vocab_size} pieces ({str(e).strip()}); try another "
            "model.vocab_size (at least ~300 with byte fallback) or more data.tokenizer_train_bytes"
        ) from None
    return SentencePieceTokenizer(model.getvalue())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file and a rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_or_train(
    tokenizer_path: str,
    directory: Path,
    vocab_size: int,
    train_texts: Callable[[], Iterable[str]],
    max_train_bytes: int,
    write: bool = True,
) -> SentencePieceTokenizer:
    """The tokenizer of a run: ``tokenizer_path``, else ``directory``'s, else a newly trained one.

    A given model may have at most ``vocab_size`` pieces; one found in ``directory`` must have
    exactly ``vocab_size``. A new model is trained on ``train_texts()`` (at most
    ``max_train_bytes``) and, when ``write``, saved to ``directory`` with a ``manifest.json``
    (checksum, options, sizes, timing).
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
    tok = train_bpe(lines, vocab_size)
    seconds = time.perf_counter() - start
    print(f"tokenizer: trained in {seconds:.1f} s", file=sys.stderr, flush=True)
    if write:
        tok.save(directory)
        manifest = {
            "sha256": tok.checksum,
            "vocab_size": tok.vocab_size,
            "train_bytes": num_bytes,
            "train_lines": len(lines),
            "train_seconds": round(seconds, 3),
            "seed": TRAINER_SEED,
            "options": {**TRAINER_OPTIONS, "vocab_size": vocab_size},
            "sentencepiece_version": spm.__version__,
        }
        text = json.dumps(manifest, indent=2, ensure_ascii=True) + "\n"
        write_bytes_atomic(directory / "manifest.json", text.encode())
    return tok


def _load_trained(directory: Path, vocab_size: int) -> SentencePieceTokenizer:
    """The model an earlier run trained into ``directory``, checked against manifest and size."""
    tok = SentencePieceTokenizer.load(directory)
    manifest_path = directory / "manifest.json"
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
