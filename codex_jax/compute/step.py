"""Pure train and eval steps: ``(state, batch) -> (state, metrics)``; jitted or pmapped by the caller."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from codex_jax.compute.batch import STEP_SCALE, is_masked, model_inputs, token_rows
from codex_jax.compute.loss import (
    inputs_and_targets,
    loss_sum,
    mean_loss,
    token_stats,
    token_sums,
    z_objective_sums,
)
from codex_jax.compute.objectives import is_pairs, objective_grads, pair_eval_sums
from codex_jax.compute.state import TrainState
from codex_jax.models import moe


def variables(params, frozen=None) -> dict:
    """The model's variables: ``{'params': params}``, or with a frozen base (LoRA)
    ``{'params': frozen, 'lora': params}``: ``params`` is always the tree being trained."""
    return {"params": params} if frozen is None else {"params": frozen, "lora": params}


def _micro_grads(params, frozen, batch_BxL, rng, *, model, axis_name, z_loss=0.0, objective=None):
    """(advanced rng, loss, grads, grad_norm, finite, extra metrics) of one micro-batch: forward, backward and
    (under pmap) the all-reduce. Each micro-step takes its dropout key from ``rng``, one split per micro-step.
    With ``z_loss > 0`` the gradients are those of cross entropy + z-loss, ``loss`` is still the cross
    entropy and the extra metrics hold the z-loss term (``{'z_loss'}``). A mixture-of-experts model adds its
    router penalty (``models/moe.penalty``) to the objective and its router terms to the extra metrics
    (``{'moe_balance', 'router_z', 'moe_dropped'}``). A post-training ``objective`` (DPO, GRPO:
    :mod:`codex_jax.compute.objectives`) replaces the next-token loss; its metrics are the extra ones."""
    rng, dropout_rng = jax.random.split(rng)
    if axis_name is not None:
        dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
    extra: dict = {}
    if objective is not None or is_masked(batch_BxL):
        kw = {"model": model, "axis_name": axis_name}
        if objective is not None:
            loss, grads, extra = objective_grads(
                params, frozen, batch_BxL, dropout_rng, objective=objective, **kw
            )
        else:
            loss, grads, extra = _masked_grads(params, frozen, batch_BxL, dropout_rng, z_loss=z_loss, **kw)
        grad_norm = optax.tree.norm(grads)
        return rng, loss, grads, grad_norm, jnp.isfinite(loss) & jnp.isfinite(grad_norm), extra
    inputs_BxT, targets_BxT = inputs_and_targets(batch_BxL)
    rngs = {"dropout": dropout_rng}
    if z_loss:

        def lm_objective(params):
            weights_BxT = jnp.ones(targets_BxT.shape, jnp.float32)
            args = (model, variables(params, frozen), inputs_BxT, targets_BxT, weights_BxT)
            router = {}
            total, ce, z = z_objective_sums(
                *args, z_loss, deterministic=False, rngs=rngs, router_terms=router
            )
            n = targets_BxT.size
            return _plus_router(model, total / n, router), (ce / n, {"z_loss": z_loss * z / n, **router})

    else:

        def lm_objective(params):
            router = {}
            args = (model, variables(params, frozen), inputs_BxT, targets_BxT)
            loss = mean_loss(*args, deterministic=False, rngs=rngs, router_terms=router)
            return _plus_router(model, loss, router), (loss, router)

    (_, (loss, extra)), grads = jax.value_and_grad(lm_objective, has_aux=True)(params)
    if axis_name is not None:
        loss, extra = jax.lax.pmean((loss, extra), axis_name)
        grads = jax.lax.pmean(grads, axis_name)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return rng, loss, grads, grad_norm, finite, extra


def _plus_router(model, value, router: dict, weight=1.0):
    """``value + weight * moe.penalty(router terms)``; ``value`` itself when the model has no MoE layer."""
    return value + moe.penalty(model.cfg, router) * weight if router else value


def _masked_grads(params, frozen, batch, dropout_rng, *, model, axis_name, z_loss=0.0):
    """(loss, grads, extra metrics) of a masked micro-batch. The loss is the mean over its trained targets;
    the gradients are those of ``sum(weights * loss) * step_scale`` summed over devices, so that MultiSteps'
    (or scan's) mean of the K micro-steps is the gradient of the mean over every trained target of the
    optimizer step (micro-batches weighted by their trained targets). ``z_loss > 0`` adds the z-loss of
    every trained target to the differentiated sum (``extra``: its mean term, ``{'z_loss'}``)."""
    inputs_BxT, targets_BxT, weights_BxT, kw = model_inputs(batch)
    scale = jnp.max(batch[STEP_SCALE])  # the same in every row
    rngs = {"dropout": dropout_rng}

    local_count = weights_BxT.sum()

    def objective(params):
        args = (model, variables(params, frozen), inputs_BxT, targets_BxT, weights_BxT)
        router = {}
        if z_loss:
            total, ce, z = z_objective_sums(
                *args, z_loss, deterministic=False, rngs=rngs, router_terms=router, **kw
            )
        else:
            total = ce = loss_sum(*args, deterministic=False, rngs=rngs, router_terms=router, **kw)
            z = None
        # The router terms are means over this micro-batch: weighted by its trained targets, like the loss.
        return _plus_router(model, total, router, local_count) * scale, (ce, z, router)

    (_, (total, z, router)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    count = local_count
    if axis_name is not None:
        total, z, count, grads = jax.lax.psum((total, z, count, grads), axis_name)
        router = jax.lax.pmean(router, axis_name)
    count = jnp.maximum(count, 1.0)
    extra = {} if z is None else {"z_loss": z_loss * z / count}
    return total / count, grads, {**extra, **router}


def _zero_unless(finite, grads):
    return jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)


def train_step(
    state: TrainState,
    batch_BxL,
    frozen=None,
    *,
    model,
    tx,
    axis_name=None,
    skip_nonfinite=False,
    z_loss=0.0,
    objective=None,
):
    """One micro-step: forward, backward, (all-reduce under pmap), optimizer update.

    Gradients and optimizer state exist only for ``state.params``; a LoRA run passes its frozen base
    as ``frozen`` (a separate, non-donated argument) and trains the adapter tree.

    ``batch_BxL`` holds ``seq_len + 1`` tokens per row: inputs are ``[:, :-1]``, targets ``[:, 1:]``. Under
    ``optax.MultiSteps`` the optimizer step only advances on the last micro-step of each accumulation.
    With ``skip_nonfinite`` a micro-step whose loss or gradients are not finite changes nothing but the
    PRNG key (and, when accumulating, contributes a zero gradient), and ``metrics['finite']`` is False.
    ``z_loss > 0`` adds the z-loss to the objective (``metrics['z_loss']``: its term; ``loss`` stays the
    cross entropy). ``objective``: a post-training objective's settings (DPO, GRPO) in place of the
    next-token loss.
    """
    rng = jax.random.wrap_key_data(state.rng)
    grads_of = functools.partial(
        _micro_grads, model=model, axis_name=axis_name, z_loss=z_loss, objective=objective
    )
    rng, loss, grads, grad_norm, finite, extra = grads_of(state.params, frozen, batch_BxL, rng)
    if skip_nonfinite:
        grads = _zero_unless(finite, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    mini_step = getattr(opt_state, "mini_step", None)
    if skip_nonfinite and mini_step is None:  # no accumulation: drop the whole update
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        params = jax.tree.map(keep, params, state.params)
        opt_state = jax.tree.map(keep, opt_state, state.opt_state)
    did_update = jnp.bool_(True) if mini_step is None else mini_step == 0
    new_state = dataclasses.replace(  # what flax's untyped ``state.replace`` does
        state,
        step=state.step + did_update.astype(jnp.int32),
        params=params,
        opt_state=opt_state,
        rng=jax.random.key_data(rng),
    )
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, **extra}
    return new_state, metrics


def train_step_scan(
    state: TrainState,
    batches_KxBxL,
    frozen=None,
    *,
    model,
    tx,
    axis_name=None,
    skip_nonfinite=False,
    z_loss=0.0,
    objective=None,
):
    """One optimizer step over K micro-batches in one call (``train.accum_impl='scan'``).

    ``lax.scan`` runs the micro-steps of :func:`train_step` (same dropout keys, same all-reduces) and
    sums their gradients; the plain optimizer (no MultiSteps) then applies their mean, as MultiSteps
    does after K calls. Metrics are those of every micro-step, stacked: ``{'loss': [K], ...}``. Under
    ``skip_nonfinite`` a non-finite micro-step contributes a zero gradient, as with MultiSteps.
    """

    grads_of = functools.partial(
        _micro_grads, model=model, axis_name=axis_name, z_loss=z_loss, objective=objective
    )

    def micro(carry, batch_BxL):
        rng, grads_sum = carry
        rng, loss, grads, grad_norm, finite, extra = grads_of(state.params, frozen, batch_BxL, rng)
        if skip_nonfinite:
            grads = _zero_unless(finite, grads)
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        return (rng, grads_sum), {"loss": loss, "grad_norm": grad_norm, "finite": finite, **extra}

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    rng = jax.random.wrap_key_data(state.rng)
    (rng, grads_sum), metrics_K = jax.lax.scan(micro, (rng, zeros), batches_KxBxL)
    grads = jax.tree.map(lambda g: g / token_rows(batches_KxBxL).shape[0], grads_sum)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = dataclasses.replace(
        state,
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
        rng=jax.random.key_data(rng),
    )
    return new_state, metrics_K


def train_step_repeated(state: TrainState, batch, frozen=None, *, iterations: int, **kwargs):
    """``iterations`` updates of :func:`train_step` on one batch (GRPO's updates per rollout), counted as
    one step; the metrics are their means (``finite``: all of them were)."""

    def update(s, _):
        return train_step(s, batch, frozen, **kwargs)

    new_state, metrics_I = jax.lax.scan(update, state, length=iterations)
    metrics = {k: jnp.all(v) if k == "finite" else v.mean() for k, v in metrics_I.items()}
    return dataclasses.replace(new_state, step=state.step + 1), metrics


def eval_step(params, batch_BxL, frozen=None, *, model, axis_name=None, objective=None):
    """Summed loss, correct predictions and token count of one held-out batch (a masked batch: of its
    trained targets); a batch of preference pairs: the DPO sums of ``objective`` (``pair_eval_sums``)."""
    if is_pairs(batch_BxL):
        return pair_eval_sums(params, frozen, batch_BxL, model=model, dpo=objective, axis_name=axis_name)
    if is_masked(batch_BxL):
        inputs_BxT, targets_BxT, weights_BxT, kw = model_inputs(batch_BxL)
        stats = token_stats(model, variables(params, frozen), inputs_BxT, targets_BxT, **kw)
        sums = token_sums(*stats, weights_BxT)
    else:
        inputs_BxT, targets_BxT = inputs_and_targets(batch_BxL)
        sums = token_sums(*token_stats(model, variables(params, frozen), inputs_BxT, targets_BxT))
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums
