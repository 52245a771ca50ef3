"""Readers of Hugging Face ``config.json`` files (as the installed transformers resolves them) into
ModelConfig fields: one function per ``model_type`` family, named in ``interop/hf_types.HF_TYPES``. An
unsupported setting is one UserError naming it.
"""

from __future__ import annotations

from typing import Any

from codex_jax.errors import UserError
from codex_jax.interop.hf_rope import rope_from_hf

_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", **{a: "gelu_tanh" for a in _GELU_TANH}}


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


def gpt2(c) -> dict[str, Any]:
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


def llama(c) -> dict[str, Any]:
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


def qwen2(c) -> dict[str, Any]:
    return dict(
        _shape(c),
        activation=_activation(c.hidden_act),
        attention_bias=True,
        **_windows(c),
        **rope_from_hf(c.rope_parameters, c.max_position_embeddings),
    )


def qwen3(c) -> dict[str, Any]:
    bias = bool(c.attention_bias)
    return dict(
        _shape(c),
        activation=_activation(c.hidden_act),
        attention_bias=bias,
        out_bias=bias,
        **_windows(c),
        **rope_from_hf(c.rope_parameters, c.max_position_embeddings),
    )


def gemma(c) -> dict[str, Any]:
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


def gemma_v1(c) -> dict[str, Any]:
    fields = gemma(c)
    fields["activation"] = _activation(c.hidden_act)  # Gemma's MLP reads hidden_act, Gemma 2's the other
    return fields


def starcoder2(c) -> dict[str, Any]:
    return dict(
        _shape(c),
        activation=_activation(c.hidden_act),
        attention_bias=bool(c.use_bias),
        out_bias=bool(c.use_bias),
        mlp_bias=bool(c.use_bias),
        sliding_window=int(c.sliding_window or 0),
        **rope_from_hf(c.rope_parameters, c.max_position_embeddings),
    )


def phi3(c) -> dict[str, Any]:
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


def mixtral(c) -> dict[str, Any]:
    return dict(
        llama(c),
        num_experts=int(c.num_local_experts),
        experts_per_token=int(c.num_experts_per_tok),
        norm_topk_prob=True,  # Mixtral always renormalises its top-k weights
        **_moe_loss(c),
    )


def qwen3_moe(c) -> dict[str, Any]:
    return dict(
        qwen3(c),
        num_experts=int(c.num_experts),
        experts_per_token=int(c.num_experts_per_tok),
        moe_d_ff=int(c.moe_intermediate_size),
        norm_topk_prob=bool(c.norm_topk_prob),
        decoder_sparse_step=int(c.decoder_sparse_step),
        mlp_only_layers=tuple(int(i) for i in (c.mlp_only_layers or ())),
        **_moe_loss(c),
    )
