"""Next-token loss: the float32 cross entropy of a batch of ``seq_len + 1`` token rows, and the summed
held-out statistics that training's eval and ``eval.metrics`` both use."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def inputs_and_targets(batch_BxL):
    """``(inputs [:, :-1], targets [:, 1:])`` of rows that hold ``seq_len + 1`` tokens."""
    return batch_BxL[:, :-1], batch_BxL[:, 1:]


def cross_entropy(logits_BxTxV, targets_BxT):
    """Per-token float32 cross entropy and whether the argmax hit the target."""
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    loss_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
    correct_BxT = jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT
    return loss_BxT, correct_BxT


def token_sums(loss_BxT, correct_BxT) -> dict:
    """``{'loss_sum', 'correct', 'tokens'}`` of one batch (float32; summed over batches and devices)."""
    return {
        "loss_sum": loss_BxT.sum(),
        "correct": correct_BxT.sum(dtype=jnp.float32),
        "tokens": jnp.float32(loss_BxT.size),
    }
