"""``ModelConfig``: the static description of a GPT-2 or Llama model (every architecture field, hashable)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from codex_jax.errors import UserError

FAMILIES = ("gpt2", "llama")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "pallas", "blocked")  # models/attention.py
GRAD_BARRIERS = ("auto", "on", "off")  # models/grad_barrier.py
REMAT_POLICIES = ("none", "full", "dots_saveable")
MOE_IMPLS = ("auto", "ragged", "blocks", "dispatch", "dense")  # models/moe.py


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static description of a model; hashable so it can sit inside jitted closures."""

    family: str = "gpt2"
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    d_model: int = 128
    d_ff: int = 512
    vocab_size: int = 1024
    max_seq_len: int = 1024
    head_dim: int = 0  # 0: d_model // num_heads
    dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "auto"
    remat: str = "none"
    grad_barriers: str = "auto"  # materialise the residual stream's gradient per residual add (CPU)
    # Loss over this many sequence positions at a time (compute/loss.py; 0: the full [B, T, V] logits).
    loss_chunk: int = 256
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    attention_bias: bool = False  # q/k/v biases (Qwen2); gpt2 always has biases
    rope_theta: float = 10000.0
    # Llama 3 style scaling: (factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings); empty tuple for none.
    rope_llama3_scaling: tuple = ()
    rope_linear_factor: float = 1.0
    # Mistral: each token attends to at most this many most recent tokens (0: unlimited).
    sliding_window: int = 0
    # LoRA (models/lora.py): adapter scale alpha / rank and dropout on the adapter input.
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    # Mixture of experts (models/moe.py); num_experts=0: every layer has a dense MLP.
    num_experts: int = 0
    experts_per_token: int = 2
    moe_d_ff: int = 0  # each expert's hidden width (0: d_ff)
    norm_topk_prob: bool = True  # renormalise the top-k routing weights to sum to 1
    router_aux_loss_coef: float = 0.0  # the load-balancing loss's weight in the training objective
    router_z_loss_coef: float = 0.0  # the router z-loss's weight in the training objective
    mlp_only_layers: tuple = ()  # layers that keep a dense MLP
    decoder_sparse_step: int = 1  # layer i is sparse when (i + 1) % step == 0 (and not in mlp_only_layers)
    moe_impl: str = "auto"
    capacity_factor: float = 1.25  # moe_impl='dispatch': slots per expert = factor * tokens * k / E

    def __post_init__(self):
        object.__setattr__(self, "rope_llama3_scaling", tuple(self.rope_llama3_scaling))
        object.__setattr__(self, "mlp_only_layers", tuple(int(i) for i in self.mlp_only_layers))
        checks = (
            (self.family in FAMILIES, "family", FAMILIES),
            (self.attention_impl in ATTENTION_IMPLS, "attention_impl", ATTENTION_IMPLS),
            (self.remat in REMAT_POLICIES, "remat", REMAT_POLICIES),
            (self.grad_barriers in GRAD_BARRIERS, "grad_barriers", GRAD_BARRIERS),
            (self.moe_impl in MOE_IMPLS, "moe_impl", MOE_IMPLS),
        )
        for ok, name, allowed in checks:
            if not ok:
                raise UserError(f"model {name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            raise UserError(
                f"model num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.rope_llama3_scaling and len(self.rope_llama3_scaling) != 4:
            raise UserError(
                "model rope_llama3_scaling must be (factor, low_freq_factor, high_freq_factor, "
                f"original_max_position_embeddings), got {self.rope_llama3_scaling!r}"
            )

        self._check_moe()

    def _check_moe(self) -> None:
        if self.num_experts < 0:
            raise UserError(f"model num_experts={self.num_experts} must be >= 0 (0: no mixture of experts)")
        if self.num_experts and not 1 <= self.experts_per_token <= self.num_experts:
            raise UserError(
                f"model experts_per_token={self.experts_per_token} must be between 1 and "
                f"num_experts={self.num_experts}"
            )
        if self.decoder_sparse_step < 1:
            raise UserError(f"model decoder_sparse_step={self.decoder_sparse_step} must be >= 1")
        if self.capacity_factor <= 0:
            raise UserError(f"model capacity_factor={self.capacity_factor} must be > 0")

    @property
    def expert_d_ff(self) -> int:
        """Each expert's hidden width."""
        return self.moe_d_ff or self.d_ff

    def sparse_layer(self, i: int) -> bool:
        """Whether layer ``i`` has a mixture-of-experts MLP (Qwen3-MoE's rule: ``num_experts > 0``, not in
        ``mlp_only_layers``, and ``(i + 1) % decoder_sparse_step == 0``)."""
        return (
            bool(self.num_experts)
            and i not in self.mlp_only_layers
            and (i + 1) % self.decoder_sparse_step == 0
        )

    @property
    def dims_per_head(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weights_dtype(self):
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Builds a ModelConfig from a mapping, ignoring keys that are not model fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        for key in ("rope_llama3_scaling", "mlp_only_layers"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly mapping of every field (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
