"""The GRPO objective equals a hand-written NumPy reference on fixed log-probs and rewards (each loss
aggregation), and its KL is 0 where the policy is the reference (the first step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codex_jax.compute.grpo import GRPO, group_advantages, grpo_loss

P, G, T = 3, 4, 7


def _numpy_grpo(logp, old, ref, rewards, mask, grpo: GRPO, scale=True):
    """GRPO / DAPO / Dr. GRPO as the papers (and TRL's GRPOTrainer) write them, in float64."""
    r = rewards.astype(np.float64)
    adv = r - r.mean(1, keepdims=True)
    if scale:
        adv = adv / (r.std(1, ddof=1, keepdims=True) + 1e-4)
    adv = adv.reshape(-1, 1)
    ratio = np.exp(logp - old)
    high = grpo.epsilon_high or grpo.epsilon
    surrogate = np.minimum(ratio * adv, np.clip(ratio, 1 - grpo.epsilon, 1 + high) * adv)
    kl = np.exp(ref - logp) - (ref - logp) - 1
    per_token = -surrogate + grpo.beta * kl
    if grpo.aggregation == "grpo":
        loss = np.mean([(per_token[i] * mask[i]).sum() / mask[i].sum() for i in range(len(mask))])
    elif grpo.aggregation == "dapo":
        loss = (per_token * mask).sum() / mask.sum()
    else:
        loss = (per_token * mask).sum() / (mask.shape[0] * (grpo.max_completion_tokens or mask.shape[1]))
    return loss, (kl * mask).sum() / mask.sum()


def _fixed():
    rng = np.random.default_rng(0)
    logp = -rng.uniform(0.1, 3.0, (P * G, T))
    old = logp + rng.normal(0, 0.3, logp.shape)  # far enough for both clip sides to bite
    ref = logp + rng.normal(0, 0.2, logp.shape)
    rewards = rng.integers(0, 2, (P, G)).astype(np.float64) + rng.normal(0, 0.1, (P, G))
    mask = np.ones((P * G, T))
    for i, n in enumerate(rng.integers(1, T + 1, P * G)):
        mask[i, n:] = 0
    return logp, old, ref, rewards, mask


@pytest.mark.parametrize(
    "grpo",
    [
        GRPO(aggregation="grpo"),
        GRPO(aggregation="dapo", epsilon=0.1, epsilon_high=0.28),
        GRPO(aggregation="dr_grpo", beta=0.0, max_completion_tokens=9),
        GRPO(aggregation="dr_grpo", scale_rewards=False),
    ],
    ids=["grpo", "dapo", "dr_grpo", "dr_grpo-unscaled"],
)
def test_grpo_objective_equals_numpy(grpo):
    logp, old, ref, rewards, mask = _fixed()
    expected, expected_kl = _numpy_grpo(logp, old, ref, rewards, mask, grpo, grpo.scale_rewards)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    advantages = group_advantages(f32(rewards), grpo.scale_rewards).reshape(-1)
    loss, metrics = jax.jit(grpo_loss, static_argnums=5)(
        f32(logp), f32(old), f32(ref), advantages, f32(mask), grpo
    )
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(metrics["kl"]) == pytest.approx(expected_kl, abs=1e-6)
    assert 0.0 < float(metrics["clip_ratio"]) < 1.0


def test_the_kl_is_zero_at_the_first_step():
    """At the first update the policy is the one that sampled and the reference: ratio 1, KL 0, and the
    loss is minus the mean advantage (0 with normalised groups)."""
    logp, _, _, rewards, mask = _fixed()
    x = jnp.asarray(logp, jnp.float32)
    advantages = group_advantages(jnp.asarray(rewards)).reshape(-1)
    loss, metrics = grpo_loss(x, x, x, advantages, jnp.asarray(mask), GRPO(beta=0.04))
    assert float(metrics["kl"]) == 0.0 and float(metrics["clip_ratio"]) == 0.0
    assert float(loss) == pytest.approx(-float(advantages.mean()), abs=1e-6)
    grads = jax.grad(lambda p: grpo_loss(p, x, x, advantages, jnp.asarray(mask), GRPO(beta=1.0))[0])(x)
    kl_free = jax.grad(lambda p: grpo_loss(p, x, x, advantages, jnp.asarray(mask), GRPO(beta=0.0))[0])(x)
    np.testing.assert_allclose(grads, kl_free, atol=1e-7)  # the KL's gradient is 0 there too


def test_group_advantages_are_zero_for_a_uniform_group():
    rewards = jnp.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    advantages = np.asarray(group_advantages(rewards))
    assert (advantages[0] == 0).all() and advantages[1, 1] > 0 > advantages[1, 0]
