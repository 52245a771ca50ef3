"""The rows that training reads from one source (:func:`codex_jax.data.pipeline.prepare_data`): its
token streams (tokenized once and cached, :mod:`codex_jax.data.cache`) cut into ``seq_len + 1`` windows
under ``data.packing='concat'``, or its documents (examples) packed one or more to a row per
``data.packing`` (:mod:`codex_jax.data.packing`), with the packing statistics in the manifest.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from codex_jax.corpus.sources import Document
from codex_jax.corpus.splits import hash_fraction
from codex_jax.data import cache, examples, mixture
from codex_jax.data.iterators import row_count
from codex_jax.data.packing import pack_examples, text_flags
from codex_jax.errors import UserError
from codex_jax.tokenizers import Tokenizer

if TYPE_CHECKING:
    from ml_collections import ConfigDict

Rows = mixture.Rows


def source_rows(
    cfg: ConfigDict,
    d,
    cache_dir: Path,
    tokenizer: Tokenizer,
    train_docs: list[Document],
    eval_docs: list[Document],
    manifest: dict[str, Any],
    write: bool,
    masked: bool = False,
) -> tuple[Mapping[str, Rows], dict[str, int]]:
    """``({'train', 'eval'} rows, tokens per split)`` of one source read into memory (data section
    ``d``), its streams cached in ``cache_dir``; ``masked``: dict rows even for text under 'concat'
    packing (a mixture with example sources)."""
    key = cache.cache_key(manifest["checksum"], tokenizer)
    # Eval documents in a hash order, so that the first eval batches sample every held-out file.
    eval_docs = sorted(eval_docs, key=lambda doc: hash_fraction("eval-order:" + doc.key))
    docs = {"train": train_docs, "eval": eval_docs}
    if d.format != "text":
        streams, flags = _example_streams(d, cache_dir, key, tokenizer, docs, manifest, write)
        return _packed_rows(d, streams, flags, tokenizer.eos_id, manifest), _token_counts(streams)
    texts = {split: [doc.text for doc in documents] for split, documents in docs.items()}
    progress = bool(cfg.logging.progress)
    workers = cfg.data.cache_workers
    streams = cache.load_or_build(cache_dir, key, tokenizer, texts, write, progress, workers)
    return text_rows(d, streams, tokenizer, manifest, masked)


def text_rows(
    d, streams: Mapping[str, np.ndarray], tokenizer: Tokenizer, manifest: dict[str, Any], masked: bool = False
) -> tuple[Mapping[str, Rows], dict[str, int]]:
    """``(rows, tokens per split)`` of a text source's token streams: windows under 'concat' packing
    (unless ``masked``), else documents packed per ``data.packing``."""
    if d.packing == "concat" and not masked:
        return _windows(dict(streams), d.seq_len), _token_counts(streams)
    flags = {split: text_flags(s, tokenizer.eos_id, d.seq_len + 1) for split, s in streams.items()}
    return _packed_rows(d, streams, flags, tokenizer.eos_id, manifest), _token_counts(streams)


def _token_counts(streams: Mapping[str, np.ndarray]) -> dict[str, int]:
    return {split: len(s) for split, s in streams.items()}


def _example_streams(d, cache_dir: Path, key: dict, tokenizer, docs, manifest, write: bool):
    """``({split: tokens}, {split: flags})`` of an example source (data section ``d``), cached in
    ``cache_dir``; render failures go to the manifest's ``examples`` section."""
    template = examples.chat_template_text(d, tokenizer)
    settings = examples.example_settings(d, template)
    key = {**key, "examples": settings}
    streams, flags, bad = examples.load_or_build(
        cache_dir, key, tokenizer, docs, {"template": template}, d, write
    )
    manifest["examples"] = {**settings, "template_failures": bad}
    return streams, flags


def _packed_rows(d, streams, flags, pad_id: int, manifest) -> dict[str, dict[str, np.ndarray]]:
    """Rows of every split packed per ``data.packing``; statistics in the manifest's ``packing``."""
    rows, stats = {}, {}
    for split, stream in streams.items():
        rows[split], stats[split] = pack_examples(
            stream, flags[split], d.seq_len + 1, d.packing, d.overlong, pad_id
        )
        if not row_count(rows[split]):
            raise UserError(
                f"the {split} split gives no rows of data.seq_len+1={d.seq_len + 1} tokens "
                f"(data.packing={d.packing!r}, data.overlong={d.overlong!r}); use more data or a "
                "smaller data.seq_len"
            )
    manifest["packing"] = {"packing": d.packing, "overlong": d.overlong, **stats}
    for split, st in stats.items():
        print(
            f"data: {split}: {st['examples']} examples in {st['rows']} rows ({d.packing}): "
            f"{st['padding_fraction']:.1%} padding, {st['trained_fraction']:.1%} trained targets, "
            f"{st['truncated']} truncated, {st['dropped']} dropped",
            file=sys.stderr,
            flush=True,
        )
    return rows


def _windows(streams: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """``[N, seq_len + 1]`` windows of every stream; UserError when a split has none."""
    windows = {split: cache.windows(s, seq_len + 1) for split, s in streams.items()}
    for split, w in windows.items():
        if not len(w):
            raise UserError(
                f"the {split} split has {len(streams[split])} tokens, fewer than data.seq_len+1="
                f"{seq_len + 1}; use more data (data.max_files, data.eval_fraction) or a smaller "
                "data.seq_len"
            )
    return windows
