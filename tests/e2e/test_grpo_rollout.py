"""GRPO's building blocks (posttrain/grpo.py) on a tiny model: one step, G sampled completions per problem
judged in the sandbox, rewarded, and used for several updates (KL 0 at the first); the same key samples the
same batch; problems too long for the context are skipped. Runs: tests/e2e/test_posttrain_runs.py."""

from __future__ import annotations

import jax
import numpy as np
import optax

from codex_jax.codeeval.problems import Problem
from codex_jax.compute.grpo import GRPO
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params
from codex_jax.posttrain.grpo import Sampling, grpo_step, make_update, rollout
from codex_jax.sandbox import Limits, make_sandbox


class ByteTokenizer:
    vocab_size, eos_id, bos_id = 256, 0, -1

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(int(i) for i in ids if i).decode("utf-8", "replace")


PROBLEMS = [
    # the completion lands in a comment: it passes unless it breaks the line
    Problem("t/one", "def one():\n    return 1\n#", "def check(c):\n    assert c() == 1\n", "one"),
    # the completion is the expression: random bytes fail
    Problem("t/two", "def two():\n    return 2 +", "def check(c):\n    assert c() == 2\n", "two"),
]


def test_a_grpo_step_samples_judges_rewards_and_updates():
    cfg = ModelConfig(
        family="gpt2",
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        d_model=32,
        d_ff=64,
        vocab_size=256,
        max_seq_len=64,
    )
    model, tok = Transformer(cfg), ByteTokenizer()
    params = init_params(cfg, jax.random.key(0))
    sandbox = make_sandbox(Limits(timeout_s=5.0))
    printable = tuple(chr(c) for c in range(33, 127))  # random bytes stop early or late: lengths differ
    sampling = Sampling(group=4, max_new_tokens=8, temperature=1.0, stop=printable, length_penalty=0.5)
    grpo = GRPO(beta=0.04)
    batch = rollout(model, {"params": params}, tok, PROBLEMS, sampling, sandbox, jax.random.key(1), grpo)
    again = rollout(model, {"params": params}, tok, PROBLEMS, sampling, sandbox, jax.random.key(1), grpo)
    np.testing.assert_array_equal(batch.tokens_NxL, again.tokens_NxL)  # the key decides the batch
    np.testing.assert_array_equal(batch.rewards_N, again.rewards_N)
    assert batch.tokens_NxL.shape[0] == 8 and batch.mask_NxT.sum() > 0
    assert 0.0 < batch.metrics["pass_rate"] < 1.0  # 'one' passes, 'two' does not
    assert batch.rewards_N[:4].mean() > batch.rewards_N[4:].mean()
    assert np.allclose(batch.advantages_N.reshape(2, 4).mean(1), 0.0, atol=1e-6)
    for key in ("reward", "reward_std", "completion_length", "seconds_sampling", "seconds_execution"):
        assert key in batch.metrics
    tx = optax.adam(1e-2)
    update = make_update(model, tx, grpo)
    new, _, metrics = grpo_step(model, params, tx.init(params), params, update, batch, iterations=3)
    assert metrics["kl_first"] == 0.0 and metrics["kl"] > 0.0  # 0 at the first update, then it moves
    assert metrics["clip_ratio"] >= 0.0 and metrics["seconds_updates"] > 0
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), new, params)
    assert max(jax.tree.leaves(moved)) > 0.0


def test_problems_too_long_for_the_context_are_skipped_and_counted():
    import pytest

    from codex_jax.errors import UserError
    from codex_jax.posttrain.grpo import usable_problems

    long = Problem("t/long", "#" * 100 + "\ndef f():\n", "def check(c):\n    pass\n", "f")
    kept, skipped = usable_problems([*PROBLEMS, long], ByteTokenizer(), context=64, max_new_tokens=8)
    assert kept == PROBLEMS and len(skipped) == 1 and skipped[0].startswith("t/long: prompt of 110 tokens")
    with pytest.raises(UserError, match="no problem fits the model's context of 64"):
        usable_problems([long], ByteTokenizer(), context=64, max_new_tokens=8)
