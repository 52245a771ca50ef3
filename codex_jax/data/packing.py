"""Rows of ``seq_len + 1`` tokens from a token stream and its flags (``data.packing``).

The flags stream runs beside the tokens: bit :data:`TRAINED` marks a trained token, bit :data:`START` the
first token of an example (or of a text document). Packings:

    'concat'    consecutive windows of the stream, as text runs always had (examples may straddle rows)
    'segments'  whole examples packed into rows (first fit, in order), each with its segment id (1, 2,
                ...; 0 pads the row's end): attention stays inside a segment and positions restart
    'pad'       one example per row, padded at the end

An example longer than a row is cut to the row (``data.overlong='truncate'``) or left out ('drop');
both are counted in the statistics that go to ``data_manifest.json``.
"""

from __future__ import annotations

import numpy as np

from codex_jax.compute.batch import MASK, SEGMENTS, TOKENS, target_weights
from codex_jax.data import cache

TRAINED, START = 1, 2


def text_flags(stream: np.ndarray, eos_id: int, piece_len: int = 0) -> np.ndarray:
    """Flags of a text stream (documents each followed by EOS): every token trained, a start after
    every EOS, and (``piece_len > 0``) every ``piece_len`` tokens inside a longer document, so that
    documents are cut into whole rows rather than truncated."""
    flags = np.full(len(stream), TRAINED, np.uint8)
    if len(stream):
        flags[0] |= START
        ends = np.flatnonzero(np.asarray(stream) == eos_id)
        flags[ends[ends + 1 < len(stream)] + 1] |= START
    if piece_len:
        for start, stop in zip(*example_bounds(flags), strict=True):
            flags[start + piece_len : stop : piece_len] |= START
    return flags


def example_bounds(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, stops)`` of the examples marked in ``flags``."""
    starts = np.flatnonzero(np.asarray(flags) & START)
    stops = np.append(starts[1:], len(flags))
    return starts, stops


def _fit(starts, stops, row_len: int, overlong: str) -> tuple[list[tuple[int, int]], dict[str, float]]:
    """The ``(start, length)`` of every example that is kept, cut to ``row_len`` under 'truncate'."""
    kept, truncated, dropped = [], 0, 0
    for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
        length = stop - start
        if length > row_len:
            if overlong == "drop":
                dropped += 1
                continue
            truncated += 1
            length = row_len
        kept.append((start, length))
    return kept, {"examples": len(starts), "truncated": truncated, "dropped": dropped}


def _assign(examples: list[tuple[int, int]], row_len: int, packing: str) -> list[list[tuple[int, int]]]:
    """Examples grouped into rows: each into the first row with room for it (first fit, in example order),
    else a new row; one per row under 'pad'."""
    if packing == "pad":
        return [[example] for example in examples]
    rows: list[list[tuple[int, int]]] = []
    free = np.zeros((max(len(examples), 1),), np.int64)  # room left in each row so far
    for start, length in examples:
        fits = np.flatnonzero(free[: len(rows)] >= length)
        if len(fits):
            row = int(fits[0])
        else:
            row = len(rows)
            rows.append([])
            free[row] = row_len
        rows[row].append((start, length))
        free[row] -= length
    return rows


def pack_examples(tokens, flags, row_len: int, packing: str, overlong: str = "truncate", pad_id: int = 0):
    """``(rows, stats)``: a dict of ``[N, row_len]`` arrays (see :mod:`codex_jax.compute.batch`) and
    counts (examples, truncated, dropped, rows, padding and trained fractions)."""
    if packing == "concat":
        rows = {
            TOKENS: cache.windows(tokens, row_len),
            MASK: cache.windows(np.asarray(flags) & TRAINED, row_len),
        }
        stats: dict[str, float] = {
            "examples": int(np.count_nonzero(np.asarray(flags) & START)),
            "truncated": 0,
            "dropped": 0,
        }
    else:
        kept, stats = _fit(*example_bounds(flags), row_len, overlong)
        grouped = _assign(kept, row_len, packing)
        tokens_NxL = np.full((len(grouped), row_len), pad_id, np.asarray(tokens).dtype)
        mask_NxL = np.zeros((len(grouped), row_len), np.uint8)
        segments_NxL = np.zeros((len(grouped), row_len), np.uint16)
        for n, row in enumerate(grouped):
            at = 0
            for segment, (start, length) in enumerate(row, start=1):
                tokens_NxL[n, at : at + length] = tokens[start : start + length]
                mask_NxL[n, at : at + length] = flags[start : start + length] & TRAINED
                segments_NxL[n, at : at + length] = segment
                at += length
        rows = {TOKENS: tokens_NxL, MASK: mask_NxL}
        if packing == "segments":
            rows[SEGMENTS] = segments_NxL
        stats["padding_fraction"] = float((segments_NxL == 0).mean()) if len(grouped) else 0.0
    count = len(rows[TOKENS])
    trained = int(row_target_counts(rows).sum())
    stats.update(rows=count, trained_fraction=trained / max(count * (row_len - 1), 1))
    stats.setdefault("padding_fraction", 0.0)
    return rows, stats


def row_target_counts(rows) -> np.ndarray:
    """The trained targets of every row (``[N]`` int64), as the loss counts them."""
    if not len(rows[TOKENS]):
        return np.zeros((0,), np.int64)
    parts = {k: np.asarray(v, np.int32) for k, v in rows.items() if k in (MASK, SEGMENTS)}
    return np.asarray(target_weights(parts)).sum(axis=1, dtype=np.int64)
