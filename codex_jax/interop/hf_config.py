"""Hugging Face ``config.json`` <-> :class:`ModelConfig` for the supported architectures.

GPT2LMHeadModel (family 'gpt2'), LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM (family
'llama'): :func:`config_from_hf` reads one (refusing settings codex_jax cannot reproduce exactly),
:func:`config_to_hf` writes one that transformers loads. The weights are ``models/hf.py``'s.
"""

from __future__ import annotations

import json
from typing import Any

from codex_jax.errors import UserError
from codex_jax.files import as_path
from codex_jax.models.config import ModelConfig

ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


# ------------------------------------------------------------------------------------- config.json


def read_config(path) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face folder."""
    file = as_path(path) / "config.json"
    if not file.is_file():
        raise UserError(f"{path}: no config.json; expected a Hugging Face model folder")
    return json.loads(file.read_text())


def model_type_of(hf: dict) -> str:
    """The supported model type of a config.json ('gpt2', 'llama', 'mistral', 'qwen2'), or a UserError."""
    archs = hf.get("architectures") or []
    known = [ARCHITECTURES[a] for a in archs if a in ARCHITECTURES]
    if known and len(known) == len(archs):
        return known[0]
    if not archs and hf.get("model_type") in ARCHITECTURES.values():
        return hf["model_type"]
    raise UserError(
        f"config.json: unsupported architectures={archs} (model_type={hf.get('model_type')!r}); "
        f"supported: {sorted(ARCHITECTURES)}"
    )


def _require(ok: bool, what: str):
    if not ok:
        raise UserError(f"config.json: {what} is not supported")


def _gpt2_fields(hf: dict) -> dict[str, Any]:
    _require(
        hf.get("activation_function", "gelu_new") in _GELU_TANH,
        f"activation {hf.get('activation_function')}",
    )
    _require(hf.get("scale_attn_weights", True), "scale_attn_weights=false")
    _require(not hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=true")
    _require(not hf.get("add_cross_attention", False), "add_cross_attention=true")
    d = hf["n_embd"]
    return dict(
        family="gpt2",
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        num_kv_heads=hf["n_head"],
        d_model=d,
        d_ff=hf.get("n_inner") or 4 * d,
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("n_positions", 1024),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _rope_fields(hf: dict) -> dict[str, Any]:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    _require(
        params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) == 1.0,
        "partial_rotary_factor != 1",
    )
    fields: dict[str, Any] = {"rope_theta": float(theta)}
    if kind == "linear":
        fields["rope_linear_factor"] = float(params["factor"])
    elif kind == "llama3":
        fields["rope_llama3_scaling"] = (
            float(params["factor"]),
            float(params["low_freq_factor"]),
            float(params["high_freq_factor"]),
            int(params["original_max_position_embeddings"]),
        )
    else:
        _require(kind == "default", f"rope type {kind!r} (have: default, linear, llama3)")
    return fields


def _llama_fields(hf: dict, model_type: str) -> dict[str, Any]:
    _require(hf.get("hidden_act", "silu") == "silu", f"hidden_act {hf.get('hidden_act')}")
    _require(not hf.get("mlp_bias", False), "mlp_bias=true")
    # Llama's attention_bias also biases o_proj; ModelConfig.attention_bias (Qwen2) does not.
    _require(model_type == "qwen2" or not hf.get("attention_bias", False), "llama attention_bias=true")
    window = 0
    if model_type == "mistral":
        window = hf.get("sliding_window") or 0
    elif model_type == "qwen2":
        _require(not hf.get("use_sliding_window", False), "qwen2 use_sliding_window=true")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    return dict(
        family="llama",
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        head_dim=0 if head_dim * heads == hf["hidden_size"] else head_dim,
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        attention_bias=model_type == "qwen2",
        sliding_window=int(window),
        **_rope_fields(hf),
    )


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """ModelConfig for a parsed ``config.json``; ``overrides`` set other fields (dtype, ...)."""
    model_type = model_type_of(hf)
    try:
        fields = _gpt2_fields(hf) if model_type == "gpt2" else _llama_fields(hf, model_type)
    except KeyError as e:
        raise UserError(f"config.json ({model_type}): missing key {e}") from None
    return ModelConfig(**{**fields, **overrides})


def _export_model_type(cfg: ModelConfig) -> str:
    if cfg.family == "gpt2":
        plain = cfg.dims_per_head * cfg.num_heads == cfg.d_model and not cfg.sliding_window
        if cfg.num_kv_heads != cfg.num_heads or not plain:
            raise UserError(
                "Hugging Face GPT-2 has no grouped-query attention, head_dim or sliding_window "
                f"(this model: num_kv_heads={cfg.num_kv_heads} of {cfg.num_heads} heads, "
                f"head_dim={cfg.head_dim}, sliding_window={cfg.sliding_window})"
            )
        return "gpt2"
    if cfg.attention_bias:
        if cfg.sliding_window or cfg.head_dim:
            raise UserError("no Hugging Face architecture has q/k/v biases with sliding_window or head_dim")
        return "qwen2"
    return "mistral" if cfg.sliding_window else "llama"


def _gpt2_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The GPT-2 fields of ``config.json``."""
    return dict(
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        n_embd=cfg.d_model,
        n_inner=cfg.d_ff,
        n_positions=cfg.max_seq_len,
        layer_norm_epsilon=cfg.norm_eps,
        activation_function="gelu_new",
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=0.0,
    )


