"""``ModelConfig``: the static description of a model (every architecture field, hashable).

A family (``models/families.py``) is a table of feature values: the feature fields below default to ``None``,
which means "the family's value", and are resolved when the config is made, so a resolved config names every
feature and ``to_dict`` stores them all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from codex_jax.errors import UserError
from codex_jax.models import families as fam

FAMILIES = tuple(fam.FAMILIES)
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
    # Architecture features (models/families.py): None takes the family's value.
    norm: str | None = None
    norm_offset: float | None = None
    post_norms: bool | None = None
    qk_norm: bool | None = None
    positions: str | None = None
    mlp: str | None = None
    activation: str | None = None
    attention_bias: bool | None = None  # q/k/v biases
    out_bias: bool | None = None
    mlp_bias: bool | None = None
    embed_scale: bool | None = None
    # Per-model numbers (0: off): soft-caps of attention scores and output logits, the query scale's dim.
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    query_scale_dim: float = (
        0.0  # scores * query_scale_dim ** -0.5 (0: head_dim); Gemma's query_pre_attn_scalar
    )
    rope_theta: float = 10000.0
    # Llama 3 style scaling: (factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings); empty tuple for none.
    rope_llama3_scaling: tuple = ()
    rope_linear_factor: float = 1.0
    # YaRN: (factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor, truncate);
    # empty for none (models/rope.py).
    rope_yarn: tuple = ()
    rope_fraction: float = (
        1.0  # the leading fraction of each head's dims that RoPE rotates (Phi-4-mini: 0.75)
    )
    # Sliding layers: each token attends to at most this many most recent tokens (0: unlimited).
    sliding_window: int = 0
    # Per layer 'sliding' or 'full' (empty: every layer sliding when sliding_window > 0, else full).
    layer_types: tuple = ()
    rope_local_theta: float = 0.0  # > 0: sliding layers use this RoPE base, unscaled (Gemma 3)
    # LoRA (models/lora.py): adapter scale alpha / rank and dropout on the adapter input.
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    # The 'params' are a LoRA run's frozen base: kernels get no gradient, so models/quant.matmul may
    # recompute their cast in the backward pass instead of keeping it (set from lora.rank > 0).
    frozen_base: bool = False
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
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "rope_yarn", tuple(self.rope_yarn))
        if self.family not in FAMILIES:
            raise UserError(f"model family={self.family!r}: expected one of {FAMILIES}")
        for name, value in fam.features(self.family).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        checks = (
            *((getattr(self, k) in v, k, v) for k, v in fam.FEATURE_CHOICES.items()),
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
        if self.layer_types and (
            len(self.layer_types) != self.num_layers or set(self.layer_types) - set(fam.LAYER_TYPES)
        ):
            raise UserError(
                f"model layer_types={list(self.layer_types)}: expected {self.num_layers} entries of "
                f"{fam.LAYER_TYPES}"
            )
        if "sliding" in self.layer_types and not self.sliding_window:
            raise UserError("model layer_types has 'sliding' layers but sliding_window=0")
        if not 0.0 < self.rope_fraction <= 1.0 or int(self.dims_per_head * self.rope_fraction) % 2:
            raise UserError(
                f"model rope_fraction={self.rope_fraction}: must be in (0, 1] and rotate an even number of "
                f"the {self.dims_per_head} dims per head"
            )
        if self.rope_yarn and len(self.rope_yarn) != 6:
            raise UserError(
                "model rope_yarn must be (factor, original_max_position_embeddings, beta_fast, beta_slow, "
                f"attention_factor, truncate), got {self.rope_yarn!r}"
            )
        if sum(map(bool, (self.rope_yarn, self.rope_llama3_scaling, self.rope_linear_factor != 1.0))) > 1:
            raise UserError(
                "model RoPE takes one scaling: rope_yarn, rope_llama3_scaling or rope_linear_factor"
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

    def layer_type(self, i: int) -> str:
        """``'sliding'`` or ``'full'``: layer ``i``'s attention."""
        if self.layer_types:
            return self.layer_types[i]
        return "sliding" if self.sliding_window else "full"

    def layer(self, i: int) -> ModelConfig:
        """The config layer ``i`` runs with: its own window (0 for a full layer) and RoPE base, no pattern."""
        if self.layer_type(i) == "full":
            changes: dict[str, Any] = {"sliding_window": 0}
        elif self.rope_local_theta:
            changes = {
                "rope_theta": self.rope_local_theta,
                "rope_llama3_scaling": (),
                "rope_linear_factor": 1.0,
            }
        else:
            changes = {}
        return self.replace(layer_types=(), rope_local_theta=0.0, **changes)

    @property
    def windows(self) -> tuple[int, ...]:
        """The distinct attention windows of the layers (0: a full layer)."""
        return tuple(sorted({self.layer(i).sliding_window for i in range(self.num_layers)}))

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weights_dtype(self):
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Builds a ModelConfig from a mapping, ignoring keys that are not model fields.

        A mapping saved before families were data (no ``norm`` key) used ``attention_bias`` only for extra
        q/k/v biases on a Llama; GPT-2 always had them, whatever it stored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names}
        if "norm" not in kwargs and kwargs.get("family", "gpt2") == "gpt2":
            kwargs.pop("attention_bias", None)
        for key in ("rope_llama3_scaling", "layer_types", "rope_yarn", "mlp_only_layers"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly mapping of every field (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
