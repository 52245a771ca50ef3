"""Residual-gradient barriers (``model.grad_barriers``): backward computes the residual stream's gradient
once per residual add, instead of once per consumer.

In backward, the gradient of the residual stream is a chain of elementwise sums: the output gradient
plus every later block's norm backward. XLA's CPU fusion copies such a chain into each consumer that
can take it, and the weight-gradient dots read it through transposing copies, so every copy
recomputed the chain from the top of the model: work quadratic in depth. ``lax.optimization_barrier``
does not stop this (the CPU pipeline expands it before fusion); a conditional does, so the cotangent
passes through a ``lax.cond`` whose two branches both return it unchanged. Forward is untouched.

Measured on a 2-core CPU (4 layers, width 128, batch 12 x 64): backward 46 -> 38 ms, the train step
49 -> 40 ms. ``'auto'`` turns the barriers on for CPU only, where they were measured; on GPU a
conditional reads its predicate on the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def enabled(cfg, platform: str) -> bool:
    """Whether a model traced for ``platform`` ('cpu', 'gpu', 'tpu') puts the barriers in."""
    if cfg.grad_barriers == "auto":
        return platform == "cpu"
    return cfg.grad_barriers == "on"


def resolve(cfg, platform: str):
    """``cfg`` with ``grad_barriers`` set to what ``'auto'`` means on ``platform`` ('on' or 'off')."""
    return cfg.replace(grad_barriers="on" if enabled(cfg, platform) else "off")


@jax.custom_vjp
def residual_barrier(x_BxTxD: jax.Array) -> jax.Array:
    """The identity; its gradient is materialised once (module doc)."""
    return x_BxTxD


def _forward(x_BxTxD):
    return x_BxTxD, None


def _backward(_, grad_BxTxD):
    # The predicate is unknown at compile time, so XLA keeps the conditional (and cannot fuse across it).
    # The branches must differ as jaxprs: jax drops a cond whose branches both return their operand.
    known = jnp.isfinite(grad_BxTxD.reshape(-1)[0])
    return (jax.lax.cond(known, lambda g: g, lambda g: g * 1.0, grad_BxTxD),)


residual_barrier.defvjp(_forward, _backward)
