"""Parity with transformers (torch, CPU): tiny random checkpoints by save_pretrained, no network."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_helpers import random_hf_model

from codex_jax.errors import UserError
from codex_jax.generate import generate
from codex_jax.interop import hf_config
from codex_jax.interop import hf_weights as hf
from codex_jax.models.config import ModelConfig
from codex_jax.models.rope import attention_factor, rope_frequencies

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 256, 12
LLAMA = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
)
LLAMA3_ROPE = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,
    rope_theta=500000.0,
)


def _hf_config(kind: str):
    t = transformers
    if kind == "gpt2":
        return t.GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=128,
            bos_token_id=1,
            eos_token_id=2,
        )
    if kind == "llama_gqa_untied":
        return t.LlamaConfig(**LLAMA, tie_word_embeddings=False)
    if kind == "llama_tied_llama3":
        return t.LlamaConfig(**LLAMA, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE)
    if kind == "llama_linear_headdim":
        return t.LlamaConfig(
            **LLAMA,
            head_dim=24,
            rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=10000.0),
        )
    if kind == "qwen2":
        return t.Qwen2Config(**LLAMA, tie_word_embeddings=True)
    if kind == "mistral_window":
        return t.MistralConfig(**LLAMA, sliding_window=5)
    return _new_family_config(kind)


# The families of issue 25: shapes unlike the defaults (head_dim apart from the width, GQA), windows shorter
# than the test sequences, soft-caps small enough to bite on random weights.
THREE = dict(LLAMA, num_hidden_layers=3)
_GEMMA3_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
}


def _new_family_config(kind: str):
    t = transformers
    if kind == "qwen3":
        return t.Qwen3Config(
            **LLAMA, head_dim=24, rope_parameters={"rope_type": "default", "rope_theta": 1e6}
        )
    if kind == "qwen3_yarn":
        yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "rope_theta": 1e4}
        return t.Qwen3Config(**LLAMA, head_dim=24, rope_parameters=yarn)
    if kind == "gemma":
        return t.GemmaConfig(**LLAMA, head_dim=24)
    if kind == "gemma2":
        return t.Gemma2Config(
            **THREE,
            head_dim=16,
            sliding_window=5,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        )
    if kind == "gemma3_text":
        return t.Gemma3TextConfig(
            **THREE,
            head_dim=16,
            sliding_window=5,
            query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters=_GEMMA3_ROPE,
        )
    if kind == "starcoder2":
        return t.Starcoder2Config(**LLAMA, sliding_window=5, use_bias=True)
    if kind == "phi3":
        return t.Phi3Config(**LLAMA, partial_rotary_factor=0.5, sliding_window=None, pad_token_id=0)
    raise KeyError(kind)


NEW_FAMILIES = ["qwen3", "gemma", "gemma2", "gemma3_text", "starcoder2", "phi3"]


KINDS = [
    "gpt2",
    "llama_gqa_untied",
    "llama_tied_llama3",
    "llama_linear_headdim",
    "qwen2",
    "mistral_window",
    *NEW_FAMILIES,
    "qwen3_yarn",
]


_CACHE: dict = {}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``checkpoint(kind) -> (hf_model, folder)``, built once per module."""

    def build(kind):
        if kind not in _CACHE:
            folder = tmp_path_factory.mktemp(kind)
            _CACHE[kind] = (random_hf_model(_hf_config(kind), folder), folder)
        return _CACHE[kind]

    return build


def _tokens(batch=2, seq=SEQ, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, seq))


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


def _jax_logits(model, params, tokens):
    return np.asarray(model.apply({"params": params}, jnp.asarray(tokens)))


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers(checkpoint, kind):
    hf_model, folder = checkpoint(kind)
    model, params = hf.import_checkpoint(folder)
    tokens = _tokens()
    ours = _jax_logits(model, params, tokens)
    assert ours.dtype == np.float32 and ours.shape == (2, SEQ, VOCAB)
    assert np.abs(ours - _hf_logits(hf_model, tokens)).max() <= 1e-4
    if model.cfg.sliding_window:  # the window really bites at this length
        unwindowed = type(model)(model.cfg.replace(sliding_window=0, layer_types=()))
        assert np.abs(_jax_logits(unwindowed, params, tokens) - ours).max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_export_round_trip_and_transformers_load(checkpoint, kind, tmp_path):
    hf_model, folder = checkpoint(kind)
    model, params = hf.import_checkpoint(folder)
    hf.export_checkpoint(model, params, tmp_path)
    model2, params2 = hf.import_checkpoint(tmp_path)
    assert model2.cfg == model.cfg
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(hf_model)
    tokens = _tokens(seed=1)
    np.testing.assert_allclose(_hf_logits(reloaded, tokens), _hf_logits(hf_model, tokens), atol=1e-6)


def _hf_greedy(hf_model, prompts, lengths, max_new, eos):
    T = prompts.shape[1]
    mask = (np.arange(T)[None, :] >= (T - lengths)[:, None]).astype(np.int64)
    with torch.no_grad():
        out = hf_model.generate(
            input_ids=torch.tensor(prompts),
            attention_mask=torch.tensor(mask),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        ).numpy()[:, T:]
    return np.pad(out, ((0, 0), (0, max_new - out.shape[1])), constant_values=eos)


