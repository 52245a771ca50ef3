"""Hugging Face expert tensors (interop/hf_experts.py) against the installed transformers: both layouts read
into one MoE layer whose output equals transformers' sparse MoE block (Mixtral: top-2 renormalised;
Qwen3-MoE without renormalisation), the per-expert layout written back bit for bit, a missing expert is
one error line."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codex_jax.errors import UserError
from codex_jax.interop import hf_experts
from codex_jax.models import moe
from codex_jax.models.config import ModelConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

E, D, F = 4, 16, 24


def _model(style):
    torch.manual_seed(0)
    common = dict(
        vocab_size=64, hidden_size=D, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    if style == "mixtral":
        config = transformers.MixtralConfig(**common, intermediate_size=F, num_local_experts=E)
        model, prefix = transformers.MixtralForCausalLM(config), "model.layers.1.block_sparse_moe"
    else:
        config = transformers.Qwen3MoeConfig(
            **common,
            intermediate_size=32,
            moe_intermediate_size=F,
            num_experts=E,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            mlp_only_layers=[0],
            head_dim=8,
        )
        model, prefix = transformers.Qwen3MoeForCausalLM(config), "model.layers.1.mlp"
    with torch.no_grad():  # a router that is not uniform (Qwen3-MoE's starts at zero)
        for p in model.model.layers[1].mlp.parameters():
            p.normal_(0, 0.5)
    return model.eval(), prefix


@pytest.mark.parametrize("style", ["mixtral", "qwen3_moe"])
def test_both_layouts_import_and_equal_transformers(style, tmp_path):
    from safetensors import safe_open

    model, prefix = _model(style)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
    assert f"{prefix}.experts.0.{hf_experts.PER_EXPERT_NAMES[style][0]}.weight" in saved  # per-expert on disk
    fused = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert "model.layers.1.mlp.experts.gate_up_proj" in fused  # transformers 5's 3-D tensors in memory

    def read(tensors, prefix):
        return hf_experts.layer_params(tensors.__getitem__, set(tensors), prefix, E, style, "ckpt")

    from_disk, from_fused = read(saved, prefix), read(fused, "model.layers.1.mlp")
    jax.tree.map(np.testing.assert_array_equal, from_disk, from_fused)
    written = hf_experts.layer_tensors(from_disk, prefix, style)
    for name, value in written.items():
        np.testing.assert_array_equal(value, saved[name])

    cfg = ModelConfig(
        family="llama",
        d_model=D,
        d_ff=F,
        num_experts=E,
        experts_per_token=2,
        norm_topk_prob=style == "mixtral",
    )
    x = np.random.default_rng(0).normal(size=(2, 7, D)).astype(np.float32)
    with torch.no_grad():
        theirs = model.model.layers[1].mlp(torch.from_numpy(x)).numpy()
    params = jax.tree.map(jnp.asarray, from_disk)
    for impl in ("blocks", "ragged"):
        ours = moe.MoeMlp(cfg.replace(moe_impl=impl)).apply({"params": params}, x)
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_missing_expert_is_one_error_line():
    model, prefix = _model("mixtral")
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = hf_experts.layer_params(
        tensors.__getitem__, set(tensors), "model.layers.1.mlp", E, "mixtral", "m"
    )
    per_expert = hf_experts.layer_tensors(params, prefix, "mixtral")
    del per_expert[f"{prefix}.experts.2.w3.weight"]
    with pytest.raises(UserError) as e:
        hf_experts.layer_params(per_expert.__getitem__, set(per_expert), prefix, E, "mixtral", "/ckpt")
    assert str(e.value) == (
        f"/ckpt: tensor '{prefix}.experts.2.w3.weight' is missing (a mixture-of-experts layer of 4 experts)"
    )


def test_a_whole_mixtral_equals_transformers(tmp_path):
    """A tiny random MixtralForCausalLM (4 experts, top-2; routers perturbed) read from its save_pretrained
    folder: the attention and norms through the llama weight table, the experts through hf_experts. Logits
    within 1e-4 and 40 greedy tokens equal to transformers' ``generate``."""
    from safetensors import safe_open

    from codex_jax.generate import generate
    from codex_jax.interop.hf_weights import weight_table
    from codex_jax.models.transformer import Transformer

    torch.manual_seed(1)
    config = transformers.MixtralConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=E,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        sliding_window=None,
    )
    hf_model = transformers.MixtralForCausalLM(config).eval()
    with torch.no_grad():
        for layer in hf_model.model.layers:
            layer.mlp.gate.weight.normal_(0, 1.0)
    hf_model.save_pretrained(tmp_path)
    cfg = ModelConfig(
        family="llama",
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        d_model=32,
        d_ff=24,
        vocab_size=97,
        max_seq_len=64,
        tie_embeddings=False,
        rope_theta=config.rope_parameters["rope_theta"],
        norm_eps=config.rms_norm_eps,
        num_experts=E,
        experts_per_token=2,
        loss_chunk=0,
    )
    with safe_open(str(tmp_path / "model.safetensors"), "np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
    params: dict = {}
    for name, (path,), transpose in weight_table(cfg):
        if ".mlp." in name:
            continue
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(tensors[name].T if transpose else tensors[name])
    for i in range(cfg.num_layers):
        prefix = f"model.layers.{i}.block_sparse_moe"
        experts = hf_experts.layer_params(tensors.__getitem__, set(tensors), prefix, E, "mixtral", "ckpt")
        params[f"layers_{i}"]["mlp"] = jax.tree.map(jnp.asarray, experts)

    tokens = np.random.default_rng(0).integers(0, 97, (2, 12))
    ours = Transformer(cfg).apply({"params": params}, jnp.asarray(tokens))
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)

    prompts = tokens[:, :5]
    new = np.asarray(generate(Transformer(cfg), params, jnp.asarray(prompts), 40))
    with torch.no_grad():
        hf_new = hf_model.generate(
            input_ids=torch.from_numpy(prompts), max_new_tokens=40, min_new_tokens=40, do_sample=False
        ).numpy()[:, 5:]
    np.testing.assert_array_equal(new, hf_new)
