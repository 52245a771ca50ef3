"""Tokenizers: SentencePiece models trained here, or Hugging Face tokenizer folders.

Both kinds share one interface (:class:`~codex_jax.tokenizers.base.Tokenizer`: ``encode``,
``encode_batch`` with truncation/padding/attention masks, ``decode``, ``vocab_size``, the special
ids and ``checksum``); :func:`load_tokenizer` picks one by what ``path`` holds.
"""

from __future__ import annotations

import os

from codex_jax.tokenizers.base import Batch, Tokenizer
from codex_jax.tokenizers.hf import HFTokenizer, is_hf_tokenizer_folder
from codex_jax.tokenizers.sentencepiece import SentencePieceTokenizer

__all__ = ["Batch", "HFTokenizer", "SentencePieceTokenizer", "Tokenizer", "load_tokenizer"]


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A folder with ``tokenizer.json``/``tokenizer.model`` loads with transformers; anything
    else (a ``.model`` file, a folder with ``spm.model``) as SentencePiece."""
    if is_hf_tokenizer_folder(path):
        return HFTokenizer.load(path)
    return SentencePieceTokenizer.load(path)
