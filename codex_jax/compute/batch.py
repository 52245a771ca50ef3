"""Training batches with a loss mask: a dict of ``[B, seq_len + 1]`` rows instead of bare token rows.

Text runs packed as windows (``data.format='text'``, ``data.packing='concat'``) pass bare int32 token rows,
as always. Every other run passes a dict:

    'tokens'       int32 [B, L]   the row's tokens (L = seq_len + 1)
    'mask'         int32 [B, L]   1 where the token is trained (completion / assistant tokens, or all)
    'segments'     int32 [B, L]   ('segments' packing only) the example each token belongs to, 1, 2, ...;
                                  0 is padding. Attention never crosses segments; positions restart.
    'step_scale'   float32 [B]    (training only) K / (trained targets of the whole optimizer step of K
                                  micro-batches, all processes), the same in every row.

Target ``t`` (token ``t + 1``) counts when its token is trained and, with segments, belongs to the same
example as token ``t``: :func:`target_weights`. The functions take numpy or jax arrays alike, so the data
pipeline counts exactly what the loss weighs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TOKENS, MASK, SEGMENTS, STEP_SCALE = "tokens", "mask", "segments", "step_scale"


def is_masked(batch) -> bool:
    """Whether ``batch`` is a dict with a loss mask (else bare token rows)."""
    return isinstance(batch, dict)


def token_rows(batch):
    """The token rows of a batch (bare rows, a masked, GRPO or packed DPO batch's ``'tokens'``, a DPO
    batch's ``'chosen'``)."""
    if not is_masked(batch):
        return batch
    return batch[TOKENS] if TOKENS in batch else batch["chosen"]


def stack(batches: list):
    """K micro-batches stacked into one ``[K, ...]`` batch (bare rows or masked dicts)."""
    return jax.tree.map(lambda *rows: np.stack(rows), *batches)


def target_weights(batch):
    """``[B, L - 1]`` weights (0/1) of the targets ``tokens[:, 1:]`` of a masked batch."""
    weights = batch[MASK][:, 1:]
    if SEGMENTS in batch:
        segments = batch[SEGMENTS]
        weights = weights * (segments[:, 1:] == segments[:, :-1])
    return weights


def segment_positions(segments_BxT):
    """Positions that restart at 0 where each segment starts (``[B, T]`` int32)."""
    T = segments_BxT.shape[1]
    index_T = jnp.arange(T, dtype=jnp.int32)
    starts_BxT = jnp.concatenate(
        [jnp.ones_like(segments_BxT[:, :1], bool), segments_BxT[:, 1:] != segments_BxT[:, :-1]], axis=1
    )
    first_BxT = jnp.where(starts_BxT, index_T[None, :], 0)
    return (index_T[None, :] - jax.lax.cummax(first_BxT, axis=1)).astype(jnp.int32)


def model_inputs(batch):
    """``(inputs [B, T], targets [B, T], weights [B, T] float32, model keyword arguments)`` of a masked
    batch: with segments, restarted positions and the segment ids (attention stays inside each)."""
    tokens_BxL = batch[TOKENS]
    weights_BxT = target_weights(batch).astype(jnp.float32)
    kwargs = {}
    if SEGMENTS in batch:
        segments_BxT = batch[SEGMENTS][:, :-1]
        kwargs["positions_BxT"] = segment_positions(segments_BxT)
        kwargs["segments_BxT"] = segments_BxT
    return tokens_BxL[:, :-1], tokens_BxL[:, 1:], weights_BxT, kwargs
