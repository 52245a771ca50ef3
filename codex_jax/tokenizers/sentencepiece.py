"""A SentencePiece tokenizer for code: lossless training, loading and fast batch encoding.

The trainer options keep code exactly: identity normalisation, no dummy prefix, runs of spaces
kept and allowed to become single pieces (4 or 8 spaces of indentation are one token), ``'\\n'``
a piece of its own, and byte fallback so any text encodes: ``decode(encode(text)) == text`` for
every string (see :class:`SentencePieceTokenizer` for the one character that needs help).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from codex_jax.errors import UserError
from codex_jax.files import as_path, write_bytes_atomic
from codex_jax.tokenizers.base import Tokenizer

MODEL_FILENAME = "spm.model"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
TRAINER_SEED = 0
SPACE_SYMBOL = "\u2581"  # how SentencePiece writes a space inside its pieces
MODEL_TYPES = ("bpe", "unigram")

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


def trainer_options(model_type: str = "bpe", symbols: Sequence[str] = ()) -> dict[str, Any]:
    """:data:`TRAINER_OPTIONS` for ``model_type``, with ``symbols`` added to the user-defined symbols."""
    options = {**TRAINER_OPTIONS, "model_type": model_type}
    if symbols:
        options["user_defined_symbols"] = [*TRAINER_OPTIONS["user_defined_symbols"], *symbols]
    return options


def sha256_hex(data: bytes) -> str:
    """The sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


class SentencePieceTokenizer(Tokenizer):
    """Text <-> token ids with a SentencePiece model held in memory.

    SentencePiece writes spaces as ``'\u2581'`` pieces, so a literal ``'\u2581'`` in the text
    would decode as a space; such characters are encoded as their three UTF-8 byte pieces
    instead, which keeps ``decode(encode(text)) == text`` for every string.
    """

    def __init__(self, model_bytes: bytes):
        self._model_bytes = model_bytes
        self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self._checksum = sha256_hex(model_bytes)
        self._specials = frozenset(i for i in (self.unk_id, self.bos_id, self.eos_id, self.pad_id) if i >= 0)
        byte_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in SPACE_SYMBOL.encode()]
        ok = all(self._sp.is_byte(i) for i in byte_ids)
        self._space_symbol_ids = byte_ids if ok else None

    @classmethod
    def load(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        """Loads a ``.model`` file, or ``spm.model`` in a directory; UserError when missing/bad."""
        path = as_path(path)
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
        path = as_path(directory) / MODEL_FILENAME
        write_bytes_atomic(path, self._model_bytes)
        return path

    def _encode_many(self, texts: list[str], num_threads: int) -> list[list[int]]:
        rows = self._sp.encode(texts, num_threads=num_threads)
        if self._space_symbol_ids is not None:
            for i, text in enumerate(texts):
                if SPACE_SYMBOL in text:
                    rows[i] = self._encode_space_symbols(text)
        return rows

    def _encode_space_symbols(self, text: str) -> list[int]:
        """``text`` encoded part by part around its ``'\u2581'``, which become byte pieces."""
        parts = self._sp.encode(text.split(SPACE_SYMBOL))
        ids = list(parts[0])
        for part in parts[1:]:
            ids += self._space_symbol_ids + part
        return ids

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        if skip_special_tokens:
            return self._sp.decode([i for i in ids if i not in self._specials])
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in self._specials:
                out += [self._sp.decode(run), self._sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        return "".join([*out, self._sp.decode(run)])

    def id_to_piece(self, token_id: int) -> str:
        """The piece string of one id (for debugging and tests)."""
        return self._sp.id_to_piece(int(token_id))

    @property
    def model_type(self) -> str:
        """'bpe', 'unigram', 'word' or 'char' (from the model's trainer spec)."""
        from sentencepiece import sentencepiece_model_pb2 as pb

        # The generated protobuf module builds its classes at import time: no attributes for mypy.
        proto = pb.ModelProto()  # type: ignore[attr-defined]
        proto.ParseFromString(self._model_bytes)
        return pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()  # type: ignore[attr-defined]

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


def train_model(
    sentences: Iterable[str],
    vocab_size: int,
    model_type: str = "bpe",
    seed: int = TRAINER_SEED,
    vocab_flag: str = "model.vocab_size",
    symbols: Sequence[str] = (),
) -> SentencePieceTokenizer:
    """Trains a lossless model of exactly ``vocab_size`` pieces on ``sentences`` (lines without
    ``'\\n'``), pulled one by one; the same sentences and seed give byte-identical models.

    ``vocab_flag`` names the setting to change in the error raised when training fails; ``symbols``
    become single pieces besides ``'\\n'`` (e.g. the built-in chat template's role markers).
    """
    if model_type not in MODEL_TYPES:
        raise UserError(f"model type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    model = io.BytesIO()
    failures: list[Exception] = []

    def guarded() -> Iterator[str]:  # an error while reading ends the input and is re-raised
        try:
            yield from sentences
        except Exception as e:  # noqa: BLE001 - re-raised below, unchanged
            failures.append(e)

    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=guarded(),
            model_writer=model,
            vocab_size=vocab_size,
            minloglevel=2,
            **trainer_options(model_type, symbols),
        )
    except RuntimeError as e:
        if failures:
            raise failures[0] from None
        raise UserError(_training_error(str(e), vocab_size, vocab_flag)) from None
    if failures:
        raise failures[0]
    return SentencePieceTokenizer(model.getvalue())


def _training_error(message: str, vocab_size: int, vocab_flag: str) -> str:
    """One line explaining why SentencePiece could not train ``vocab_size`` pieces."""
    message = " ".join(message.split())
    if "too high" in message and "<=" in message:
        limit = message.rsplit("<=", 1)[1].strip(" .")
        return (
            f"the training text supports at most {limit} pieces, fewer than {vocab_flag}="
            f"{vocab_size}; lower {vocab_flag} or give more text"
        )
    if "smaller than required_chars" in message:
        needed = message.split("required_chars.", 1)[1].split("vs", 1)[1].split(".")[0].strip()
        return (
            f"{vocab_flag}={vocab_size} is too small: the bytes, special pieces and characters "
            f"of the text need {needed}; raise {vocab_flag}"
        )
    if "empty" in message.lower():
        return "no training text: every input line was empty or too long"
    return (
        f"SentencePiece could not train {vocab_size} pieces ({message}); try another "
        f"{vocab_flag} (at least ~300 with byte fallback) or more text"
    )


def train_bpe(lines: Iterable[str], vocab_size: int) -> SentencePieceTokenizer:
    """Trains a lossless BPE model of exactly ``vocab_size`` pieces on ``lines`` (deterministic)."""
    return train_model(lines, vocab_size, "bpe")
