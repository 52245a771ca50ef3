"""Families as data (issue 25): ``num_params`` agrees with the parameters ``init_params`` makes for every
family, legacy config dicts keep their meaning, and a bad per-layer pattern is a UserError."""

from __future__ import annotations

import jax
import pytest
from test_hf_parity import KINDS, _hf_config

from codex_jax.errors import UserError
from codex_jax.interop import hf_config
from codex_jax.models.config import ModelConfig
from codex_jax.models.families import FAMILIES
from codex_jax.models.sizes import count_params, num_params
from codex_jax.models.transformer import init_params

pytest.importorskip("transformers")


def _shapes(cfg):
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


@pytest.mark.parametrize("kind", KINDS)
def test_num_params_counts_what_init_makes(kind):
    cfg = hf_config.config_from_hf(_hf_config(kind).to_dict())
    assert num_params(cfg) == count_params(_shapes(cfg))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_num_params_of_each_family_untied_with_every_bias(family):
    """The family's own features, plus the optional parts it may not have (biases, an untied head)."""
    cfg = ModelConfig(family=family, num_layers=2, d_model=32, d_ff=48, vocab_size=50, max_seq_len=16)
    assert num_params(cfg) == count_params(_shapes(cfg))
    full = cfg.replace(tie_embeddings=False, attention_bias=True, out_bias=True, mlp_bias=True, head_dim=12)
    assert num_params(full) == count_params(_shapes(full)) > num_params(cfg)


def test_every_hf_model_type_reads_into_a_listed_family():
    assert {t.family for t in hf_config.HF_TYPES.values()} == set(FAMILIES)
    for kind in ("qwen3", "gemma", "gemma2", "gemma3_text", "starcoder2", "phi3"):
        assert hf_config.config_from_hf(_hf_config(kind).to_dict()).family == hf_config.HF_TYPES[kind].family


LEGACY_GPT2 = dict(  # a gpt2 run's model dict saved before families were data: no 'norm' key
    family="gpt2",
    num_layers=2,
    num_heads=4,
    num_kv_heads=4,
    d_model=32,
    d_ff=128,
    vocab_size=64,
    max_seq_len=16,
    attention_bias=False,
    rope_theta=10000.0,
    tie_embeddings=True,
)


def test_legacy_gpt2_dict_keeps_its_qkv_biases():
    cfg = ModelConfig.from_dict(LEGACY_GPT2)
    assert cfg.family == "gpt2" and cfg.attention_bias and cfg.out_bias and cfg.mlp_bias
    assert (cfg.norm, cfg.positions, cfg.mlp) == ("layernorm", "learned", "plain")
    attn = _shapes(cfg)["layers_0"]["attn"]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert attn[proj]["bias"].shape == (32,)
    assert cfg == ModelConfig.from_dict(cfg.to_dict())  # a resolved dict (with 'norm') round-trips
    # a resolved dict says what it means: a gpt2 without q/k/v biases stays without them
    no_bias = ModelConfig.from_dict({**cfg.to_dict(), "attention_bias": False})
    assert not no_bias.attention_bias and "bias" not in _shapes(no_bias)["layers_0"]["attn"]["q_proj"]


def test_legacy_llama_dict_keeps_attention_bias_as_saved():
    legacy = {**LEGACY_GPT2, "family": "llama", "num_kv_heads": 2, "attention_bias": True}
    cfg = ModelConfig.from_dict(legacy)
    assert cfg.attention_bias and not cfg.out_bias and cfg.norm == "rmsnorm"
    assert not ModelConfig.from_dict({**legacy, "attention_bias": False}).attention_bias


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            dict(layer_types=("sliding", "full"), sliding_window=4),
            r"layer_types=\['sliding', 'full'\].*3 entries",
        ),
        (dict(layer_types=("full",) * 4, sliding_window=4), r"expected 3 entries"),
        (
            dict(layer_types=("local", "full", "full"), sliding_window=4),
            r"expected 3 entries of \('full', 'sliding'\)",
        ),
        (dict(layer_types=("sliding", "full", "sliding")), r"'sliding' layers but sliding_window=0"),
    ],
)
def test_bad_layer_pattern_is_a_user_error(fields, message):
    with pytest.raises(UserError, match=message):
        ModelConfig(family="gemma2", num_layers=3, **fields)
    with pytest.raises(UserError, match=message):
        ModelConfig.from_dict(dict(family="gemma3", num_layers=3, **fields))


def test_layer_pattern_gives_each_layer_its_window_and_rope_base():
    cfg = ModelConfig(
        family="gemma3",
        num_layers=3,
        sliding_window=4,
        layer_types=("sliding", "full", "sliding"),
        rope_theta=1e6,
        rope_local_theta=1e4,
        rope_linear_factor=8.0,
    )
    local, full = cfg.layer(0), cfg.layer(1)
    assert (local.sliding_window, local.rope_theta, local.rope_linear_factor) == (4, 1e4, 1.0)
    assert (full.sliding_window, full.rope_theta, full.rope_linear_factor) == (0, 1e6, 8.0)
    assert cfg.windows == (0, 4) and not local.layer_types
