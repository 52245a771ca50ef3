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


# --------------------------------------------------------------------------- whole models: the two families

LAYERS = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
)
MOE_KINDS = {
    # Mixtral: every layer sparse, top-2 renormalised.
    "mixtral": lambda: transformers.MixtralConfig(**LAYERS, num_local_experts=4, sliding_window=None),
    # Qwen3-MoE: q/k norms, head_dim apart from the width, a dense layer (mlp_only_layers), not renormalised.
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        **LAYERS,
        head_dim=24,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=48,
        norm_topk_prob=False,
        mlp_only_layers=[1],
    ),
    # ... renormalised, every second layer sparse (decoder_sparse_step).
    "qwen3_moe_norm_step": lambda: transformers.Qwen3MoeConfig(
        **LAYERS,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=48,
        norm_topk_prob=True,
        decoder_sparse_step=2,
    ),
}


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


@pytest.mark.parametrize("kind", list(MOE_KINDS))
def test_moe_family_equals_transformers_and_exports(kind, tmp_path):
    """Import of a tiny random transformers model: logits within 1e-4, 40 greedy tokens equal to transformers'
    ``generate``; our export reloads in transformers within 1e-5."""
    from hf_helpers import random_hf_model

    from codex_jax.generate import generate
    from codex_jax.interop import hf_weights

    hf_model = random_hf_model(MOE_KINDS[kind](), tmp_path / "hf")
    model, params = hf_weights.import_checkpoint(tmp_path / "hf")
    cfg = model.cfg
    assert cfg.num_experts == 4 and cfg.family == kind.split("_norm")[0]
    sparse = [cfg.sparse_layer(i) for i in range(3)]
    assert sparse == {"mixtral": [True] * 3, "qwen3_moe": [True, False, True]}.get(kind, [False, True, False])
    tokens = np.random.default_rng(0).integers(0, 256, (2, 12))
    np.testing.assert_allclose(
        model.apply({"params": params}, tokens), _hf_logits(hf_model, tokens), atol=1e-4
    )

    prompts = tokens[:, :5]
    ours = np.asarray(generate(model, params, jnp.asarray(prompts), 40))
    with torch.no_grad():
        theirs = hf_model.generate(
            input_ids=torch.from_numpy(prompts), max_new_tokens=40, min_new_tokens=40, do_sample=False
        ).numpy()[:, 5:]
    np.testing.assert_array_equal(ours, theirs)

    hf_weights.export_checkpoint(model, params, tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(reloaded) is type(hf_model)
    np.testing.assert_allclose(_hf_logits(reloaded, tokens), _hf_logits(hf_model, tokens), atol=1e-5)


def test_a_checkpoint_missing_an_expert_is_one_error_line(tmp_path):
    from hf_helpers import random_hf_model
    from safetensors.numpy import load_file, save_file

    from codex_jax.interop import hf_weights

    random_hf_model(MOE_KINDS["mixtral"](), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.2.block_sparse_moe.experts.3.w2.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError) as e:
        hf_weights.import_checkpoint(tmp_path)
    assert str(e.value) == (
        f"{tmp_path}: tensor 'model.layers.2.block_sparse_moe.experts.3.w2.weight' is missing "
        "(a mixture-of-experts layer of 4 experts)"
    )
