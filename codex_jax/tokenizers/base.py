"""What every tokenizer shares: batch encoding with truncation, padding and attention masks.

A tokenizer subclasses :class:`Tokenizer` and implements ``_encode_many`` (texts -> id lists),
``_decode`` and the special ids; :meth:`Tokenizer.encode_batch` then truncates and pads the same
way for all of them (:func:`truncate`, :func:`pad`).

    tok.encode_batch(["a", "bcd"])                       # [[ids], [ids]]: plain lists
    b = tok.encode_batch(texts, padding="longest", padding_side="left")
    b.input_ids, b.attention_mask                        # int32 [B, L] numpy arrays
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Literal, overload

import numpy as np

from codex_jax.errors import UserError

PADDINGS = ("longest", "max_length")
SIDES = ("left", "right")


@dataclasses.dataclass(frozen=True)
class Batch:
    """Padded ids and their mask (1: a real token, 0: padding), both int32 ``[B, L]``."""

    input_ids: np.ndarray
    attention_mask: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:  # batch["input_ids"], as in transformers
        return getattr(self, name)


def truncate(ids: Sequence[int], max_length: int, side: str = "right") -> list[int]:
    """At most ``max_length`` ids: the first ones (``side='right'`` cuts the end) or the last."""
    if len(ids) <= max_length:
        return list(ids)
    return list(ids[:max_length]) if side == "right" else list(ids[len(ids) - max_length :])


def pad(rows: Sequence[Sequence[int]], length: int, pad_id: int, side: str = "right") -> Batch:
    """``rows`` padded with ``pad_id`` to ``length`` on ``side``; every row must fit."""
    input_ids = np.full((len(rows), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), length), dtype=np.int32)
    for i, row in enumerate(rows):
        n = len(row)
        if n > length:
            raise ValueError(f"row {i} has {n} ids, more than the padded length {length}")
        cols = slice(0, n) if side == "right" else slice(length - n, length)
        input_ids[i, cols] = row
        mask[i, cols] = 1
    return Batch(input_ids, mask)


def _check_options(max_length, padding, truncation, padding_side, truncation_side) -> str | None:
    """The padding mode (None, 'longest', 'max_length') after checking every option."""
    if padding is True:
        padding = "longest"
    if padding is False:
        padding = None
    if padding is not None and padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, True/False or None, got {padding!r}")
    for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
        if side not in SIDES:
            raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")
    if max_length is not None and max_length < 0:
        raise ValueError(f"max_length must be >= 0, got {max_length}")
    if max_length is None and (truncation or padding == "max_length"):
        raise ValueError("truncation=True and padding='max_length' need max_length")
    return padding


class Tokenizer(abc.ABC):
    """Text <-> token ids. No BOS/EOS is added: documents are packed with EOS by the data path."""

    @abc.abstractmethod
    def _encode_many(self, texts: list[str], num_threads: int) -> list[list[int]]:
        """Token ids of every text, in order."""

    @abc.abstractmethod
    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        """The text of ``ids``."""

    @abc.abstractmethod
    def id_to_piece(self, token_id: int) -> str:
        """The piece (token string) of one id."""

    # The vocabulary size, the special ids (-1 when the tokenizer has none) and a checksum of the
    # tokenizer's files; a subclass implements them as properties or plain class attributes.
    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (ids are in ``[0, vocab_size)``)."""

    @property
    @abc.abstractmethod
    def pad_id(self) -> int:
        """Padding id (-1 when none)."""

    @property
    @abc.abstractmethod
    def unk_id(self) -> int:
        """Unknown-token id (-1 when none)."""

    @property
    @abc.abstractmethod
    def bos_id(self) -> int:
        """Beginning-of-document id (-1 when none)."""

    @property
    @abc.abstractmethod
    def eos_id(self) -> int:
        """End-of-document id (-1 when none)."""

    @property
    @abc.abstractmethod
    def checksum(self) -> str:
        """A checksum of the tokenizer's files (keys the token cache)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return self._encode_many([text], 1)[0]

    @overload
    def encode_batch(
        self,
        texts: Sequence[str],
        num_threads: int = -1,
        *,
        max_length: int | None = None,
        padding: Literal[False] | None = None,
        truncation: bool = False,
        padding_side: str = "right",
        truncation_side: str = "right",
    ) -> list[list[int]]: ...

    @overload
    def encode_batch(
        self,
        texts: Sequence[str],
        num_threads: int = -1,
        *,
        max_length: int | None = None,
        padding: Literal[True] | str,
        truncation: bool = False,
        padding_side: str = "right",
        truncation_side: str = "right",
    ) -> Batch: ...

    @overload
    def encode_batch(
        self,
        texts: Sequence[str],
        num_threads: int = -1,
        *,
        max_length: int | None = None,
        padding: bool | str | None = None,
        truncation: bool = False,
        padding_side: str = "right",
        truncation_side: str = "right",
    ) -> list[list[int]] | Batch: ...

    def encode_batch(
        self,
        texts: Sequence[str],
        num_threads: int = -1,
        *,
        max_length: int | None = None,
        padding: bool | str | None = None,
        truncation: bool = False,
        padding_side: str = "right",
        truncation_side: str = "right",
    ) -> list[list[int]] | Batch:
        """Token ids of every text: lists, or a :class:`Batch` when ``padding`` is set.

        ``truncation`` keeps at most ``max_length`` ids (cutting on ``truncation_side``);
        ``padding='longest'`` (or True) pads to the longest row, ``'max_length'`` to
        ``max_length`` (a longer row is a ValueError unless truncated). Padding uses
        :attr:`padding_id`.
        """
        mode = _check_options(max_length, padding, truncation, padding_side, truncation_side)
        texts = list(texts)
        rows = self._encode_many(texts, num_threads) if texts else []
        if truncation:
            assert max_length is not None  # _check_options requires it with truncation
            rows = [truncate(r, max_length, truncation_side) for r in rows]
        if mode is None:
            return rows
        if mode == "longest":
            length = max((len(r) for r in rows), default=0)
        else:
            assert max_length is not None  # _check_options requires it with padding='max_length'
            length = max_length
        too_long = [i for i, r in enumerate(rows) if len(r) > length]
        if too_long:
            n = len(rows[too_long[0]])
            raise ValueError(
                f"text {too_long[0]} has {n} ids, more than max_length={length}; pass truncation=True"
            )
        return pad(rows, length, self.padding_id, padding_side)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids`` (a list or array); special ids (pad/bos/eos/unk) decode to nothing
        unless ``skip_special_tokens=False``, which writes their pieces (``'</s>'``)."""
        ids = ids.tolist() if isinstance(ids, np.ndarray) else [int(i) for i in ids]
        return self._decode(ids, skip_special_tokens)

    @property
    def special_ids(self) -> dict[str, int]:
        """``{'pad', 'unk', 'bos', 'eos'}`` -> id (-1 when the tokenizer has none)."""
        return {"pad": self.pad_id, "unk": self.unk_id, "bos": self.bos_id, "eos": self.eos_id}

    @property
    def padding_id(self) -> int:
        """The id padding uses: ``pad_id``, else ``eos_id`` (masked out either way)."""
        for value in (self.pad_id, self.eos_id):
            if value >= 0:
                return value
        raise UserError("the tokenizer has neither a pad nor an EOS id to pad with")
