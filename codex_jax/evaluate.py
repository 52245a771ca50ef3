"""Held-out evaluation: loss, perplexity and token accuracy over a fixed list of batches."""

from __future__ import annotations

import math

import jax
import numpy as np


def evaluate(runner, params, batches: list[np.ndarray]) -> dict[str, float]:
    """Token-weighted loss, perplexity and accuracy of ``params`` on ``batches`` (this process's rows)."""
    totals = None
    for batch in batches:
        sums = runner.eval_step(params, runner.put_batch(batch))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    loss = float(totals["loss_sum"] / totals["tokens"])
    return {
        "loss": loss,
        "perplexity": float(math.exp(min(loss, 80.0))),
        "token_accuracy": float(totals["correct"] / totals["tokens"]),
    }
