"""Preference pairs packed into shared rows (``train.dpo.packing``): each side (chosen, rejected) of each
pair of a micro-batch is its own segment of a row of ``seq_len + 1`` tokens, placed first fit in pair
order (chosen then rejected). The model sees segment ids and restarted positions, so attention never
crosses sides; :func:`codex_jax.compute.preference.pair_logps` sums each segment's weighted targets into
its row's slot and gathers them back per pair.

Shapes are static for a run: :func:`packed_shape` bounds the rows and slots any micro-batch of the pairs
can need: under first fit every row but the last holds more than ``c = max(row_len - the longest side,
row_len / 2)`` tokens (a later side did not fit in it, or it is full of slots), so ``rows <= tokens / c
+ 1`` for the micro-batch's ``tokens``, bounded by the longest sides in the data; ``slots <= row_len /
the shortest side``. Unused rows and slots are zeros; no pair points at them.

A side is cut after its last trained target (``weights``): later tokens cannot change a causal model's
log-probabilities of the trained ones.
"""

from __future__ import annotations

import numpy as np

from codex_jax.compute.preference import (
    CHOSEN_AT,
    REF_CHOSEN,
    REF_REJECTED,
    REJECTED_AT,
    ROW_SEGMENTS,
    ROW_WEIGHTS,
    ROWS,
    SLOTS,
)

SIDES = ("chosen", "rejected")


def side_lengths(weights_NxT: np.ndarray) -> np.ndarray:
    """Tokens each side keeps: up to the token of its last trained target (``[N]`` int64)."""
    trained_NxT = np.asarray(weights_NxT) > 0
    last_N = trained_NxT.shape[1] - 1 - np.argmax(trained_NxT[:, ::-1], axis=1)
    return np.where(trained_NxT.any(axis=1), last_N + 2, 1).astype(np.int64)


def packed_shape(arrays: dict, pairs: int, row_multiple: int = 1) -> tuple[int, int]:
    """``(rows, slots)`` enough for any ``pairs`` pairs of ``arrays`` (rows rounded up to a multiple of
    ``row_multiple``, the devices the rows are split over)."""
    row_len = arrays["chosen"].shape[1]
    lengths = np.concatenate([side_lengths(arrays[f"{s}_weights"]) for s in SIDES])
    longest = int(np.sort(lengths)[::-1][: 2 * pairs].sum())
    # every row but the last holds more than max(row_len - the longest side, row_len / 2) tokens
    fuller_than_x2 = max(2 * (row_len - int(lengths.max())), row_len)
    rows = min(2 * pairs, 2 * longest // fuller_than_x2 + 1)
    slots = min(2 * pairs, row_len // int(lengths.min()))
    rows = -(-rows // row_multiple) * row_multiple
    return rows, slots


def pack_pairs(batch: dict, rows: int, slots: int, slot_offset: int = 0) -> dict:
    """A micro-batch of pairs (``chosen``, ``rejected`` ``[B, L]`` rows and their weights, optionally the
    reference log-probs) as packed rows; ``slot_offset`` is added to every ``chosen_at`` / ``rejected_at``
    (this process's first slot in the global batch)."""
    row_len = batch["chosen"].shape[1]
    tokens_RxL = np.zeros((rows, row_len), np.int32)
    segments_RxL = np.zeros((rows, row_len), np.int32)
    weights_RxT = np.zeros((rows, row_len - 1), np.float32)
    slots_RxS = np.zeros((rows, slots), np.float32)
    lengths = {s: side_lengths(batch[f"{s}_weights"]) for s in SIDES}
    at = {s: np.zeros(len(batch["chosen"]), np.int32) for s in SIDES}
    used = np.zeros(rows, np.int64)  # tokens placed in each row
    count = np.zeros(rows, np.int64)  # sides placed in each row
    for pair in range(len(batch["chosen"])):
        for side in SIDES:
            n = int(lengths[side][pair])
            fits = np.flatnonzero((used + n <= row_len) & (count < slots))
            if not len(fits):
                raise ValueError(f"packed pairs need more than {rows} rows of {slots} slots")
            r, o = int(fits[0]), int(used[fits[0]])
            tokens_RxL[r, o : o + n] = batch[side][pair, :n]
            segments_RxL[r, o : o + n] = count[r] + 1
            weights_RxT[r, o : o + n - 1] = batch[f"{side}_weights"][pair, : n - 1]
            slots_RxS[r, count[r]] = 1.0
            at[side][pair] = slot_offset + r * slots + count[r]
            used[r] += n
            count[r] += 1
    out = {
        ROWS: tokens_RxL,
        ROW_SEGMENTS: segments_RxL,
        ROW_WEIGHTS: weights_RxT,
        SLOTS: slots_RxS,
        CHOSEN_AT: at["chosen"],
        REJECTED_AT: at["rejected"],
    }
    return out | {k: batch[k] for k in (REF_CHOSEN, REF_REJECTED) if k in batch}
