"""The supported Hugging Face ``model_type``s, one :data:`HF_TYPES` entry each: its architecture class, the
codex_jax family (``models/families.py``), a reader of its ``config.json`` (as the installed transformers
resolves it) into ModelConfig fields, a writer back, and how it names its weights when that differs from
Llama's layout (:class:`Names`, read by ``interop/hf_weights.py``). Adding a family is one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from codex_jax.errors import UserError
from codex_jax.interop.hf_rope import rope_from_hf, rope_to_hf
from codex_jax.models.config import ModelConfig

_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", **{a: "gelu_tanh" for a in _GELU_TANH}}


@dataclasses.dataclass(frozen=True)
class Names:
    """How a ``model_type`` names its weights (Llama's layout unless changed)."""

    layout: str = "llama"  # 'llama' (model.layers.i...) or 'gpt2' (transformer.h.i...)
    mlp: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")  # HF module names of our MLP kernels
    fused_qkv: bool = False  # one qkv_proj (Phi-3)
    fused_gate_up: bool = False  # one gate_up_proj (Phi-3)
    moe_block: str = (
        ""  # a sparse layer's MoE module under model.layers.i ('' : no MoE; interop/hf_experts.py)
    )
    expert_style: str = ""  # its per-expert tensor names: a key of hf_experts.PER_EXPERT_NAMES


@dataclasses.dataclass(frozen=True)
class HFType:
    """One supported Hugging Face ``model_type``."""

    architecture: str
    family: str
    read: Callable[[Any], dict[str, Any]]  # the resolved transformers config -> ModelConfig fields
    write: Callable[[ModelConfig], dict[str, Any]]  # ModelConfig -> config.json fields
    names: Names = Names()


# ------------------------------------------------------------------------------------- reading


def _require(ok: bool, what: str):
    if not ok:
        raise UserError(f"config.json: {what} is not supported")


def _activation(name: str | None) -> str:
    _require(name in _ACTIVATIONS, f"activation {name!r} (have: {', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[str(name)]


def _shape(c) -> dict[str, Any]:
    """The fields every decoder config has (Llama's names)."""
    heads, width = c.num_attention_heads, c.hidden_size
    head_dim = getattr(c, "head_dim", None) or width // heads
    return dict(
        num_layers=c.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        d_model=width,
        d_ff=c.intermediate_size,
        vocab_size=c.vocab_size,
        max_seq_len=c.max_position_embeddings,
        head_dim=0 if head_dim * heads == width else head_dim,
        norm_eps=float(getattr(c, "rms_norm_eps", None) or getattr(c, "norm_epsilon", None) or 1e-6),
        tie_embeddings=bool(c.tie_word_embeddings),
    )


def _windows(c) -> dict[str, Any]:
    """``sliding_window`` and ``layer_types`` from a config with ``layer_types`` (or none)."""
    types = list(getattr(c, "layer_types", None) or [])
    known = {"full_attention": "full", "sliding_attention": "sliding"}
    _require(all(t in known for t in types), f"layer_types {sorted(set(types) - set(known))}")
    if "sliding_attention" not in types:
        return {}
    return dict(sliding_window=int(c.sliding_window), layer_types=tuple(known[t] for t in types))


def _read_gpt2(c) -> dict[str, Any]:
    _require(c.activation_function in _GELU_TANH, f"activation {c.activation_function}")
    _require(c.scale_attn_weights, "scale_attn_weights=false")
    _require(not c.scale_attn_by_inverse_layer_idx, "scale_attn_by_inverse_layer_idx=true")
    _require(not getattr(c, "add_cross_attention", False), "add_cross_attention=true")
    return dict(
        num_layers=c.n_layer,
        num_heads=c.n_head,
        num_kv_heads=c.n_head,
        d_model=c.n_embd,
        d_ff=c.n_inner or 4 * c.n_embd,
        vocab_size=c.vocab_size,
        max_seq_len=c.n_positions,
        norm_eps=c.layer_norm_epsilon,
        tie_embeddings=bool(c.tie_word_embeddings),
    )


def _read_llama(c) -> dict[str, Any]:
    bias = bool(getattr(c, "attention_bias", False))
    return dict(
        _shape(c),
        activation=_activation(c.hidden_act),
        attention_bias=bias,
        out_bias=bias,
        mlp_bias=bool(getattr(c, "mlp_bias", False)),
        sliding_window=int(getattr(c, "sliding_window", None) or 0),
        **rope_from_hf(c.rope_parameters, c.max_position_embeddings),
    )


def _read_qwen2(c) -> dict[str, Any]:
    return dict(
        _shape(c),
        activation=_activation(c.hidden_act),
        attention_bias=True,
        **_windows(c),
        **rope_from_hf(c.rope_parameters, c.max_position_embeddings),
    )


def _read_qwen3(c) -> dict[str, Any]:
    bias = bool(c.attention_bias)
    return dict(
        _shape(c),
        activation=_activation(c.hidden_act),
        attention_bias=bias,
        out_bias=bias,
        **_windows(c),
        **rope_from_hf(c.rope_parameters, c.max_position_embeddings),
    )


def _read_gemma(c) -> dict[str, Any]:
    bias = bool(c.attention_bias)
    _require(not getattr(c, "use_bidirectional_attention", False), "use_bidirectional_attention=true")
    fields = dict(
        _shape(c),
        activation=_activation(getattr(c, "hidden_activation", None) or c.hidden_act),
        attention_bias=bias,
        out_bias=bias,
        query_scale_dim=float(getattr(c, "query_pre_attn_scalar", None) or 0.0),
        attn_softcap=float(getattr(c, "attn_logit_softcapping", None) or 0.0),
        final_softcap=float(getattr(c, "final_logit_softcapping", None) or 0.0),
        **_windows(c),
    )
    rope = c.rope_parameters
    if "full_attention" in rope:  # Gemma 3: one RoPE per layer type
        local = rope_from_hf(rope["sliding_attention"], c.max_position_embeddings)
        _require(set(local) == {"rope_theta"}, "a scaled RoPE on the sliding layers")
        fields.update(rope_from_hf(rope["full_attention"], c.max_position_embeddings))
        fields["rope_local_theta"] = local["rope_theta"]
    else:
        fields.update(rope_from_hf(rope, c.max_position_embeddings))
    if fields.get("query_scale_dim") == (fields["head_dim"] or fields["d_model"] // fields["num_heads"]):
        fields["query_scale_dim"] = 0.0
    return fields


def _read_gemma_v1(c) -> dict[str, Any]:
    fields = _read_gemma(c)
    fields["activation"] = _activation(c.hidden_act)  # Gemma's MLP reads hidden_act, Gemma 2's the other
    return fields


def _read_starcoder2(c) -> dict[str, Any]:
    return dict(
        _shape(c),
        activation=_activation(c.hidden_act),
        attention_bias=bool(c.use_bias),
        out_bias=bool(c.use_bias),
        mlp_bias=bool(c.use_bias),
        sliding_window=int(c.sliding_window or 0),
        **rope_from_hf(c.rope_parameters, c.max_position_embeddings),
    )


def _read_phi3(c) -> dict[str, Any]:
    return dict(
        _shape(c),
        activation=_activation(c.hidden_act),
        sliding_window=int(c.sliding_window or 0),
        **rope_from_hf(c.rope_parameters, c.max_position_embeddings),
    )


def _moe_loss(c) -> dict[str, Any]:
    """The load-balancing coefficient transformers trains with (only when it outputs router logits)."""
    _require(not float(getattr(c, "router_jitter_noise", 0.0) or 0.0), "router_jitter_noise > 0")
    return dict(router_aux_loss_coef=float(c.router_aux_loss_coef) if c.output_router_logits else 0.0)


def _read_mixtral(c) -> dict[str, Any]:
    return dict(
        _read_llama(c),
        num_experts=int(c.num_local_experts),
        experts_per_token=int(c.num_experts_per_tok),
        norm_topk_prob=True,  # Mixtral always renormalises its top-k weights
        **_moe_loss(c),
    )


def _read_qwen3_moe(c) -> dict[str, Any]:
    return dict(
        _read_qwen3(c),
        num_experts=int(c.num_experts),
        experts_per_token=int(c.num_experts_per_tok),
        moe_d_ff=int(c.moe_intermediate_size),
        norm_topk_prob=bool(c.norm_topk_prob),
        decoder_sparse_step=int(c.decoder_sparse_step),
        mlp_only_layers=tuple(int(i) for i in (c.mlp_only_layers or ())),
        **_moe_loss(c),
    )


# ------------------------------------------------------------------------------------- writing


def _number(x: float) -> int | float:
    """``x`` as an int when it is one (transformers' strict configs type some fields ``int``)."""
    return int(x) if float(x).is_integer() else x


def _layer_types_to_hf(cfg: ModelConfig) -> list[str]:
    return [f"{cfg.layer_type(i)}_attention" for i in range(cfg.num_layers)]


def _write_gpt2(cfg: ModelConfig) -> dict[str, Any]:
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


_HF_ACTIVATION = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}


def _write_decoder(cfg: ModelConfig, **extra) -> dict[str, Any]:
    """Llama's names for the fields every decoder has."""
    return dict(
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        head_dim=cfg.dims_per_head,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        hidden_act=_HF_ACTIVATION[str(cfg.activation)],
        attention_dropout=0.0,
        rope_parameters=rope_to_hf(cfg),
        **extra,
    )


def _write_llama(cfg: ModelConfig) -> dict[str, Any]:
    return _write_decoder(cfg, attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias)


def _write_mistral(cfg: ModelConfig) -> dict[str, Any]:
    return _write_decoder(cfg, sliding_window=cfg.sliding_window)


def _write_qwen2(cfg: ModelConfig) -> dict[str, Any]:
    out = _write_decoder(cfg, use_sliding_window=False, sliding_window=None)
    del out["head_dim"]  # Qwen2 derives it from the width
    return out


def _write_qwen3(cfg: ModelConfig) -> dict[str, Any]:
    sliding = "sliding" in [cfg.layer_type(i) for i in range(cfg.num_layers)]
    return _write_decoder(
        cfg,
        attention_bias=cfg.attention_bias,
        use_sliding_window=sliding,
        sliding_window=cfg.sliding_window or None,
        max_window_layers=cfg.num_layers,
        layer_types=_layer_types_to_hf(cfg),
    )


def _write_moe_loss(cfg: ModelConfig) -> dict[str, Any]:
    coef = cfg.router_aux_loss_coef
    return dict(output_router_logits=coef > 0, router_aux_loss_coef=coef or 0.001, router_jitter_noise=0.0)


def _write_mixtral(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.moe_d_ff not in (0, cfg.d_ff):
        raise UserError(f"Mixtral's experts are d_ff={cfg.d_ff} wide (model.moe_d_ff={cfg.moe_d_ff})")
    return _write_decoder(
        cfg,
        sliding_window=cfg.sliding_window or None,
        num_local_experts=cfg.num_experts,
        num_experts_per_tok=cfg.experts_per_token,
        **_write_moe_loss(cfg),
    )


def _write_qwen3_moe(cfg: ModelConfig) -> dict[str, Any]:
    out = _write_decoder(
        cfg, attention_bias=cfg.attention_bias, use_sliding_window=False, sliding_window=None
    )
    out.update(
        num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.experts_per_token,
        moe_intermediate_size=cfg.expert_d_ff,
        norm_topk_prob=cfg.norm_topk_prob,
        decoder_sparse_step=cfg.decoder_sparse_step,
        mlp_only_layers=list(cfg.mlp_only_layers),
        **_write_moe_loss(cfg),
    )
    return out


def _write_gemma(cfg: ModelConfig) -> dict[str, Any]:
    out = _write_decoder(
        cfg,
        attention_bias=cfg.attention_bias,
        hidden_activation=_HF_ACTIVATION[str(cfg.activation)],
        query_pre_attn_scalar=_number(cfg.query_scale_dim or cfg.dims_per_head),
    )
    if cfg.family == "gemma":
        del out["query_pre_attn_scalar"]
        return out
    out.update(
        attn_logit_softcapping=cfg.attn_softcap or None,
        final_logit_softcapping=cfg.final_softcap or None,
        sliding_window=cfg.sliding_window or 4096,
        layer_types=_layer_types_to_hf(cfg),
    )
    if cfg.family == "gemma3":
        local = cfg.replace(rope_theta=cfg.rope_local_theta or cfg.rope_theta)
        out["rope_parameters"] = {
            "full_attention": rope_to_hf(cfg),
            "sliding_attention": rope_to_hf(local, scaled=not cfg.rope_local_theta),
        }
    return out


def _write_starcoder2(cfg: ModelConfig) -> dict[str, Any]:
    out = _write_decoder(cfg, use_bias=cfg.attention_bias, sliding_window=cfg.sliding_window or None)
    out["norm_epsilon"] = out.pop("rms_norm_eps")
    del out["head_dim"]
    return out


def _write_phi3(cfg: ModelConfig) -> dict[str, Any]:
    out = _write_decoder(cfg, sliding_window=cfg.sliding_window or None)
    out["partial_rotary_factor"] = cfg.rope_fraction
    del out["head_dim"]
    return out


HF_TYPES: dict[str, HFType] = {
    "gpt2": HFType("GPT2LMHeadModel", "gpt2", _read_gpt2, _write_gpt2, Names(layout="gpt2")),
    "llama": HFType("LlamaForCausalLM", "llama", _read_llama, _write_llama),
    "mistral": HFType("MistralForCausalLM", "llama", _read_llama, _write_mistral),
    "qwen2": HFType("Qwen2ForCausalLM", "llama", _read_qwen2, _write_qwen2),
    "qwen3": HFType("Qwen3ForCausalLM", "qwen3", _read_qwen3, _write_qwen3),
    "gemma": HFType("GemmaForCausalLM", "gemma", _read_gemma_v1, _write_gemma),
    "gemma2": HFType("Gemma2ForCausalLM", "gemma2", _read_gemma, _write_gemma),
    "gemma3_text": HFType("Gemma3ForCausalLM", "gemma3", _read_gemma, _write_gemma),
    "starcoder2": HFType(
        "Starcoder2ForCausalLM",
        "starcoder2",
        _read_starcoder2,
        _write_starcoder2,
        Names(mlp=("c_fc", "c_proj")),
    ),
    "phi3": HFType(
        "Phi3ForCausalLM", "phi3", _read_phi3, _write_phi3, Names(fused_qkv=True, fused_gate_up=True)
    ),
    "mixtral": HFType(
        "MixtralForCausalLM",
        "mixtral",
        _read_mixtral,
        _write_mixtral,
        Names(moe_block="block_sparse_moe", expert_style="mixtral"),
    ),
    "qwen3_moe": HFType(
        "Qwen3MoeForCausalLM",
        "qwen3_moe",
        _read_qwen3_moe,
        _write_qwen3_moe,
        Names(moe_block="mlp", expert_style="qwen3_moe"),
    ),
}
ARCHITECTURES = {t.architecture: name for name, t in HF_TYPES.items()}
