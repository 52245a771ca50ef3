"""A rematerialisation that holds on XLA's CPU backend (``model.remat`` where ``models/grad_barrier.py``
is enabled).

``jax.checkpoint`` keeps its recomputed forward apart from the original with optimization barriers, which
XLA's CPU pipeline expands before CSE and scheduling: the recomputation is merged with the forward and
every layer's activations live from the forward to the backward pass, as without remat. Here a layer is a
``jax.custom_vjp`` whose forward saves only its inputs and whose backward recomputes the layer and its VJP
inside a ``lax.cond`` on the incoming cotangent: a predicate XLA cannot know, so it can neither merge the
recomputation with the forward nor move it ahead of the cotangent. The VJP is taken only with respect to
the inputs that are differentiated (``symbolic_zeros``): a LoRA run computes no gradient of its frozen
base. :func:`remat` is the JAX transform and :func:`lifted` its Flax module form (``nn.remat``'s
counterpart, with the same variable and RNG handling).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
from flax.core import lift


def remat(fn, static_argnums: tuple[int, ...] = ()):
    """``fn`` (a pure function) whose backward pass recomputes it, inside a conditional (module doc).
    Arguments at ``static_argnums`` are Python values closed over, as in ``jax.checkpoint``."""

    def wrapped(*args):
        static = {i: args[i] for i in static_argnums}
        leaves, treedef = jax.tree.flatten([a for i, a in enumerate(args) if i not in static])

        def call(flat):
            dynamic = iter(jax.tree.unflatten(treedef, flat))
            return fn(*(static[i] if i in static else next(dynamic) for i in range(len(args))))

        # Traced once, so that the recomputation is the same function (Flax draws a layer's dropout
        # keys while tracing it).
        jaxpr, out_shape = jax.make_jaxpr(call, return_shape=True)(list(leaves))
        out_tree = jax.tree.structure(out_shape)
        pure = jax.extend.core.jaxpr_as_fun(jaxpr)
        out = _checkpointed(lambda flat: pure(*flat), list(leaves))
        return jax.tree.unflatten(out_tree, out)

    return wrapped


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _checkpointed(call, leaves):
    return call(leaves)


def _floating(a) -> bool:
    return jnp.issubdtype(a.dtype, jnp.floating)


def _forward(call, leaves):
    # Saved: the inputs only, split into the differentiated ones and the rest (None in their place).
    values = [p.value for p in leaves]
    wanted = [p.perturbed and _floating(v) for p, v in zip(leaves, values, strict=True)]
    diff = [v if w else None for w, v in zip(wanted, values, strict=True)]
    fixed = [None if w else v for w, v in zip(wanted, values, strict=True)]
    return call(values), (diff, fixed)


def _backward(call, residuals, out_ct):
    diff, fixed = residuals
    wanted = [i for i, v in enumerate(diff) if v is not None]
    zero = jax.custom_derivatives.SymbolicZero
    cts, ct_tree = jax.tree.flatten(out_ct, is_leaf=lambda c: isinstance(c, zero))
    # Cotangents of float outputs pass through the conditional; the rest (float0) are built inside.
    live = [i for i, c in enumerate(cts) if _floating(c)]
    flowing = [jnp.zeros(cts[i].shape, cts[i].dtype) if isinstance(cts[i], zero) else cts[i] for i in live]
    if not wanted or not flowing:
        return ([None] * len(diff),)

    def recompute(inputs, flowing):
        def layer(*inputs):
            return call(_placed(fixed, wanted, inputs))

        full = _placed([np.zeros(c.shape, c.dtype) for c in cts], live, flowing)
        _, vjp = jax.vjp(layer, *inputs)
        return vjp(jax.tree.unflatten(ct_tree, full))

    # The predicate is unknown at compile time, so XLA keeps the conditional: the recomputation runs
    # when the cotangent arrives and cannot be merged with the forward. The branches must differ as
    # jaxprs: jax drops a cond whose branches are the same.
    known = jnp.isfinite(flowing[0].reshape(-1)[0])
    inputs = [diff[i] for i in wanted]
    grads = jax.lax.cond(known, recompute, lambda x, c: recompute(x, [g * 1 for g in c]), inputs, flowing)
    return (_placed([None] * len(diff), wanted, grads),)


def _placed(items: list, at: list[int], values) -> list:
    """``items`` with ``values`` at the indices ``at``."""
    items = list(items)
    for i, v in zip(at, values, strict=True):
        items[i] = v
    return items


_checkpointed.defvjp(_forward, _backward, symbolic_zeros=True)


def _lift_remat(fn, static_argnums: tuple[int, ...] = ()):
    """``flax.core.lift.checkpoint`` with :func:`remat` in place of ``jax.checkpoint``."""

    def inner(scope_fn, repack_fn, variable_groups, rng_groups, *args):
        def rematted(variable_groups, rng_groups, *args):
            scope = scope_fn(variable_groups, rng_groups)
            return fn(scope, *args), repack_fn(scope)

        statics = tuple(i + 2 for i in static_argnums)
        return remat(rematted, statics)(variable_groups, rng_groups, *args)

    return lift.pack(inner, (True,), (True,), (True,), name="remat")


def lifted(module_cls, static_argnums: tuple[int, ...] = ()):
    """``module_cls`` rematerialised with :func:`remat`: ``nn.remat(module_cls, static_argnums)``'s
    counterpart (``static_argnums`` count ``self`` as 0, as there)."""
    statics = tuple(i - 1 for i in static_argnums)
    return nn.transforms.lift_transform(_lift_remat, module_cls, static_argnums=statics)
