"""Next-token loss: the float32 cross entropy of a batch of ``seq_len + 1`` token rows, and the summed
held-out statistics that training's eval and ``eval.metrics`` both use.

With ``model.loss_chunk = C`` and sequences longer than C, the loss never holds the ``[B, T, V]``
float32 logits: :func:`chunked_loss_sum` computes them ``[B, C, V]`` at a time from the final hidden
states and the output head, and (a custom VJP) their gradients in the same pass, so backward holds
only ``[B, T, D]`` and ``[V, D]`` (no logits recomputed, no extra FLOPs). :func:`chunked_token_stats`
is the forward-only version for evaluation. Both equal the unchunked path within float32 rounding, and
both soft-cap the logits as the model does (``model.final_softcap``, Gemma 2).

``train.z_loss > 0`` adds ``z_loss * logsumexp(logits)**2`` per trained target to the training objective
(:func:`z_objective_sums`, chunked by :func:`chunked_z_objective`); evaluation never includes it.

A mixture-of-experts model (``model.num_experts > 0``) sows its router statistics into the ``'moe'``
collection: the training losses take ``router_terms`` (a dict they fill with ``models/moe.router_losses``
of their forward pass: load balance, router z-loss, dropped fraction), and the step adds
:func:`codex_jax.models.moe.penalty` of them to the objective.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from codex_jax.models import moe
from codex_jax.models.attention import softcap


def apply_model(model, variables, inputs_BxT, router_terms: dict | None = None, **kw):
    """``model.apply(variables, inputs, **kw)``; with ``router_terms`` (a dict) and a mixture-of-experts
    model, the ``'moe'`` collection is made mutable and ``router_terms`` gets :func:`moe.router_losses`
    of it."""
    if router_terms is None or not model.cfg.num_experts:
        return model.apply(variables, inputs_BxT, **kw)
    out, state = model.apply(variables, inputs_BxT, mutable=[moe.COLLECTION], **kw)
    router_terms.update(moe.router_losses(state.get(moe.COLLECTION, {})))
    return out


def inputs_and_targets(batch_BxL):
    """``(inputs [:, :-1], targets [:, 1:])`` of rows that hold ``seq_len + 1`` tokens."""
    return batch_BxL[:, :-1], batch_BxL[:, 1:]


def cross_entropy(logits_BxTxV, targets_BxT):
    """Per-token float32 cross entropy and whether the argmax hit the target."""
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    loss_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
    correct_BxT = jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT
    return loss_BxT, correct_BxT


def token_sums(loss_BxT, correct_BxT, weights_BxT=None) -> dict:
    """``{'loss_sum', 'correct', 'tokens'}`` of one batch (float32; summed over batches and devices); with
    ``weights`` (a masked batch) only the weighted targets count."""
    if weights_BxT is not None:
        return {
            "loss_sum": (loss_BxT * weights_BxT).sum(),
            "correct": (correct_BxT * weights_BxT).sum(dtype=jnp.float32),
            "tokens": weights_BxT.sum(dtype=jnp.float32),
        }
    return {
        "loss_sum": loss_BxT.sum(),
        "correct": correct_BxT.sum(dtype=jnp.float32),
        "tokens": jnp.float32(loss_BxT.size),
    }


def chunks_apply(chunk: int, seq_len: int) -> bool:
    """Whether ``model.loss_chunk = chunk`` splits sequences of ``seq_len`` positions (0: never)."""
    return 0 < chunk < seq_len


def _split(a_BxT, chunk):
    """``[B, T, ...] -> [T/C, B, C, ...]``, zero-padded to a multiple of C positions."""
    B, T = a_BxT.shape[:2]
    n = -(-T // chunk)
    pad = [(0, 0), (0, n * chunk - T)] + [(0, 0)] * (a_BxT.ndim - 2)
    a = jnp.pad(a_BxT, pad).reshape(B, n, chunk, *a_BxT.shape[2:])
    return jnp.swapaxes(a, 0, 1)


def _join(a_NxBxC, T):
    """Inverse of :func:`_split`: ``[T/C, B, C, ...] -> [B, T, ...]``."""
    a = jnp.swapaxes(a_NxBxC, 0, 1)
    return a.reshape(a.shape[0], -1, *a.shape[3:])[:, :T]


def _chunk_logits(x_BxCxD, head_VxD, cap: float):
    return softcap(jnp.einsum("bcd,vd->bcv", x_BxCxD, head_VxD, preferred_element_type=jnp.float32), cap)


def chunked_token_stats(x_BxTxD, head_VxD, targets_BxT, chunk: int, cap: float = 0.0):
    """Per-token float32 cross entropy and argmax hits of ``softcap(x @ head.T, cap)``, C positions at a
    time."""
    T = targets_BxT.shape[1]

    def one(_, xs):
        x_BxCxD, targets_BxC = xs
        return None, cross_entropy(_chunk_logits(x_BxCxD, head_VxD, cap), targets_BxC)

    _, (loss_N, correct_N) = jax.lax.scan(one, None, (_split(x_BxTxD, chunk), _split(targets_BxT, chunk)))
    return _join(loss_N, T), _join(correct_N, T)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def chunked_loss_sum(x_BxTxD, head_VxD, targets_BxT, weights_BxT, chunk: int, cap: float = 0.0):
    """``sum(weights * cross_entropy(softcap(x @ head.T, cap), targets))`` without the ``[B, T, V]``
    logits."""
    loss_BxT, _ = chunked_token_stats(x_BxTxD, head_VxD, targets_BxT, chunk, cap)
    return (loss_BxT * weights_BxT).sum()


def _loss_sum_fwd(x_BxTxD, head_VxD, targets_BxT, weights_BxT, chunk, cap):
    """The loss and, chunk by chunk, its gradients (d loss / d logits = weight * (softmax - onehot))."""
    total, _, residuals = _chunked_sums_and_grads(
        x_BxTxD, head_VxD, targets_BxT, weights_BxT, chunk, 0.0, cap
    )
    return total, residuals


def _chunked_sums_and_grads(x_BxTxD, head_VxD, targets_BxT, weights_BxT, chunk, z_loss, cap):
    """``(sum(w * (ce + z_loss * lse**2)), sum(w * lse**2), residuals)``, chunk by chunk, with the gradients
    (d / d logits = weight * (softmax * (1 + 2 z_loss lse) - onehot), times ``1 - (logits / cap)**2``
    through a soft-cap) as the residuals. ``z_loss == 0`` computes no log-partition terms at all (its
    second sum is 0)."""
    T, V = targets_BxT.shape[1], head_VxD.shape[0]

    def one(dhead_VxD, xs):
        x_BxCxD, targets_BxC, weights_BxC = xs
        logits_BxCxV = _chunk_logits(x_BxCxD, head_VxD, cap)
        loss_BxC = optax.softmax_cross_entropy_with_integer_labels(logits_BxCxV, targets_BxC)
        probs_BxCxV = jax.nn.softmax(logits_BxCxV, axis=-1)
        z_sums = ()
        if z_loss:
            lse_BxC = jax.nn.logsumexp(logits_BxCxV, axis=-1)
            z_sums = ((lse_BxC**2 * weights_BxC).sum(),)
            loss_BxC = loss_BxC + z_loss * lse_BxC**2
            probs_BxCxV = probs_BxCxV * (1.0 + 2.0 * z_loss * lse_BxC)[..., None]
        dlogits_BxCxV = (probs_BxCxV - jax.nn.one_hot(targets_BxC, V)) * weights_BxC[..., None]
        if cap:  # d cap * tanh(z / cap) / dz = 1 - tanh(z / cap)**2
            dlogits_BxCxV = dlogits_BxCxV * (1.0 - jnp.square(logits_BxCxV / cap))
        dlogits_BxCxV = dlogits_BxCxV.astype(head_VxD.dtype)
        dx_BxCxD = jnp.einsum("bcv,vd->bcd", dlogits_BxCxV, head_VxD, preferred_element_type=jnp.float32)
        dhead_VxD += jnp.einsum("bcv,bcd->vd", dlogits_BxCxV, x_BxCxD, preferred_element_type=jnp.float32)
        return dhead_VxD, ((loss_BxC * weights_BxC).sum(), dx_BxCxD.astype(x_BxCxD.dtype), *z_sums)

    xs = (_split(x_BxTxD, chunk), _split(targets_BxT, chunk), _split(weights_BxT, chunk))
    dhead_VxD = jnp.zeros(head_VxD.shape, jnp.float32)
    dhead_VxD, (loss_N, dx_N, *z_N) = jax.lax.scan(one, dhead_VxD, xs)
    residuals = (_join(dx_N, T), dhead_VxD.astype(head_VxD.dtype), targets_BxT, weights_BxT)
    return loss_N.sum(), (z_N[0].sum() if z_N else jnp.float32(0.0)), residuals


def _loss_sum_bwd(chunk, cap, residuals, g):
    dx_BxTxD, dhead_VxD, targets_BxT, weights_BxT = residuals
    del chunk, cap, targets_BxT
    return g.astype(dx_BxTxD.dtype) * dx_BxTxD, g.astype(dhead_VxD.dtype) * dhead_VxD, None, None


chunked_loss_sum.defvjp(_loss_sum_fwd, _loss_sum_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def chunked_z_objective(
    x_BxTxD, head_VxD, targets_BxT, weights_BxT, chunk: int, z_loss: float, cap: float = 0.0
):
    """``(sum(weights * (ce + z_loss * lse**2)), sum(weights * lse**2))`` of ``x @ head.T`` without the
    ``[B, T, V]`` logits (lse: the log-partition of each position's logits). Only the first output is
    differentiated; the second is a statistic (its cotangent is ignored)."""
    total, z_sum, _ = _chunked_sums_and_grads(x_BxTxD, head_VxD, targets_BxT, weights_BxT, chunk, z_loss, cap)
    return total, z_sum


def _z_objective_fwd(x_BxTxD, head_VxD, targets_BxT, weights_BxT, chunk, z_loss, cap):
    total, z_sum, residuals = _chunked_sums_and_grads(
        x_BxTxD, head_VxD, targets_BxT, weights_BxT, chunk, z_loss, cap
    )
    return (total, z_sum), residuals


def _z_objective_bwd(chunk, z_loss, cap, residuals, g):
    del z_loss
    return _loss_sum_bwd(chunk, cap, residuals, g[0])


chunked_z_objective.defvjp(_z_objective_fwd, _z_objective_bwd)


def log_partition(logits_BxTxV):
    """Per-position float32 ``logsumexp`` of the logits (the z-loss penalises its square)."""
    return jax.nn.logsumexp(logits_BxTxV.astype(jnp.float32), axis=-1)


def z_objective_sums(
    model,
    variables,
    inputs_BxT,
    targets_BxT,
    weights_BxT,
    z_loss: float,
    *,
    deterministic=True,
    rngs=None,
    router_terms: dict | None = None,
    **kw,
):
    """``(objective, cross_entropy, lse_squared)`` sums of one batch, each weighted by ``weights``: the
    objective is ``cross_entropy + z_loss * lse**2`` (the z-loss of PaLM, keeping the log-partition near 0),
    through the full logits or in chunks (``kw``: as :func:`loss_sum`; ``router_terms``:
    :func:`apply_model`)."""
    kwargs = {"deterministic": deterministic, "rngs": rngs, "router_terms": router_terms, **kw}
    if not chunks_apply(model.cfg.loss_chunk, targets_BxT.shape[1]):
        logits_BxTxV = apply_model(model, variables, inputs_BxT, **kwargs)
        loss_BxT, _ = cross_entropy(logits_BxTxV, targets_BxT)
        z_sum = (log_partition(logits_BxTxV) ** 2 * weights_BxT).sum()
        ce_sum = (loss_BxT * weights_BxT).sum()
        return ce_sum + z_loss * z_sum, ce_sum, z_sum
    x_BxTxD, head_VxD = apply_model(model, variables, inputs_BxT, hidden=True, **kwargs)
    total, z_sum = chunked_z_objective(
        x_BxTxD, head_VxD, targets_BxT, weights_BxT, model.cfg.loss_chunk, z_loss, model.cfg.final_softcap
    )
    return total, total - z_loss * z_sum, z_sum


def mean_loss(model, variables, inputs_BxT, targets_BxT, *, deterministic=True, rngs=None, router_terms=None):
    """Mean next-token cross entropy of ``model`` on one batch: through the full logits, or in chunks of
    ``model.cfg.loss_chunk`` positions when that splits the sequence (:func:`chunks_apply`);
    ``router_terms``: :func:`apply_model`."""
    kwargs = {"deterministic": deterministic, "rngs": rngs, "router_terms": router_terms}
    if not chunks_apply(model.cfg.loss_chunk, targets_BxT.shape[1]):
        loss_BxT, _ = cross_entropy(apply_model(model, variables, inputs_BxT, **kwargs), targets_BxT)
        return loss_BxT.mean()
    x_BxTxD, head_VxD = apply_model(model, variables, inputs_BxT, hidden=True, **kwargs)
    weights_BxT = jnp.ones(targets_BxT.shape, jnp.float32)
    return (
        chunked_loss_sum(
            x_BxTxD, head_VxD, targets_BxT, weights_BxT, model.cfg.loss_chunk, model.cfg.final_softcap
        )
        / targets_BxT.size
    )


def loss_sum(
    model,
    variables,
    inputs_BxT,
    targets_BxT,
    weights_BxT,
    *,
    deterministic=True,
    rngs=None,
    router_terms=None,
    **kw,
):
    """``sum(weights * cross entropy)`` of one masked batch (``kw``: the model's segment positions and
    attention mask, :func:`codex_jax.compute.batch.model_inputs`), through the full logits or in chunks;
    ``router_terms``: :func:`apply_model`."""
    kwargs = {"deterministic": deterministic, "rngs": rngs, "router_terms": router_terms, **kw}
    if not chunks_apply(model.cfg.loss_chunk, targets_BxT.shape[1]):
        loss_BxT, _ = cross_entropy(apply_model(model, variables, inputs_BxT, **kwargs), targets_BxT)
        return (loss_BxT * weights_BxT).sum()
    x_BxTxD, head_VxD = apply_model(model, variables, inputs_BxT, hidden=True, **kwargs)
    return chunked_loss_sum(
        x_BxTxD, head_VxD, targets_BxT, weights_BxT, model.cfg.loss_chunk, model.cfg.final_softcap
    )


def token_stats(model, variables, inputs_BxT, targets_BxT, **kw):
    """Per-token float32 cross entropy and argmax hits (deterministic), chunked as :func:`mean_loss`
    (``kw``: segment positions and attention mask of a masked batch)."""
    if not chunks_apply(model.cfg.loss_chunk, targets_BxT.shape[1]):
        return cross_entropy(model.apply(variables, inputs_BxT, deterministic=True, **kw), targets_BxT)
    x_BxTxD, head_VxD = model.apply(variables, inputs_BxT, deterministic=True, hidden=True, **kw)
    return chunked_token_stats(x_BxTxD, head_VxD, targets_BxT, model.cfg.loss_chunk, model.cfg.final_softcap)
