"""Group relative policy optimisation (GRPO, Shao et al. 2024) on sampled completions.

Each prompt's G completions are rewarded (for code: the sandbox's verdict on the tests) and each completion's
advantage is its reward relative to its group: ``(r - mean_group) / (std_group + 1e-4)`` (``scale_rewards``
off: not divided, as Dr. GRPO). The update maximises the clipped ratio objective with a KL penalty to the
reference (the k3 estimator ``exp(ref - logp) - (ref - logp) - 1``, 0 where the policy is the reference)::

    per_token = -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A) + beta * kl

with ``ratio = exp(logp - old_logp)`` (old: the policy that sampled). ``aggregation`` reduces the per-token
terms over completion tokens: ``grpo`` the mean of each completion then of the completions; ``dapo`` one mean
over every token of the batch; ``dr_grpo`` the sum divided by ``completions * max_completion_tokens``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from codex_jax.compute.loss import cross_entropy

AGGREGATIONS = ("grpo", "dapo", "dr_grpo")


@dataclasses.dataclass(frozen=True)
class GRPO:
    """The objective's settings (``train.grpo.*``)."""

    epsilon: float = 0.2
    epsilon_high: float = 0.0  # 0: epsilon
    beta: float = 0.04
    aggregation: str = "grpo"
    scale_rewards: bool = True
    max_completion_tokens: int = 0  # dr_grpo's constant normaliser (0: the batch's token axis)
    iterations: int = 1  # optimizer updates per rollout (the training loop's GRPO step)


def token_logps(model, variables, tokens_NxL):
    """Per-target float32 log-probabilities ``[N, L-1]`` of rows of tokens (no dropout)."""
    logits = model.apply(variables, tokens_NxL[:, :-1], deterministic=True)
    loss_NxT, _ = cross_entropy(logits, tokens_NxL[:, 1:])
    return -loss_NxT


def group_advantages(rewards_PxG, scale: bool = True):
    """Each completion's reward relative to its prompt's group (the unbiased std, as TRL)."""
    rewards_PxG = rewards_PxG.astype(jnp.float32)
    centred_PxG = rewards_PxG - rewards_PxG.mean(axis=1, keepdims=True)
    if not scale:
        return centred_PxG
    return centred_PxG / (rewards_PxG.std(axis=1, ddof=1, keepdims=True) + 1e-4)


def k3_kl(logps_NxT, ref_logps_NxT):
    """Per-token k3 estimate of KL(policy || reference): ``exp(d) - d - 1`` with ``d = ref - logp``."""
    d_NxT = ref_logps_NxT - logps_NxT
    return jnp.expm1(d_NxT) - d_NxT  # = exp(d) - 1 - d, without float32 losing small d to rounding


def grpo_loss(logps_NxT, old_logps_NxT, ref_logps_NxT, advantages_N, mask_NxT, grpo: GRPO):
    """``(loss, metrics)`` of N completions' per-token log-probs under the policy being trained, the policy
    that sampled them and the reference; ``mask`` is 1 on completion tokens."""
    if grpo.aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown GRPO aggregation {grpo.aggregation!r} (one of {', '.join(AGGREGATIONS)})")
    mask_NxT = mask_NxT.astype(jnp.float32)
    high = grpo.epsilon_high or grpo.epsilon
    ratio_NxT = jnp.exp(logps_NxT - old_logps_NxT)
    a_Nx1 = advantages_N[:, None]
    clipped_NxT = jnp.clip(ratio_NxT, 1.0 - grpo.epsilon, 1.0 + high)
    per_token_NxT = -jnp.minimum(ratio_NxT * a_Nx1, clipped_NxT * a_Nx1)
    kl_NxT = k3_kl(logps_NxT, ref_logps_NxT)
    if grpo.beta:
        per_token_NxT = per_token_NxT + grpo.beta * kl_NxT
    tokens_N = mask_NxT.sum(-1)
    total = jnp.maximum(mask_NxT.sum(), 1.0)
    if grpo.aggregation == "grpo":
        loss = ((per_token_NxT * mask_NxT).sum(-1) / jnp.maximum(tokens_N, 1.0)).mean()
    elif grpo.aggregation == "dapo":
        loss = (per_token_NxT * mask_NxT).sum() / total
    else:
        width = grpo.max_completion_tokens or mask_NxT.shape[1]
        loss = (per_token_NxT * mask_NxT).sum() / (mask_NxT.shape[0] * width)
    clipped_low = (ratio_NxT < 1.0 - grpo.epsilon) & (a_Nx1 < 0)
    clipped_high = (ratio_NxT > 1.0 + high) & (a_Nx1 > 0)
    metrics = {
        "kl": (kl_NxT * mask_NxT).sum() / total,
        "clip_ratio": ((clipped_low | clipped_high) * mask_NxT).sum() / total,
        "completion_length": tokens_N.mean(),
    }
    return loss, metrics
