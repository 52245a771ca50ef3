"""LoRA on a mixture of experts' experts (``lora.experts``): one adapter per expert, applied inside every
expert path with the same values and gradients, merged exactly, trained by a LoRA step; the router is never
adapted."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_llama

from codex_jax.compute.optim import OptimizerSpec, make_optimizer
from codex_jax.compute.parallel import JitRunner, make_mesh
from codex_jax.compute.state import create_train_state
from codex_jax.config.schema import default_config
from codex_jax.config.validation import validate
from codex_jax.errors import UserError
from codex_jax.models import lora, moe
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params

LAYER = ModelConfig(family="llama", d_model=16, d_ff=24, num_experts=6, experts_per_token=2, lora_alpha=8.0)
# Layer 0 dense (mlp_only_layers), layers 1-2 sparse: 6 experts of width 24, top-2.
MODEL = tiny_llama(num_layers=3, num_experts=6, experts_per_token=2, moe_d_ff=24, mlp_only_layers=(0,))


def _trained_like(tree, seed=1):
    """``tree`` with random (non-zero) leaves, as after some training."""
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(tree))))
    return jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape) * 0.2, tree)


def test_expert_adapters_agree_in_every_path_and_merge_exactly():
    """With an adapter on each of the three expert weights, 'ragged', 'blocks' and 'dispatch' (nothing
    dropped) equal 'dense' within 1e-5 in the output and the gradients of the adapters and the input; and
    'dense' on the merged weights equals them too."""
    cfg = LAYER.replace(capacity_factor=LAYER.num_experts / 2)
    x = jax.random.normal(jax.random.key(0), (3, 10, 16))
    params = moe.MoeMlp(cfg).init(jax.random.key(1), x)["params"]
    params = {**params, "router": params["router"] * 40.0}  # uneven groups
    adapters = lora.init_lora(
        {"layers_1": {"mlp": params}}, 3, lora.DEFAULT_TARGETS, jax.random.key(2), experts=True
    )
    adapters = _trained_like(adapters)["layers_1"]["mlp"]
    assert {k: v["lora_a"].shape for k, v in adapters.items()} == {
        "gate_proj": (6, 16, 3),
        "up_proj": (6, 16, 3),
        "down_proj": (6, 24, 3),
    }
    assert {k: v["lora_b"].shape for k, v in adapters.items()} == {
        "gate_proj": (6, 3, 24),
        "up_proj": (6, 3, 24),
        "down_proj": (6, 3, 16),
    }

    @jax.jit
    def all_paths(params, adapters, x):
        out = {}
        for impl in moe.MOE_PATHS:
            module = moe.MoeMlp(cfg.replace(moe_impl=impl))

            def loss(a, x, m=module):
                return jnp.sum(m.apply({"params": params, "lora": a}, x) * jnp.cos(x))

            out[impl] = (
                module.apply({"params": params, "lora": adapters}, x),
                jax.grad(loss, (0, 1))(adapters, x),
            )
        merged = lora.merge({"m": params}, {"m": adapters}, cfg.lora_alpha)["m"]
        out["merged"] = moe.MoeMlp(cfg.replace(moe_impl="dense")).apply({"params": merged}, x)
        out["base"] = moe.MoeMlp(cfg.replace(moe_impl="dense")).apply({"params": params}, x)
        return out

    out = all_paths(params, adapters, x)
    y_dense, grads_dense = out["dense"]
    assert np.abs(np.asarray(y_dense - out["base"])).max() > 1e-2  # the adapters change the output
    np.testing.assert_allclose(out["merged"], y_dense, atol=1e-5, rtol=1e-5)
    for impl in ("ragged", "blocks", "dispatch"):
        y, grads = out[impl]
        np.testing.assert_allclose(y, y_dense, atol=1e-5, rtol=1e-5, err_msg=impl)
        jax.tree.map(
            lambda a, b, impl=impl: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=impl),
            grads,
            grads_dense,
        )
    assert all(float(jnp.abs(g["lora_a"]).max()) > 0 for g in grads_dense[0].values())


def test_experts_are_opt_in_and_the_router_is_never_adapted():
    shapes = jax.eval_shape(lambda: init_params(MODEL, jax.random.key(0)))
    plain = lora.target_paths(shapes, lora.DEFAULT_TARGETS)
    assert "layers_0/mlp/gate_proj" in plain  # the dense layer's kernel
    assert not any(p.startswith(("layers_1/mlp", "layers_2/mlp")) for p in plain)
    with_experts = lora.target_paths(shapes, lora.DEFAULT_TARGETS, experts=True)
    assert sorted(set(with_experts) - set(plain)) == [
        f"layers_{i}/mlp/{w}" for i in (1, 2) for w in ("down_proj", "gate_proj", "up_proj")
    ]
    only_down = lora.target_paths(shapes, r"layers_2/mlp/down_proj", experts=True)
    assert only_down == ["layers_2/mlp/down_proj"]
    for targets in (r".*router", r".*mlp/.*"):
        with pytest.raises(UserError, match="matches the mixture-of-experts router 'layers_1/mlp/router'"):
            lora.target_paths(shapes, targets, experts=True)
    cfg = default_config()
    cfg.lora.rank, cfg.lora.experts, cfg.lora.dropout = 4, True, 0.1
    with pytest.raises(UserError, match="config key 'lora.dropout': must be 0 with lora.experts=True"):
        validate(cfg, num_devices=1)


def _train_cfg():
    c = default_config().train
    c.steps, c.warmup_steps, c.learning_rate = 10, 1, 3e-2
    return OptimizerSpec.from_mapping(c)


def test_a_lora_step_with_expert_adapters_lowers_the_loss_and_trains_only_adapters():
    """LoRA steps (default CPU path, 'blocks') with expert adapters: the loss falls, the experts' adapters
    change, the frozen base does not, and the optimizer holds moments for the adapters only."""
    cfg = MODEL.replace(lora_alpha=8.0)
    model, tx = Transformer(cfg), make_optimizer(_train_cfg())
    base = init_params(cfg, jax.random.key(0))
    before = jax.tree.map(np.array, base)
    runner = JitRunner(model, tx, make_mesh(num_devices=1))
    runner.set_frozen(base)
    init = lora.init_lora(base, 4, lora.DEFAULT_TARGETS, jax.random.key(1), experts=True)
    state = runner.init_state(lambda: create_train_state(init, tx, 0))
    batch = np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 17), dtype=np.int32)
    losses = []
    for _ in range(4):
        state, metrics = runner.train_step(state, runner.put_batch(batch))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 0.05, losses
    trained = jax.device_get(runner.state_for_save(state))
    expert_b = trained.params["layers_1"]["mlp"]["gate_proj"]["lora_b"]
    assert expert_b.shape == (6, 4, 24) and np.all(np.abs(expert_b).sum((1, 2)) > 0)  # every expert trained
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(runner.frozen), before)
    moments = [x for x in jax.tree.leaves(trained.opt_state) if x.ndim > 0]
    assert sum(x.size for x in moments) == 2 * lora.count(trained.params)


# ----------------------------------------------------------------------- PEFT (torch CPU, peft 0.21)


def _hf_moe(style, folder):
    """A tiny random transformers MoE (2 layers, 4 experts, top-2, router perturbed) saved as safetensors."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    common = dict(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    if style == "mixtral":
        config = transformers.MixtralConfig(**common, intermediate_size=24, num_local_experts=4)
    else:
        config = transformers.Qwen3MoeConfig(
            **common,
            intermediate_size=32,
            moe_intermediate_size=24,
            num_experts=4,
            num_experts_per_tok=2,
            head_dim=8,
        )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0, 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize(
    "style,targets",
    [
        ("qwen3_moe", lora.DEFAULT_TARGETS),  # attention + every expert weight: gate_up at rank 2r
        ("mixtral", r".*(q_proj|v_proj|down_proj)"),  # down_proj alone on the experts
        ("qwen3_moe", r"layers_1/mlp/up_proj"),  # one fused half in one layer
    ],
)
def test_expert_adapters_export_to_peft_target_parameters(style, targets, tmp_path):
    """The export loads in peft 0.21 (``target_parameters`` on transformers' fused 3-D experts): its logits
    equal ours, and peft's merged expert weights equal our merged ones within 1e-5."""
    pytest.importorskip("peft")
    import json

    import torch
    import transformers
    from peft import PeftModel

    from codex_jax.interop import hf_weights, peft

    model, params = hf_weights.import_checkpoint(_hf_moe(style, tmp_path / "base"))
    cfg = model.cfg.replace(lora_alpha=8.0, moe_impl="dense")
    adapters = _trained_like(lora.init_lora(params, 4, targets, jax.random.key(1), experts=True), seed=3)
    peft.export_peft(cfg, adapters, 8.0, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / peft.PEFT_CONFIG).read_text())
    fused = targets == lora.DEFAULT_TARGETS
    assert config["r"] == (8 if fused else 4) and config["lora_alpha"] / config["r"] == 2.0
    tokens = np.random.default_rng(0).integers(0, 64, (2, 12))
    ours = np.asarray(Transformer(cfg).apply({"params": params, "lora": adapters}, jnp.asarray(tokens)))
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", local_files_only=True)
    with torch.no_grad():
        before = base(torch.tensor(tokens)).logits.numpy()
        theirs_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        theirs = theirs_model(torch.tensor(tokens)).logits.numpy()
        merged_hf = {k: v.numpy() for k, v in theirs_model.merge_and_unload().state_dict().items()}
    assert np.abs(theirs - before).max() > 1e-3  # the adapters do something in peft
    np.testing.assert_allclose(theirs, ours, atol=1e-4)
    merged = lora.merge(params, adapters, 8.0)
    for i in (0, 1):
        mlp = merged[f"layers_{i}"]["mlp"]
        gate_up = np.concatenate([mlp["gate_proj"], mlp["up_proj"]], -1).transpose(0, 2, 1)
        np.testing.assert_allclose(
            merged_hf[f"model.layers.{i}.mlp.experts.gate_up_proj"], gate_up, atol=1e-5
        )
        down = np.asarray(mlp["down_proj"]).transpose(0, 2, 1)
        np.testing.assert_allclose(merged_hf[f"model.layers.{i}.mlp.experts.down_proj"], down, atol=1e-5)
    with pytest.raises(UserError, match="target_parameters=.* is not supported"):
        peft.import_peft(tmp_path / "adapter", cfg, 8.0)


