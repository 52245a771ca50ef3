"""Tokenizers: SentencePiece models trained here, or Hugging Face tokenizer folders.

Both kinds share one interface (:class:`~codex_jax.tokenizers.base.Tokenizer`: ``encode``,
``encode_batch`` with truncation/padding/attention masks, ``decode``, ``vocab_size``, the special
ids and ``checksum``); :func:`load_tokenizer` picks one by what ``path`` holds, and
:func:`load_plugin_tokenizer` loads ``data.tokenizer='NAME:ARG'`` from a ``codex_jax.tokenizers`` plugin.
"""

from __future__ import annotations

import os

from codex_jax import plugins
from codex_jax.errors import UserError
from codex_jax.tokenizers.base import Batch, Tokenizer
from codex_jax.tokenizers.hf import HFTokenizer, is_hf_tokenizer_folder
from codex_jax.tokenizers.sentencepiece import SentencePieceTokenizer

__all__ = [
    "Batch",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "load_plugin_tokenizer",
    "load_tokenizer",
]


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A folder with ``tokenizer.json``/``tokenizer.model`` loads with transformers; anything
    else (a ``.model`` file, a folder with ``spm.model``) as SentencePiece."""
    if is_hf_tokenizer_folder(path):
        return HFTokenizer.load(path)
    return SentencePieceTokenizer.load(path)


TOKENIZER_ATTRS = ("encode", "encode_batch", "decode", "vocab_size", "eos_id", "checksum")


def load_plugin_tokenizer(spec: str):
    """The tokenizer of ``data.tokenizer='NAME:ARG'`` when NAME is a tokenizer plugin, else None.

    ``load(ARG)`` must return an object with the interface of
    ``codex_jax.tokenizers.base.Tokenizer`` (subclassing it is simplest).
    """
    found = plugins.split_spec(spec, plugins.TOKENIZERS)
    if found is None:
        return None
    load_fn, arg = found
    try:
        tokenizer = load_fn(arg)
    except Exception as e:  # noqa: BLE001 - the plugin's own failure, reported as the user's
        raise UserError(f"data.tokenizer {spec!r}: the plugin failed: {type(e).__name__}: {e}") from e
    missing = [a for a in TOKENIZER_ATTRS if not hasattr(tokenizer, a)]
    if missing:
        raise UserError(f"data.tokenizer {spec!r}: the plugin's tokenizer lacks {missing}")
    return tokenizer
