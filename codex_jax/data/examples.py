"""Examples to cached streams: token ids and their flags (trained, example start), per split.

``data.format='prompt_completion'``/``'chat'`` examples are encoded by :mod:`codex_jax.tokenizers.chat`;
a conversation the chat template cannot render is a bad record (skipped and listed under
``data.on_bad_record='skip'``, else a UserError naming ``file:line``). The streams live in the token cache
beside the text ones (``{split}.tokens`` and ``{split}_flags.tokens``); the corpus checksum in the cache
key covers the format, the fields, ``data.train_on`` and the chat template.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from codex_jax.corpus.records import MAX_BAD_LOCATIONS
from codex_jax.corpus.sources import Document
from codex_jax.data import cache
from codex_jax.data.packing import START, TRAINED
from codex_jax.errors import UserError
from codex_jax.files import as_path
from codex_jax.tokenizers.base import Tokenizer
from codex_jax.tokenizers.chat import RenderError, encode_example, hf_template

FLAGS_SUFFIX = "_flags"


def example_settings(d, template: str) -> dict:
    """What decides an example run's streams beyond the documents (recorded in the manifest and its
    checksum): format, fields, ``data.train_on`` and the chat template's sha256."""
    return {
        "format": d.format,
        "fields": [d.prompt_field, d.completion_field, d.messages_field],
        "train_on": d.train_on,
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else "",
    }


def chat_template_text(d, tokenizer: Tokenizer) -> str:
    """``data.chat_template`` (a file's text), else the tokenizer's own template ('' for the built-in)."""
    if not d.chat_template:
        return hf_template(tokenizer)
    try:
        return as_path(d.chat_template).read_text(encoding="utf-8")  # a local file or gs://
    except OSError as e:
        raise UserError(f"data.chat_template {d.chat_template!r}: {e.strerror}") from None


def encode_documents(
    tokenizer: Tokenizer, documents: Sequence[Document], train_on: str, template: str, on_bad: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(tokens, flags, bad)``: the examples' ids and flags in one stream each, and the bad records
    (``'file:line: reason'``) that were skipped."""
    dtype = cache.token_dtype(tokenizer.vocab_size)
    tokens, flags, bad = [np.zeros((0,), dtype)], [np.zeros((0,), np.uint8)], []
    for doc in documents:
        try:
            ids, mask = encode_example(tokenizer, doc.turns, train_on, template)
        except RenderError as e:
            if on_bad == "error":
                raise UserError(f"bad record at {doc.key}: {e} (data.on_bad_record='error')") from None
            bad.append(f"{doc.key}: {e}")
            continue
        flag = np.asarray(mask, np.uint8) * TRAINED
        flag[:1] |= START
        tokens.append(np.asarray(ids, dtype))
        flags.append(flag)
    return np.concatenate(tokens), np.concatenate(flags), bad


def load_or_build(directory, key: dict, tokenizer: Tokenizer, docs: dict, settings: dict, d, write: bool):
    """``({split: tokens}, {split: flags}, bad records)`` of the example splits in ``docs``, cached."""
    bad: list[str] = []

    def build():
        streams = {}
        for split, documents in docs.items():
            tokens, flags, skipped = encode_documents(
                tokenizer, documents, d.train_on, settings["template"], d.on_bad_record
            )
            streams[split], streams[split + FLAGS_SUFFIX] = tokens, flags
            bad.extend(skipped)
        return streams

    names = [name for split in docs for name in (split, split + FLAGS_SUFFIX)]
    streams = cache.load_or_build_streams(directory, key, names, build, write)
    tokens = {split: streams[split] for split in docs}
    flags = {split: streams[split + FLAGS_SUFFIX] for split in docs}
    return tokens, flags, bad[:MAX_BAD_LOCATIONS] + ([f"... {len(bad)} in all"] if len(bad) > 5 else [])