@pytest.mark.parametrize("kind", ["gpt2", "llama_gqa_untied", "qwen2", "mistral_window", *NEW_FAMILIES])
def test_greedy_generate_matches_transformers_ragged(checkpoint, kind):
    """40 new tokens: past every sliding window (5 positions) of these models."""
    hf_model, folder = checkpoint(kind)
    model, params = hf.import_checkpoint(folder)
    lengths = np.array([SEQ, 7, 3])
    prompts = _tokens(3, SEQ, seed=2)
    prompts[np.arange(SEQ)[None, :] < (SEQ - lengths)[:, None]] = 0  # left padding
    eos = VOCAB - 1  # not produced by these models: rows run all 40 tokens
    ours = np.asarray(generate(model, params, prompts, 40, prompt_lengths=lengths, eos_id=eos))
    np.testing.assert_array_equal(ours, _hf_greedy(hf_model, prompts, lengths, 40, eos))


def test_greedy_generate_stops_at_eos_like_transformers(checkpoint):
    hf_model, folder = checkpoint("llama_tied_llama3")
    model, params = hf.import_checkpoint(folder)
    prompts = _tokens(2, 8, seed=3)
    lengths = np.array([8, 8])
    free = np.asarray(generate(model, params, prompts, 32))
    eos = int(free[0, 4])  # row 0 produces this token at step 4 (at the latest)
    ours = np.asarray(generate(model, params, prompts, 32, eos_id=eos))
    stop = list(free[0]).index(eos)
    assert (ours[0, stop:] == eos).all() and (ours[0, :stop] == free[0, :stop]).all()
    np.testing.assert_array_equal(ours, _hf_greedy(hf_model, prompts, lengths, 32, eos))


def test_sharded_index_import(checkpoint, tmp_path):
    hf_model, folder = checkpoint("llama_gqa_untied")
    hf_model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    _, sharded = hf.import_checkpoint(tmp_path)
    _, single = hf.import_checkpoint(folder)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), sharded, single)


def test_bfloat16_checkpoint_imports(checkpoint, tmp_path):
    hf_model, _ = checkpoint("qwen2")
    transformers.AutoModelForCausalLM.from_config(hf_model.config).to(torch.bfloat16).save_pretrained(
        tmp_path
    )
    weights = {
        k: v.float().numpy()
        for k, v in transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
        .state_dict()
        .items()
    }
    model, params = hf.import_checkpoint(tmp_path, dtype=jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(params["embed"]["embedding"]), weights["model.embed_tokens.weight"]
    )
    model16, params16 = hf.import_checkpoint(tmp_path, dtype=jnp.bfloat16)
    assert params16["embed"]["embedding"].dtype == jnp.bfloat16
    assert model16.apply({"params": params16}, jnp.asarray(_tokens())).dtype == jnp.float32


def test_llama3_and_linear_rope_frequencies_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for kind in ("llama_tied_llama3", "llama_linear_headdim", "qwen3_yarn"):
        hf_cfg = _hf_config(kind)
        cfg = hf_config.config_from_hf(hf_cfg.to_dict())
        rope_type = hf_cfg.rope_parameters["rope_type"]
        expected, factor = ROPE_INIT_FUNCTIONS[rope_type](hf_cfg, "cpu")
        np.testing.assert_allclose(np.asarray(rope_frequencies(cfg)), expected.numpy(), rtol=1e-6)
        assert attention_factor(cfg) == pytest.approx(factor or 1.0)
        assert cfg.head_dim == 24 or kind == "llama_tied_llama3"
    assert cfg.rope_yarn and attention_factor(cfg) > 1.1  # YaRN's factor of 4 scales cos and sin


_opened: list[str] = []


def _audit(event, args):
    if event == "open" and args and "pytorch_model" in str(args[0]):
        _opened.append(str(args[0]))


def test_pickle_only_folder_is_refused_without_opening_it(checkpoint, tmp_path):
    _, folder = checkpoint("gpt2")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    sys.addaudithook(_audit)
    _opened.clear()
    with pytest.raises(UserError, match="pytorch_model.bin.*never unpickles.*safe_serialization"):
        hf.import_checkpoint(tmp_path)
    assert _opened == []


def test_unsupported_architecture_is_named(tmp_path):
    config = {"architectures": ["BertForMaskedLM"], "model_type": "bert"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="BertForMaskedLM.*bert"):
        hf.import_checkpoint(tmp_path)


def test_config_round_trip_through_hf_dict():
    cfg = ModelConfig(
        family="llama",
        num_heads=4,
        num_kv_heads=2,
        d_model=64,
        head_dim=32,
        rope_llama3_scaling=(8.0, 1.0, 4.0, 64),
        tie_embeddings=False,
    )
    back = hf_config.config_from_hf(hf_config.config_to_hf(cfg), dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    assert back == cfg