def _rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """Hugging Face's rope parameters (``rope_type`` default, llama3 or linear) of ``cfg``."""
    if cfg.rope_llama3_scaling and cfg.rope_linear_factor != 1.0:
        raise UserError("Hugging Face rope takes one scaling: llama3 or linear, not both")
    if cfg.rope_llama3_scaling:
        factor, low, high, original = cfg.rope_llama3_scaling
        return dict(
            rope_type="llama3",
            factor=factor,
            low_freq_factor=low,
            high_freq_factor=high,
            original_max_position_embeddings=original,
        )
    if cfg.rope_linear_factor != 1.0:
        return dict(rope_type="linear", factor=cfg.rope_linear_factor)
    return {"rope_type": "default"}


def _llama_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The Llama fields of ``config.json`` (Mistral and Qwen2 adjust them)."""
    rope = _rope_to_hf(cfg)
    return dict(
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        head_dim=cfg.dims_per_head,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        rope_theta=cfg.rope_theta,
        rope_scaling=None if rope["rope_type"] == "default" else rope,
        rope_parameters=dict(rope, rope_theta=cfg.rope_theta),
    )


def _mistral_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """Llama's fields plus the sliding window."""
    return dict(_llama_to_hf(cfg), sliding_window=cfg.sliding_window)


def _qwen2_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """Llama's fields with q/k/v biases, no sliding window and no ``head_dim``."""
    out = dict(_llama_to_hf(cfg), attention_bias=True, use_sliding_window=False, sliding_window=None)
    del out["head_dim"]
    return out


_TO_HF = {"gpt2": _gpt2_to_hf, "llama": _llama_to_hf, "mistral": _mistral_to_hf, "qwen2": _qwen2_to_hf}


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A ``config.json`` mapping that transformers reads back as ``cfg``."""
    model_type = _export_model_type(cfg)
    arch = {v: k for k, v in ARCHITECTURES.items()}[model_type]
    common = dict(
        architectures=[arch],
        model_type=model_type,
        vocab_size=cfg.vocab_size,
        tie_word_embeddings=cfg.tie_embeddings,
        dtype=cfg.param_dtype,
        torch_dtype=cfg.param_dtype,
        # Token ids belong to the tokenizer: pass them with export_checkpoint(extra_config=...).
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return dict(common, **_TO_HF[model_type](cfg))
