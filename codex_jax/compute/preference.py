"""Direct preference optimisation (DPO, Rafailov et al. 2023) and its ``ipo`` and ``hinge`` variants.

A batch holds pairs: ``chosen`` and ``rejected`` token rows (``seq_len + 1`` tokens, the prompt then the
completion) with per-target weights that are 1 on the completion's tokens only. The policy's log-probability
of each completion is the weighted sum of its targets' log-probabilities; the reference's is the same under
the starting weights: for a LoRA run the base with the adapters off (no second copy of the model), else
values computed once before training and passed in the batch (``ref_chosen``, ``ref_rejected``).
A packed batch (``train.dpo.packing``, :mod:`codex_jax.data.pair_packing`) holds the sides as segments of
shared rows instead; each side's sum is a segment sum into the row's slots, gathered back per pair.

Losses, as TRL's ``DPOTrainer`` (1.16) computes them, with ``delta = (chosen - ref_chosen) - (rejected -
ref_rejected)``: ``sigmoid`` ``-log sigmoid(beta delta)`` (with ``label_smoothing`` e, the conservative
DPO ``-(1-e) log sigmoid(beta delta) - e log sigmoid(-beta delta)``), ``hinge`` ``relu(1 - beta delta)``,
``ipo`` ``(delta_per_token - 1 / (2 beta))**2`` (each log-ratio divided by its completion's token count).
Metrics carry TRL's names: ``rewards/chosen`` (``beta * (chosen - ref_chosen)``), ``rewards/rejected``,
``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from codex_jax.compute.batch import segment_positions
from codex_jax.compute.loss import cross_entropy

HIGHEST = jax.lax.Precision.HIGHEST

LOSSES = ("sigmoid", "ipo", "hinge")
CHOSEN, REJECTED = "chosen", "rejected"
REF_CHOSEN, REF_REJECTED = "ref_chosen", "ref_rejected"
# a packed batch (``train.dpo.packing``): rows of sides, each side its own segment (1, 2, ...; 0 pads)
ROWS, ROW_WEIGHTS, ROW_SEGMENTS = "tokens", "weights", "segments"
CHOSEN_AT, REJECTED_AT = "chosen_at", "rejected_at"  # [B] slot of each pair's side: row * slots + segment - 1
SLOTS = "slots"  # [R, slots] float32: 1 where a side sits (empty slots: 0, never gathered)


@dataclasses.dataclass(frozen=True)
class DPO:
    """The loss and its settings (``train.dpo.*``)."""

    loss: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0


def completion_logps(model, variables, tokens_BxL, weights_BxT, *, deterministic=True, rngs=None):
    """``(sum of log p(target) over weighted targets [B], weighted target count [B])`` of rows of
    ``seq_len + 1`` tokens, through ``model.apply`` (float32)."""
    inputs_BxT, targets_BxT = tokens_BxL[:, :-1], tokens_BxL[:, 1:]
    logits_BxTxV = model.apply(variables, inputs_BxT, deterministic=deterministic, rngs=rngs)
    loss_BxT, _ = cross_entropy(logits_BxTxV, targets_BxT)
    weights_BxT = weights_BxT.astype(jnp.float32)
    return -(loss_BxT * weights_BxT).sum(-1), weights_BxT.sum(-1)


def is_packed(batch) -> bool:
    """Whether ``batch`` holds packed pairs (rows of segments and each pair's slots)."""
    return CHOSEN_AT in batch


def packed_slot_logps(model, variables, batch, slots: int, *, deterministic=True, rngs=None):
    """``(log-prob sums [R * slots], weighted target counts [R * slots])`` of each segment (side) of packed
    rows: attention stays inside a segment and positions restart; the sums are a one-hot segment sum."""
    tokens_RxL, segments_RxL = batch[ROWS], batch[ROW_SEGMENTS]
    inputs_RxT, targets_RxT, segments_RxT = tokens_RxL[:, :-1], tokens_RxL[:, 1:], segments_RxL[:, :-1]
    logits_RxTxV = model.apply(
        variables,
        inputs_RxT,
        positions_BxT=segment_positions(segments_RxT),
        segments_BxT=segments_RxT,
        deterministic=deterministic,
        rngs=rngs,
    )
    loss_RxT, _ = cross_entropy(logits_RxTxV, targets_RxT)
    weights_RxT = batch[ROW_WEIGHTS].astype(jnp.float32)
    onehot_RxTxS = jax.nn.one_hot(segments_RxT - 1, slots, dtype=jnp.float32)  # segment 0 (padding): zeros
    mask_RxS = batch[SLOTS].astype(jnp.float32)
    logps_RxS = jnp.einsum("rt,rts->rs", -loss_RxT * weights_RxT, onehot_RxTxS, precision=HIGHEST) * mask_RxS
    counts_RxS = jnp.einsum("rt,rts->rs", weights_RxT, onehot_RxTxS, precision=HIGHEST) * mask_RxS
    return logps_RxS.reshape(-1), counts_RxS.reshape(-1)


def pair_logps(model, variables, batch, *, deterministic=True, rngs=None) -> tuple:
    """``(chosen [B], chosen counts [B], rejected [B], rejected counts [B])`` of a batch of pairs, packed
    or not (equal within float rounding)."""
    kw = {"deterministic": deterministic, "rngs": rngs}
    if is_packed(batch):
        slots = batch[SLOTS].shape[-1]  # static: the row's slots, 1 where a side sits
        logps, counts = packed_slot_logps(model, variables, batch, slots, **kw)
        c, r = batch[CHOSEN_AT], batch[REJECTED_AT]
        return logps[c], counts[c], logps[r], counts[r]
    chosen_B, chosen_n_B = completion_logps(model, variables, batch[CHOSEN], batch[f"{CHOSEN}_weights"], **kw)
    rejected_B, rejected_n_B = completion_logps(
        model, variables, batch[REJECTED], batch[f"{REJECTED}_weights"], **kw
    )
    return chosen_B, chosen_n_B, rejected_B, rejected_n_B


def dpo_losses(chosen_B, rejected_B, ref_chosen_B, ref_rejected_B, chosen_n_B, rejected_n_B, dpo: DPO):
    """Per-pair losses ``[B]`` and the rewards ``(beta * chosen log-ratio, beta * rejected log-ratio)``."""
    chosen_ratio_B = chosen_B - ref_chosen_B
    rejected_ratio_B = rejected_B - ref_rejected_B
    delta_B = chosen_ratio_B - rejected_ratio_B
    beta, e = dpo.beta, dpo.label_smoothing
    if dpo.loss == "sigmoid":
        losses_B = -(1.0 - e) * jax.nn.log_sigmoid(beta * delta_B) - e * jax.nn.log_sigmoid(-beta * delta_B)
    elif dpo.loss == "hinge":
        losses_B = jax.nn.relu(1.0 - beta * delta_B)
    elif dpo.loss == "ipo":
        per_token_B = chosen_ratio_B / jnp.maximum(chosen_n_B, 1.0) - rejected_ratio_B / jnp.maximum(
            rejected_n_B, 1.0
        )
        losses_B = (per_token_B - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {dpo.loss!r} (one of {', '.join(LOSSES)})")
    rewards = jax.lax.stop_gradient(beta * chosen_ratio_B), jax.lax.stop_gradient(beta * rejected_ratio_B)
    return losses_B, rewards


def dpo_metrics(chosen_rewards_B, rejected_rewards_B, chosen_B, rejected_B) -> dict:
    """TRL's DPO metrics of one batch (means over its pairs)."""
    return {
        "rewards/chosen": chosen_rewards_B.mean(),
        "rewards/rejected": rejected_rewards_B.mean(),
        "rewards/accuracies": (chosen_rewards_B > rejected_rewards_B).astype(jnp.float32).mean(),
        "rewards/margins": (chosen_rewards_B - rejected_rewards_B).mean(),
        "logps/chosen": jax.lax.stop_gradient(chosen_B).mean(),
        "logps/rejected": jax.lax.stop_gradient(rejected_B).mean(),
    }


def reference_logps(model, frozen, batch) -> tuple:
    """The reference's ``(chosen [B], rejected [B])``: cached in the batch, else (a LoRA run) the frozen
    base with its adapters off."""
    if REF_CHOSEN in batch:
        return batch[REF_CHOSEN], batch[REF_REJECTED]
    if frozen is None:
        raise ValueError("a full fine-tune's DPO batch must carry the cached reference log-probs")
    chosen_B, _, rejected_B, _ = pair_logps(model, {"params": frozen}, batch)
    return jax.lax.stop_gradient(chosen_B), jax.lax.stop_gradient(rejected_B)


def dpo_objective(params, frozen, batch, *, model, dpo: DPO, deterministic=True, rngs=None):
    """``(mean loss over the pairs, metrics)`` of one batch of pairs; ``params`` is the trained tree (a
    LoRA run: the adapters, with ``frozen`` the base)."""
    v = {"params": params} if frozen is None else {"params": frozen, "lora": params}
    chosen_B, chosen_n_B, rejected_B, rejected_n_B = pair_logps(
        model, v, batch, deterministic=deterministic, rngs=rngs
    )
    ref_chosen_B, ref_rejected_B = reference_logps(model, frozen, batch)
    losses_B, (chosen_r_B, rejected_r_B) = dpo_losses(
        chosen_B, rejected_B, ref_chosen_B, ref_rejected_B, chosen_n_B, rejected_n_B, dpo
    )
    return losses_B.mean(), dpo_metrics(chosen_r_B, rejected_r_B, chosen_B, rejected_B)
