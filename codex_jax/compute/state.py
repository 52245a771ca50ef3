"""The train state: one pytree holding everything a resumed run needs besides the data iterator."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Optimizer step, trained parameters, optimizer state and the raw PRNG key data (uint32).

    ``params`` is the tree being trained: the model's parameters, or in a LoRA run the adapter tree
    (the frozen base is not part of the state; the runner passes it to every step).

    The key is stored as raw key data rather than a typed key so that every Orbax version saves it; the step
    function wraps it with ``jax.random.wrap_key_data``.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def create_train_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state at step 0 whose dropout stream derives from ``seed``."""
    rng = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)
