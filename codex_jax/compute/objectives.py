"""The post-training objectives the train step plugs in (``train.objective``): DPO on batches of preference
pairs, GRPO on batches of rewarded completions. The step (:mod:`codex_jax.compute.step`) calls
:func:`objective_grads` instead of the next-token loss when the runner was built with an objective.

Batches are dicts of device arrays, split over the batch axis like masked LM batches:

    DPO   'chosen', 'rejected'  int32 [B, L]; 'chosen_weights', 'rejected_weights' float32 [B, L - 1];
          a full fine-tune adds the cached reference log-probs 'ref_chosen', 'ref_rejected' [B]
          (a LoRA run's reference is its base with the adapters off: :mod:`codex_jax.compute.preference`);
          packed (``train.dpo.packing``): 'tokens', 'segments' [R, L], 'weights' [R, L - 1], 'slots'
          [R, S] and each pair's 'chosen_at', 'rejected_at' [B] (:mod:`codex_jax.data.pair_packing`)
    GRPO  'tokens' int32 [N, L]; 'completion_mask', 'old_logps', 'ref_logps' float32 [N, L - 1];
          'advantages' float32 [N]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from codex_jax.compute.grpo import GRPO, grpo_loss, token_logps
from codex_jax.compute.preference import (
    CHOSEN,
    DPO,
    dpo_losses,
    dpo_metrics,
    dpo_objective,
    is_packed,
    pair_logps,
    reference_logps,
)

ROLLOUT_KEYS = ("tokens", "completion_mask", "old_logps", "ref_logps", "advantages")


def _variables(params, frozen) -> dict:
    return {"params": params} if frozen is None else {"params": frozen, "lora": params}


def _loss(params, frozen, batch, rng, *, model, objective):
    """``(loss, metrics)`` of one batch under ``objective`` (a :class:`DPO` or :class:`GRPO`)."""
    if isinstance(objective, DPO):
        return dpo_objective(
            params, frozen, batch, model=model, dpo=objective, deterministic=False, rngs={"dropout": rng}
        )
    if isinstance(objective, GRPO):
        logps_NxT = token_logps(model, _variables(params, frozen), batch["tokens"])
        return grpo_loss(
            logps_NxT,
            batch["old_logps"],
            batch["ref_logps"],
            batch["advantages"],
            batch["completion_mask"],
            objective,
        )
    raise TypeError(f"unknown objective {objective!r}")


def objective_grads(params, frozen, batch, rng, *, model, objective, axis_name=None):
    """``(loss, grads, metrics)`` of one (micro-)batch: the objective's mean over the batch, and under pmap
    its mean over the devices (each holding an equal share of the rows)."""
    (loss, metrics), grads = jax.value_and_grad(_loss, has_aux=True)(
        params, frozen, batch, rng, model=model, objective=objective
    )
    if axis_name is not None:
        loss, metrics, grads = jax.lax.pmean((loss, metrics, grads), axis_name)
    return loss, grads, metrics


def pair_eval_sums(params, frozen, batch, *, model, dpo: DPO, axis_name=None) -> dict:
    """Sums over held-out pairs of the DPO loss and metrics (``'pairs'``: how many), for means across
    batches (the reference as in training: the batch's cached log-probs, or the LoRA base)."""
    v = _variables(params, frozen)
    chosen_B, chosen_n_B, rejected_B, rejected_n_B = pair_logps(model, v, batch)
    ref_chosen_B, ref_rejected_B = reference_logps(model, frozen, batch)
    losses_B, (chosen_r_B, rejected_r_B) = dpo_losses(
        chosen_B, rejected_B, ref_chosen_B, ref_rejected_B, chosen_n_B, rejected_n_B, dpo
    )
    n = jnp.float32(losses_B.shape[0])
    means = {"loss": losses_B.mean(), **dpo_metrics(chosen_r_B, rejected_r_B, chosen_B, rejected_B)}
    sums = {k: m * n for k, m in means.items()} | {"pairs": n}
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
    return sums


def is_pairs(batch) -> bool:
    """Whether ``batch`` is a DPO batch of preference pairs."""
    return isinstance(batch, dict) and (CHOSEN in batch or is_packed(batch))
