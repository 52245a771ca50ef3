"""model.grad_barriers: 'auto' per platform; with the barriers the loss and gradients equal those without
(float32 rounding), and the compiled backward keeps one conditional per residual add (jax drops a cond
whose branches both return their operand, and XLA's CPU pipeline expands optimization barriers, so this is
what makes the barrier real)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from codex_jax.errors import UserError
from codex_jax.models import grad_barrier
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params

CFG = ModelConfig(
    num_layers=3, d_model=32, d_ff=64, num_heads=2, num_kv_heads=2, vocab_size=64, max_seq_len=16
)


@pytest.mark.parametrize(
    "mode, platform, expected",
    [
        ("auto", "cpu", True),
        ("auto", "gpu", False),
        ("auto", "tpu", False),
        ("on", "tpu", True),
        ("off", "cpu", False),
    ],
)
def test_choice_per_platform(mode, platform, expected):
    cfg = CFG.replace(grad_barriers=mode)
    assert grad_barrier.enabled(cfg, platform) is expected
    assert grad_barrier.resolve(cfg, platform).grad_barriers == ("on" if expected else "off")


def test_bad_mode_is_refused():
    with pytest.raises(UserError, match="grad_barriers='sometimes'"):
        CFG.replace(grad_barriers="sometimes")


def _loss_and_grad(cfg, params, tokens_BxL):
    model = Transformer(cfg)

    def loss_fn(p):
        logits_BxTxV = model.apply({"params": p}, tokens_BxL[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, tokens_BxL[:, 1:]).mean()

    step = jax.jit(jax.value_and_grad(loss_fn))
    hlo = step.lower(params).compile().as_text()
    return step(params), hlo.count(" conditional(")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_barriers_keep_values_and_survive_compilation(family):
    cfg = CFG.replace(family=family)
    params = init_params(cfg, jax.random.key(0))
    tokens_BxL = jax.random.randint(jax.random.key(1), (4, 17), 0, cfg.vocab_size)
    (loss_on, grads_on), conds_on = _loss_and_grad(cfg.replace(grad_barriers="on"), params, tokens_BxL)
    (loss_off, grads_off), conds_off = _loss_and_grad(cfg.replace(grad_barriers="off"), params, tokens_BxL)
    assert conds_on == 2 * cfg.num_layers and conds_off == 0
    np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
    leaves_off = jax.tree.leaves(grads_off)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads_on), leaves_off, strict=True):
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 1e-6, jax.tree_util.keystr(path)
