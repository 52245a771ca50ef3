"""LoRA on every family of issue 25: the default targets cover each family's projections (StarCoder2's
fc_in/fc_out, Phi-3's fused qkv and gate_up included), and a PEFT export loads in peft equal to our merged
model and imports back to the same tree."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_helpers import random_hf_model
from test_hf_parity import NEW_FAMILIES, _hf_config

from codex_jax.interop import hf_weights as hf
from codex_jax.interop import peft as ours_peft
from codex_jax.models import lora
from codex_jax.models.transformer import Transformer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

ALPHA, RANK = 8.0, 4
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 12))


@functools.cache
def _apply(cfg):
    return jax.jit(Transformer(cfg).apply)


def _logits(cfg, params):
    return np.asarray(_apply(cfg)({"params": params}, jnp.asarray(TOKENS)))


def _trained_like(tree):
    """``tree`` with random ``lora_b`` (``lora_a`` kept), as after some training."""
    modules = lora.modules_of(tree)
    keys = jax.random.split(jax.random.key(1), len(modules))
    return lora.tree_of(
        {
            p: {"lora_a": e["lora_a"], "lora_b": 0.05 * jax.random.normal(k, e["lora_b"].shape)}
            for (p, e), k in zip(sorted(modules.items()), keys, strict=True)
        }
    )


@pytest.fixture(scope="module", params=NEW_FAMILIES)
def family(request, tmp_path_factory):
    """``(kind, base folder, model, params, adapters, adapter folder)`` per family, built once."""
    kind = request.param
    base = tmp_path_factory.mktemp(f"{kind}-base")
    random_hf_model(_hf_config(kind), base)
    model, params = hf.import_checkpoint(base)
    adapters = _trained_like(lora.init_lora(params, RANK, lora.DEFAULT_TARGETS, jax.random.key(0)))
    out = ours_peft.export_peft(model.cfg, adapters, ALPHA, tmp_path_factory.mktemp(f"{kind}-adapter"))
    return kind, base, model, params, adapters, out


EXPECTED_HF_MODULES = {
    "qwen3": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gemma": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gemma2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gemma3_text": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "starcoder2": {"q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
}


def test_default_targets_cover_every_projection(family):
    kind, _, model, params, adapters, out = family
    assert set(lora.modules_of(adapters)) == set(lora.kernel_paths(params))
    layers = model.cfg.num_layers
    assert len(lora.modules_of(adapters)) == layers * (7 if model.cfg.mlp == "gated" else 6)
    config = json.loads((out / ours_peft.PEFT_CONFIG).read_text())
    targeted = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert targeted == EXPECTED_HF_MODULES[kind]
    assert len(config["target_modules"]) == layers * len(EXPECTED_HF_MODULES[kind])


def _hf_logits(folder, adapter=None):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    if adapter is not None:
        model = peft.PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model.eval()(torch.tensor(TOKENS)).logits.numpy()


def test_peft_loads_our_export_equal_to_the_merged_model(family):
    """peft's model of our adapter folder == our merged model."""
    kind, base, model, params, adapters, out = family
    cfg = model.cfg.replace(lora_alpha=ALPHA)
    merged_params = lora.merge(params, adapters, ALPHA)
    merged = _logits(cfg, merged_params)
    assert np.abs(merged - _logits(cfg, params)).max() > 1e-2  # the adapters matter
    theirs = _hf_logits(base, out)
    jax_err = np.abs(theirs - merged).max()
    base_err = np.abs(_hf_logits(base) - _logits(cfg, params)).max()  # JAX vs torch, no adapters
    print(f"{kind}: peft vs merged {jax_err:.2e}; base JAX vs transformers {base_err:.2e}")
    # 1e-5 over the float32 noise of the base (measured: at most 9.7e-6 in all, gemma3_text, whose base alone
    # differs from transformers by 9.3e-6 on this CPU; peft vs the merged weights in torch: 1.1e-5 there)
    assert jax_err <= 1e-5 + base_err


def test_import_peft_gives_back_the_tree(family):
    _, _, model, _, adapters, out = family
    back = ours_peft.import_peft(out, model.cfg, ALPHA)
    assert set(lora.modules_of(back)) == set(lora.modules_of(adapters))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=0), back, adapters)


def test_phi3_partial_fused_targets_match_peft(tmp_path):
    """Adapters on q and v of Phi-3's fused qkv_proj and on up of its gate_up_proj only: one exact fused
    adapter each for peft, and back as the same three adapters."""
    base = tmp_path / "base"
    random_hf_model(_hf_config("phi3"), base)
    model, params = hf.import_checkpoint(base)
    targets = r".*(q_proj|v_proj|up_proj)"
    adapters = _trained_like(lora.init_lora(params, RANK, targets, jax.random.key(0)))
    out = ours_peft.export_peft(model.cfg, adapters, ALPHA, tmp_path / "adapter")
    config = json.loads((out / ours_peft.PEFT_CONFIG).read_text())
    assert {n.rsplit(".", 1)[-1] for n in config["target_modules"]} == {"qkv_proj", "gate_up_proj"}
    cfg = model.cfg.replace(lora_alpha=ALPHA)
    merged = _logits(cfg, lora.merge(params, adapters, ALPHA))
    theirs = _hf_logits(base, out)
    print(f"phi3 partial: peft vs merged max abs diff {np.abs(theirs - merged).max():.2e}")
    np.testing.assert_allclose(theirs, merged, atol=1e-5, rtol=0)
    back = ours_peft.import_peft(out, model.cfg, ALPHA)
    assert set(lora.modules_of(back)) == set(lora.modules_of(adapters))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=0), back, adapters)
