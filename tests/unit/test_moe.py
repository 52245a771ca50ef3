"""Mixture of experts (models/moe.py): the expert paths agree, the load-balancing loss is transformers', the
router terms reach the training objective and its metrics, experts shard over an ``expert`` mesh axis, and
bad settings give one error line."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_llama

from codex_jax.compute import step as step_lib
from codex_jax.compute.optim import OptimizerSpec, make_optimizer
from codex_jax.compute.parallel import JitRunner, make_mesh
from codex_jax.compute.state import create_train_state
from codex_jax.config.schema import default_config
from codex_jax.errors import UserError
from codex_jax.models import lora, moe
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params

LAYER = ModelConfig(family="llama", d_model=16, d_ff=24, num_experts=6, experts_per_token=2)
# Layer 0 dense (mlp_only_layers), layers 1-2 sparse: 6 experts, top-2.
MODEL = tiny_llama(num_layers=3, num_experts=6, experts_per_token=2, moe_d_ff=24, mlp_only_layers=(0,))
ROWS = np.random.default_rng(0).integers(0, MODEL.vocab_size, (8, 17), dtype=np.int32)


@pytest.mark.parametrize("norm_topk_prob", [True, False])
def test_expert_paths_agree_in_values_and_gradients(norm_topk_prob):
    """'ragged', 'blocks' and 'dispatch' (a capacity that drops nothing) == 'dense' within 1e-5: outputs and
    the gradients of every parameter and of the input, in one compile."""
    cfg = LAYER.replace(norm_topk_prob=norm_topk_prob, capacity_factor=LAYER.num_experts / 2)
    x = jax.random.normal(jax.random.key(0), (3, 10, 16))
    params = moe.MoeMlp(cfg).init(jax.random.key(1), x)["params"]
    # A router that prefers some experts, so the groups have different sizes.
    params = {**params, "router": params["router"] * 40.0}

    @jax.jit
    def all_paths(params, x):
        out = {}
        for impl in moe.MOE_PATHS:
            module = moe.MoeMlp(cfg.replace(moe_impl=impl))
            y, state = module.apply({"params": params}, x, mutable=[moe.COLLECTION])
            loss = lambda p, x, m=module: jnp.sum(m.apply({"params": p}, x) * jnp.cos(x))  # noqa: E731
            out[impl] = (
                y,
                jax.grad(loss, argnums=(0, 1))(params, x),
                moe.router_losses(state[moe.COLLECTION]),
            )
        return out

    out = all_paths(params, x)
    counts = out["dense"][2]
    assert float(counts["moe_dropped"]) == 0.0
    for impl in ("ragged", "blocks", "dispatch"):
        y, grads, terms = out[impl]
        np.testing.assert_allclose(y, out["dense"][0], atol=1e-5, rtol=1e-5)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), grads, out["dense"][1]
        )
        assert float(terms["moe_dropped"]) == 0.0
        np.testing.assert_allclose(terms["moe_balance"], counts["moe_balance"], rtol=1e-6)


def test_auto_picks_a_dropless_grouped_path_per_backend():
    assert moe.choose(LAYER, "cpu")[0] == "blocks"
    assert moe.choose(LAYER, "tpu")[0] == moe.choose(LAYER, "gpu")[0] == "ragged"
    assert moe.choose(LAYER.replace(moe_impl="dispatch"), "tpu") == ("dispatch", "model.moe_impl='dispatch'")


def test_dispatch_drops_past_capacity_and_reports_the_fraction():
    """With a router that sends every token to experts 0 and 1 and capacity C, each of them keeps its first C
    tokens: the dropped fraction is ``1 - 2C / (2N)`` and dropped tokens get no expert output."""
    cfg = LAYER.replace(moe_impl="dispatch", capacity_factor=1.0)
    x = jnp.abs(jax.random.normal(jax.random.key(0), (1, 12, 16))) + 0.1
    params = moe.MoeMlp(cfg).init(jax.random.key(1), x)["params"]
    router = jnp.zeros((16, 6)).at[:, 0].set(2.0).at[:, 1].set(1.0)  # every token: expert 0, then 1
    params = {**params, "router": router}
    y, state = moe.MoeMlp(cfg).apply({"params": params}, x, mutable=[moe.COLLECTION])
    C = moe.capacity(cfg, 12)
    assert C == 4
    terms = moe.router_losses(state[moe.COLLECTION])
    np.testing.assert_allclose(terms["moe_dropped"], 1 - 2 * C / 24, rtol=1e-6)
    y_dense = moe.MoeMlp(cfg.replace(moe_impl="dense")).apply({"params": params}, x)
    np.testing.assert_allclose(y[0, :C], y_dense[0, :C], atol=1e-6)
    np.testing.assert_array_equal(y[0, C:], 0.0)


def test_load_balancing_loss_equals_transformers():
    """``router_losses`` of a 3-layer forward == transformers' ``load_balancing_loss_func`` on the same router
    logits (pooled over layers) within 1e-5; the z-loss is the mean squared logsumexp."""
    torch = pytest.importorskip("torch")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    rng = np.random.default_rng(3)
    logits = [rng.normal(0, 2, (40, 6)).astype(np.float32) for _ in range(3)]
    stats = []
    for logits_NxE in logits:
        weights, experts, probs = moe.route(LAYER, jnp.asarray(logits_NxE))
        counts = jax.nn.one_hot(experts, 6).sum((0, 1))
        z = jnp.square(jax.nn.logsumexp(jnp.asarray(logits_NxE), -1)).sum()
        stats.append(
            {"counts": counts, "probs": probs.sum(0), "z": z, "tokens": jnp.float32(40), "dropped": 0.0}
        )
    ours = moe.router_losses({"layers_0": {"mlp": {moe.ROUTER_STATS: tuple(stats)}}})
    theirs = load_balancing_loss_func(tuple(torch.from_numpy(g) for g in logits), 6, 2)
    np.testing.assert_allclose(float(ours["moe_balance"]), float(theirs), rtol=1e-5)
    lse = np.log(np.exp(np.concatenate(logits)).sum(-1))
    np.testing.assert_allclose(float(ours["router_z"]), np.mean(lse**2), rtol=1e-5)


def _tx():
    return make_optimizer(OptimizerSpec.from_mapping(default_config().train))


def test_router_terms_reach_the_objective_and_the_metrics():
    """A sparse model's train step reports ``moe_balance``/``router_z``; ``loss`` stays the cross entropy;
    the coefficients change the gradient (a fully trained masked batch through the chunked loss gets the same
    objective); the first layer (mlp_only_layers) is a dense MLP."""
    params = init_params(MODEL, jax.random.key(0))
    assert set(params["layers_0"]["mlp"]) == {"gate_proj", "up_proj", "down_proj"}
    assert params["layers_1"]["mlp"]["gate_proj"].shape == (6, 32, 24)
    assert params["layers_2"]["mlp"]["router"].shape == (32, 6)
    adaptable = lora.kernel_paths(params)  # LoRA: attention and the dense MLP; never the router or experts
    assert "layers_0/mlp/gate_proj" in adaptable and "layers_1/attn/q_proj" in adaptable
    assert not [p for p in adaptable if p.startswith(("layers_1/mlp", "layers_2/mlp"))]
    tx = _tx()
    state = create_train_state(params, tx, 0)

    def step(cfg):
        return jax.jit(functools.partial(step_lib.train_step, model=Transformer(cfg), tx=tx))(state, ROWS)[1]

    plain = step(MODEL)
    weighted = step(MODEL.replace(router_aux_loss_coef=0.5, router_z_loss_coef=0.1))
    np.testing.assert_allclose(weighted["loss"], plain["loss"], rtol=1e-6)
    assert 1.0 <= float(plain["moe_balance"]) < 6.0  # 2 (top-2) when perfectly balanced
    assert float(plain["router_z"]) > 0
    assert float(plain["moe_dropped"]) == 0.0
    assert float(weighted["grad_norm"]) != float(plain["grad_norm"])
    # A masked batch that trains every target (step_scale 1 / targets) is the same objective.
    masked = {
        "tokens": ROWS,
        "mask": np.ones_like(ROWS),
        "step_scale": np.full(8, 1 / ROWS[:, 1:].size, np.float32),
    }
    # ... and so is the chunked loss (the model called with hidden=True), here on that masked batch.
    cfg = MODEL.replace(router_aux_loss_coef=0.5, router_z_loss_coef=0.1, loss_chunk=4)
    step_fn = functools.partial(step_lib.train_step, model=Transformer(cfg), tx=tx)
    as_masked = jax.jit(step_fn)(state, masked)[1]
    for key in ("loss", "grad_norm", "moe_balance", "router_z"):
        np.testing.assert_allclose(as_masked[key], weighted[key], rtol=1e-5)


def test_experts_sharded_over_an_expert_axis_equal_one_device():
    """A ('data', 'fsdp', 'expert') = (4, 1, 2) mesh over 8 CPU devices: expert weights split over 'expert',
    the batch over all 8; two train steps (router penalties on) equal one device's within 1e-6."""
    tx = _tx()
    cfg = MODEL.replace(router_aux_loss_coef=0.01, router_z_loss_coef=0.001)
    model = Transformer(cfg)
    params = init_params(cfg, jax.random.key(0))
    rows = [ROWS, np.roll(ROWS, 1, axis=0)]

    def run(mesh):
        runner = JitRunner(model, tx, mesh, fsdp_min_size=1)
        state = runner.init_state(lambda: create_train_state(params, tx, 0))
        metrics = []
        for batch in rows:
            state, m = runner.train_step(state, runner.put_batch(batch))
            metrics.append(m)
        return runner, state, metrics

    runner, sharded, m_sharded = run(make_mesh(-1, 1, expert=2))
    spec = runner.state_sharding.params["layers_1"]["mlp"]["gate_proj"].spec
    assert spec[0] == "expert"
    gate = sharded.params["layers_1"]["mlp"]["gate_proj"]
    assert gate.addressable_shards[0].data.shape[0] == 3  # 6 experts over 2
    _, single, m_single = run(make_mesh(1, 1, num_devices=1))
    for a, b in zip(m_sharded, m_single, strict=True):
        for key in ("loss", "moe_balance", "router_z", "grad_norm"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), sharded.params, single.params)


