"""How big a model is, from its parameters or its config alone: parameter counts and training FLOPs."""

from __future__ import annotations

import jax

from codex_jax.models.config import ModelConfig


def count_params(params) -> int:
    """Total number of scalars in a parameter tree."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


def num_params(cfg: ModelConfig) -> int:
    """The number of parameters ``init_params(cfg)`` makes, counted from the config alone (no tracing)."""
    D, F, V, H = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.dims_per_head
    q, kv = cfg.num_heads * H, cfg.num_kv_heads * H
    norm = 2 * D if cfg.norm == "layernorm" else D
    qkv_bias, out_bias, mlp_bias = bool(cfg.attention_bias), bool(cfg.out_bias), bool(cfg.mlp_bias)
    attn = 2 * D * (q + kv) + qkv_bias * (q + 2 * kv) + out_bias * D + bool(cfg.qk_norm) * 2 * H
    projections = 3 if cfg.mlp == "gated" else 2  # gate/up/down or fc_in/fc_out
    mlp = projections * D * F + mlp_bias * ((projections - 1) * F + D)
    layer = attn + mlp + norm * (4 if cfg.post_norms else 2)
    positions = cfg.max_seq_len * D if cfg.positions == "learned" else 0
    embeds = V * D * (1 if cfg.tie_embeddings else 2) + positions
    sparse = sum(cfg.sparse_layer(i) for i in range(cfg.num_layers))  # MoE: router + E SwiGLU experts
    moe_extra = sparse * (D * cfg.num_experts + 3 * cfg.num_experts * D * cfg.expert_d_ff - mlp)
    return int(cfg.num_layers * layer + norm + embeds + moe_extra)


def flops_per_token(cfg: ModelConfig, num_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6·N + 12·L·H·Q·T (nanoGPT's; N without position embeddings, and of a
    mixture of experts only the ``experts_per_token`` experts that run)."""
    n = num_params - (cfg.max_seq_len * cfg.d_model if cfg.positions == "learned" else 0)
    sparse = sum(cfg.sparse_layer(i) for i in range(cfg.num_layers))  # MoE: only k experts run per token
    n -= sparse * (cfg.num_experts - cfg.experts_per_token) * 3 * cfg.d_model * cfg.expert_d_ff
    return 6.0 * n + 12.0 * cfg.num_layers * cfg.num_heads * cfg.dims_per_head * seq_len
