"""Writers of Hugging Face ``config.json`` fields from a ModelConfig: one function per ``model_type``,
named in :data:`codex_jax.interop.hf_types.HF_TYPES` (the installed transformers loads what they write).
"""

from __future__ import annotations

from typing import Any

from codex_jax.errors import UserError
from codex_jax.interop.hf_rope import rope_to_hf
from codex_jax.models.config import ModelConfig


def _number(x: float) -> int | float:
    """``x`` as an int when it is one (transformers' strict configs type some fields ``int``)."""
    return int(x) if float(x).is_integer() else x


def _layer_types_to_hf(cfg: ModelConfig) -> list[str]:
    return [f"{cfg.layer_type(i)}_attention" for i in range(cfg.num_layers)]


def gpt2(cfg: ModelConfig) -> dict[str, Any]:
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


def _decoder(cfg: ModelConfig, **extra) -> dict[str, Any]:
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


def llama(cfg: ModelConfig) -> dict[str, Any]:
    return _decoder(cfg, attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias)


def mistral(cfg: ModelConfig) -> dict[str, Any]:
    return _decoder(cfg, sliding_window=cfg.sliding_window)


def qwen2(cfg: ModelConfig) -> dict[str, Any]:
    out = _decoder(cfg, use_sliding_window=False, sliding_window=None)
    del out["head_dim"]  # Qwen2 derives it from the width
    return out


def qwen3(cfg: ModelConfig) -> dict[str, Any]:
    sliding = "sliding" in [cfg.layer_type(i) for i in range(cfg.num_layers)]
    return _decoder(
        cfg,
        attention_bias=cfg.attention_bias,
        use_sliding_window=sliding,
        sliding_window=cfg.sliding_window or None,
        max_window_layers=cfg.num_layers,
        layer_types=_layer_types_to_hf(cfg),
    )


def _moe_loss(cfg: ModelConfig) -> dict[str, Any]:
    coef = cfg.router_aux_loss_coef
    return dict(output_router_logits=coef > 0, router_aux_loss_coef=coef or 0.001, router_jitter_noise=0.0)


def mixtral(cfg: ModelConfig) -> dict[str, Any]:
    if cfg.moe_d_ff not in (0, cfg.d_ff):
        raise UserError(f"Mixtral's experts are d_ff={cfg.d_ff} wide (model.moe_d_ff={cfg.moe_d_ff})")
    return _decoder(
        cfg,
        sliding_window=cfg.sliding_window or None,
        num_local_experts=cfg.num_experts,
        num_experts_per_tok=cfg.experts_per_token,
        **_moe_loss(cfg),
    )


def qwen3_moe(cfg: ModelConfig) -> dict[str, Any]:
    out = _decoder(cfg, attention_bias=cfg.attention_bias, use_sliding_window=False, sliding_window=None)
    out.update(
        num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.experts_per_token,
        moe_intermediate_size=cfg.expert_d_ff,
        norm_topk_prob=cfg.norm_topk_prob,
        decoder_sparse_step=cfg.decoder_sparse_step,
        mlp_only_layers=list(cfg.mlp_only_layers),
        **_moe_loss(cfg),
    )
    return out


def gemma(cfg: ModelConfig) -> dict[str, Any]:
    out = _decoder(
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


def starcoder2(cfg: ModelConfig) -> dict[str, Any]:
    out = _decoder(cfg, use_bias=cfg.attention_bias, sliding_window=cfg.sliding_window or None)
    out["norm_epsilon"] = out.pop("rms_norm_eps")
    del out["head_dim"]
    return out


def phi3(cfg: ModelConfig) -> dict[str, Any]:
    out = _decoder(cfg, sliding_window=cfg.sliding_window or None)
    out["partial_rotary_factor"] = cfg.rope_fraction
    del out["head_dim"]
    return out