def test_bad_settings_give_one_error_line():
    """More experts per token than experts; an expert axis that does not divide the experts."""
    with pytest.raises(UserError, match="experts_per_token=7 must be between 1 and num_experts=6") as e:
        LAYER.replace(experts_per_token=7)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="'parallel.mesh.expert': 4 does not divide") as e:
        JitRunner(Transformer(MODEL), _tx(), make_mesh(-1, 1, expert=4))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="'parallel.mesh.expert': 3 does not divide the 8 devices"):
        make_mesh(-1, 1, expert=3)
    with pytest.raises(UserError, match="moe_impl='grouped': expected one of"):
        LAYER.replace(moe_impl="grouped")


def test_presets_have_the_published_parameter_counts():
    """Mixtral-8x7B: 46.7B parameters; Qwen3-30B-A3B: 30.5B, of which ~3.3B run per token; ``num_params``
    (from the config alone) counts the experts as init does."""
    from codex_jax.models import registry
    from codex_jax.models.sizes import count_params, flops_per_token, num_params

    for name, billions in (("mixtral-8x7b", 46.70), ("qwen3-30b-a3b", 30.53)):
        cfg = registry.config(name)
        n = count_params(jax.eval_shape(lambda cfg=cfg: init_params(cfg, jax.random.key(0))))
        assert n / 1e9 == pytest.approx(billions, abs=0.01)
        assert num_params(cfg) == n
    active = flops_per_token(cfg, n, 0) / 6  # seq_len 0: the parameter term alone
    assert active / 1e9 == pytest.approx(3.35, abs=0.05)
    assert num_params(MODEL) == count_params(init_params(MODEL, jax.random.key(0)))
