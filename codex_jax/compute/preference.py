"""Direct preference optimisation (DPO, Rafailov et al. 2023) and its ``ipo`` and ``hinge`` variants.

A batch holds pairs: ``chosen`` and ``rejected`` token rows (``seq_len + 1`` tokens, the prompt then the
completion) with per-target weights that are 1 on the completion's tokens only. The policy's log-probability
of each completion is the weighted sum of its targets' log-probabilities; the reference's is the same under
the starting weights: for a LoRA run the base with the adapters off (no second copy of the model), else
values computed once before training and passed in the batch (``ref_chosen``, ``ref_rejected``).

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

from codex_jax.compute.loss import cross_entropy

LOSSES = ("sigmoid", "ipo", "hinge")
CHOSEN, REJECTED = "chosen", "rejected"
REF_CHOSEN, REF_REJECTED = "ref_chosen", "ref_rejected"


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
    base = {"params": frozen}
    chosen_B, _ = completion_logps(model, base, batch[CHOSEN], batch[f"{CHOSEN}_weights"])
    rejected_B, _ = completion_logps(model, base, batch[REJECTED], batch[f"{REJECTED}_weights"])
    return jax.lax.stop_gradient(chosen_B), jax.lax.stop_gradient(rejected_B)


def dpo_objective(params, frozen, batch, *, model, dpo: DPO, deterministic=True, rngs=None):
    """``(mean loss over the pairs, metrics)`` of one batch of pairs; ``params`` is the trained tree (a
    LoRA run: the adapters, with ``frozen`` the base)."""
    v = {"params": params} if frozen is None else {"params": frozen, "lora": params}
    kw = {"deterministic": deterministic, "rngs": rngs}
    chosen_B, chosen_n_B = completion_logps(model, v, batch[CHOSEN], batch[f"{CHOSEN}_weights"], **kw)
    rejected_B, rejected_n_B = completion_logps(model, v, batch[REJECTED], batch[f"{REJECTED}_weights"], **kw)
    ref_chosen_B, ref_rejected_B = reference_logps(model, frozen, batch)
    losses_B, (chosen_r_B, rejected_r_B) = dpo_losses(
        chosen_B, rejected_B, ref_chosen_B, ref_rejected_B, chosen_n_B, rejected_n_B, dpo
    )
    return losses_B.mean(), dpo_metrics(chosen_r_B, rejected_r_B, chosen_B, rejected_B)