def test_a_preset_takes_the_run_time_expert_keys_and_its_experts_validate_the_expert_axis():
    """model.moe_impl / capacity_factor apply over a preset (they change no shape), an ahead-of-time TPU
    compile resolves 'auto' for TPU, and the expert axis is checked against the preset's 128 experts."""
    from codex_jax.config import preset_config
    from codex_jax.setup.model import model_config

    cfg = preset_config("qwen3-30b-a3b")
    assert model_config(cfg).num_experts == 128 and model_config(cfg).moe_impl == "auto"
    assert moe.resolve(model_config(cfg), "tpu").moe_impl == "ragged"
    assert moe.resolve(model_config(cfg), "cpu").moe_impl == "blocks"
    cfg.model.moe_impl, cfg.model.capacity_factor = "dispatch", 2.0
    assert (model_config(cfg).moe_impl, model_config(cfg).capacity_factor) == ("dispatch", 2.0)
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "qwen3_30b_a3b.py"
    spec = importlib.util.spec_from_file_location("qwen3_30b_a3b", path)
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    shipped_cfg = shipped.get_config()
    assert (shipped_cfg.model.preset, shipped_cfg.parallel.mesh.expert) == ("qwen3-30b-a3b", 8)
    validate(shipped_cfg, num_devices=16)  # 8 divides the preset's 128 experts (model.num_experts is 0)
    cfg.parallel.mesh.expert, cfg.data.batch_size = 3, 24
    with pytest.raises(UserError, match="'parallel.mesh.expert': must divide model.num_experts=128"):
        validate(cfg, num_devices=6)
