"""Sparse mixture-of-experts MLP (Mixtral, Qwen3-MoE): a float32 router, top-k experts per token, SwiGLU
experts.

Parameters of one MoE layer (``E`` experts, width ``D``, expert hidden width ``F = cfg.expert_d_ff``)::

    router     [D, E]     float32 logits -> softmax -> top-k (optionally renormalised: ``norm_topk_prob``)
    gate_proj  [E, D, F]  stacked expert weights: expert e computes
    up_proj    [E, D, F]      down(silu(x @ gate[e]) * (x @ up[e]))
    down_proj  [E, F, D]

Expert computation (``model.moe_impl``; ``'auto'`` picks per backend, logged once per choice like attention):

- ``'ragged'``: dropless; assignments sorted by expert, ``jax.lax.ragged_dot`` (a native grouped matmul on
  TPU and GPU; on CPU XLA expands it to every expert, so ``'auto'`` does not pick it there);
- ``'blocks'``: dropless; assignments sorted by expert, each expert's run padded to a multiple of a block
  of rows, one batched matmul over the blocks (each block with its expert's weights): about
  ``1 + E * block / (N * k)`` times the FLOPs of the routed tokens, on any backend;
- ``'dispatch'``: each expert takes at most ``ceil(capacity_factor * N * k / E)`` tokens (earlier tokens
  first, first choices before second); the rest are dropped (their fraction is reported);
- ``'dense'``: every expert on every token, weighted by the (zero outside the top k) routing weights: the
  reference.

Every path gives the same result when nothing is dropped. Each call sows its router statistics into the
``'moe'`` collection (:data:`COLLECTION`); :func:`router_losses` turns them into the load-balancing loss
(Switch Transformer's, pooled over layers as transformers' ``load_balancing_loss_func``), the router
z-loss (ST-MoE's mean squared log-partition) and the dropped fraction. The collection is only written when
the caller makes it mutable (the training loss does); inference never pays for it.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from codex_jax.models.config import ModelConfig

logger = logging.getLogger(__name__)

COLLECTION = "moe"  # the flax collection the router statistics are sown into
ROUTER_STATS = "router"
MAX_BLOCK = 128  # 'blocks': rows per block at most
MOE_PATHS = ("dense", "ragged", "blocks", "dispatch")  # what model.moe_impl='auto' chooses between
EXPERT_WEIGHTS = ("gate_proj", "up_proj", "down_proj")  # the stacked [E, in, out] parameters of a layer


def choose(cfg: ModelConfig, platform: str) -> tuple[str, str]:
    """``(path, reason)`` of ``cfg.moe_impl`` on ``platform`` ('cpu', 'gpu', 'tpu')."""
    if cfg.moe_impl != "auto":
        return cfg.moe_impl, f"model.moe_impl={cfg.moe_impl!r}"
    if platform in ("tpu", "gpu", "cuda", "rocm"):
        return "ragged", f"{platform}: jax.lax.ragged_dot (grouped matmul)"
    return "blocks", f"{platform}: ragged_dot would compute every expert here; expert runs padded to blocks"


def resolve(cfg: ModelConfig, platform: str) -> ModelConfig:
    """``cfg`` with ``moe_impl`` set to what ``'auto'`` means on ``platform`` (an ahead-of-time compile for
    TPU on a CPU host must not take the host's choice)."""
    return cfg.replace(moe_impl=choose(cfg, platform)[0]) if cfg.num_experts else cfg


@functools.lru_cache(maxsize=32)
def _log_choice(platform: str, impl: str, reason: str) -> None:
    logger.info("mixture of experts on %s: %s: %s", platform, impl, reason)


def block_rows(assignments: int, num_experts: int) -> int:
    """Rows per block of the ``'blocks'`` path: a power of two near a quarter of an expert's mean load, in
    ``[8, MAX_BLOCK]``."""
    target = max(1, assignments // (4 * num_experts))
    return int(min(MAX_BLOCK, max(8, 1 << (target.bit_length() - 1))))


def capacity(cfg: ModelConfig, tokens: int) -> int:
    """Slots per expert of the ``'dispatch'`` path for ``tokens`` tokens."""
    return max(1, math.ceil(cfg.capacity_factor * tokens * cfg.experts_per_token / cfg.num_experts))


def route(cfg: ModelConfig, logits_NxE):
    """``(routing weights [N, k] float32, chosen experts [N, k] int32, probabilities [N, E])`` of float32
    router logits: softmax, top-k, renormalised to sum to 1 when ``cfg.norm_topk_prob``."""
    probs_NxE = jax.nn.softmax(logits_NxE, axis=-1)
    weights_NxK, experts_NxK = jax.lax.top_k(probs_NxE, cfg.experts_per_token)
    if cfg.norm_topk_prob:
        weights_NxK = weights_NxK / weights_NxK.sum(-1, keepdims=True)
    return weights_NxK, experts_NxK.astype(jnp.int32), probs_NxE


class Proj(NamedTuple):
    """One stacked expert projection: ``kernel [E, in, out]`` and, when the experts carry LoRA adapters
    (``lora.experts``), ``lora_a [E, in, r]`` and ``lora_b [E, r, out]`` (already scaled by alpha / r)."""

    kernel: jax.Array
    lora_a: jax.Array | None = None
    lora_b: jax.Array | None = None


class Experts(NamedTuple):
    """The three projections of a layer's experts (a pytree: each path gathers or slices it as a whole)."""

    gate: Proj
    up: Proj
    down: Proj


def _grouped(x, w_GxIxO):
    """Each group's rows times its own weights: ``x [G, B, I]`` (or ``[B, I]``, shared by every group)."""
    return jnp.einsum("gbi,gio->gbo" if x.ndim == 3 else "bi,gio->gbo", x, w_GxIxO)


def _project(x, proj: Proj, matmul):
    """``x @ kernel`` plus the adapter's ``x @ lora_a @ lora_b`` under the path's grouped ``matmul``."""
    y = matmul(x, proj.kernel)
    if proj.lora_a is not None:
        y = y + matmul(matmul(x, proj.lora_a), proj.lora_b)
    return y


def _swiglu(x, experts: Experts, matmul=_grouped):
    """SwiGLU of each group of rows with its own experts' weights (``matmul``: :func:`_grouped`, or
    ``ragged_dot`` over sorted rows)."""
    h = nn.silu(_project(x, experts.gate, matmul)) * _project(x, experts.up, matmul)
    return _project(h, experts.down, matmul)


def _sorted_assignments(experts_NxK):
    """Assignments (token-major, ``A = N * k``) sorted by expert: ``(order [A], tokens [A], sizes [E])``."""
    N, K = experts_NxK.shape
    experts_A = experts_NxK.reshape(-1)
    order_A = jnp.argsort(experts_A, stable=True)
    return order_A, order_A // K, experts_A[order_A]


def _unsort(y_AxD, order_A, weights_NxK):
    """Sum over each token's k experts of the sorted outputs ``y`` weighted by the routing weights."""
    N, K = weights_NxK.shape
    y_AxD = jnp.zeros_like(y_AxD).at[order_A].set(y_AxD, unique_indices=True)
    y_NxKxD = y_AxD.reshape(N, K, -1)
    return jnp.einsum("nkd,nk->nd", y_NxKxD, weights_NxK.astype(y_NxKxD.dtype))


def ragged_experts(x_NxD, weights_NxK, experts_NxK, experts: Experts):
    """Dropless: tokens sorted by expert, ``jax.lax.ragged_dot`` grouped matmuls (three, and two more per
    adapted projection)."""
    E = experts.gate.kernel.shape[0]
    order_A, tokens_A, sorted_experts_A = _sorted_assignments(experts_NxK)
    sizes_E = jnp.bincount(sorted_experts_A, length=E).astype(jnp.int32)
    y_AxD = _swiglu(x_NxD[tokens_A], experts, lambda x, w: jax.lax.ragged_dot(x, w, sizes_E))
    return _unsort(y_AxD, order_A, weights_NxK)


def block_experts(x_NxD, weights_NxK, experts_NxK, experts: Experts):
    """Dropless: tokens sorted by expert, each expert's run padded to whole blocks, one batched matmul."""
    E = experts.gate.kernel.shape[0]
    N, K = experts_NxK.shape
    A = N * K
    b = block_rows(A, E)
    nb = -(-A // b) + E  # enough blocks for any split of A rows into E runs
    order_A, tokens_A, sorted_experts_A = _sorted_assignments(experts_NxK)
    sizes_E = jnp.bincount(sorted_experts_A, length=E).astype(jnp.int32)
    padded_E = -(-sizes_E // b) * b
    start_E = jnp.cumsum(sizes_E) - sizes_E  # first sorted row of each expert
    pstart_E = jnp.cumsum(padded_E) - padded_E  # first padded row of each expert
    rank_A = jnp.arange(A, dtype=jnp.int32) - start_E[sorted_experts_A]
    slot_A = pstart_E[sorted_experts_A] + rank_A  # padded row of each sorted assignment
    # Padded rows -> token (N: a zero row); each block's expert (unused trailing blocks: the last expert).
    token_P = jnp.full((nb * b,), N, jnp.int32).at[slot_A].set(tokens_A, unique_indices=True)
    block_start_G = jnp.arange(nb, dtype=jnp.int32) * b
    expert_G = jnp.minimum(jnp.searchsorted(jnp.cumsum(padded_E), block_start_G, side="right"), E - 1)
    x_pad = jnp.concatenate([x_NxD, jnp.zeros((1, x_NxD.shape[1]), x_NxD.dtype)])
    xb_GxBxD = x_pad[token_P].reshape(nb, b, -1)
    y_GxBxD = _swiglu(xb_GxBxD, jax.tree.map(lambda w: w[expert_G], experts))
    y_AxD = y_GxBxD.reshape(nb * b, -1)[slot_A]
    return _unsort(y_AxD, order_A, weights_NxK)


def dispatch_experts(x_NxD, weights_NxK, experts_NxK, experts: Experts, capacity_per_expert: int):
    """Capacity-limited: each expert's first ``capacity_per_expert`` assignments (choice-major, then token
    order), gathered into ``[E, C, D]``; returns ``(y [N, D], dropped assignments' fraction)``."""
    E = experts.gate.kernel.shape[0]
    N, K = experts_NxK.shape
    C = capacity_per_expert
    onehot_KxNxE = jax.nn.one_hot(experts_NxK.T, E, dtype=jnp.int32)
    position_KxNxE = jnp.cumsum(onehot_KxNxE.reshape(K * N, E), axis=0).reshape(K, N, E) - 1
    position_NxK = jnp.take_along_axis(position_KxNxE, experts_NxK.T[..., None], -1)[..., 0].T
    kept_NxK = position_NxK < C
    slot_NxK = jnp.where(kept_NxK, experts_NxK * C + position_NxK, E * C)  # E * C: the dropped slot
    tokens_NxK = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32)[:, None], (N, K))
    token_S = jnp.full((E * C + 1,), N, jnp.int32).at[slot_NxK.reshape(-1)].set(tokens_NxK.reshape(-1))
    x_pad = jnp.concatenate([x_NxD, jnp.zeros((1, x_NxD.shape[1]), x_NxD.dtype)])
    xe_ExCxD = x_pad[token_S[: E * C]].reshape(E, C, -1)
    ye_ExCxD = _swiglu(xe_ExCxD, experts)
    y_pad = jnp.concatenate([ye_ExCxD.reshape(E * C, -1), jnp.zeros((1, ye_ExCxD.shape[-1]), ye_ExCxD.dtype)])
    y_NxKxD = y_pad[slot_NxK]
    y_NxD = jnp.einsum("nkd,nk->nd", y_NxKxD, weights_NxK.astype(y_NxKxD.dtype))
    dropped = 1.0 - kept_NxK.sum(dtype=jnp.float32) / (N * K)
    return y_NxD, dropped


def dense_experts(x_NxD, weights_NxK, experts_NxK, experts: Experts):
    """Every expert on every token, combined with the routing weights (zero outside the top k)."""
    E = experts.gate.kernel.shape[0]
    combine_NxE = (jax.nn.one_hot(experts_NxK, E, dtype=jnp.float32) * weights_NxK[..., None]).sum(1)
    y_ExNxD = _swiglu(x_NxD, experts)  # [N, D] rows shared by every expert
    return jnp.einsum("end,ne->nd", y_ExNxD, combine_NxE.astype(y_ExNxD.dtype))


class MoeMlp(nn.Module):
    """The sparse MLP of one MoE layer: ``[B, T, D] -> [B, T, D]`` (see the module docstring)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, deterministic: bool = True):
        cfg = self.cfg
        B, T, D = x_BxTxD.shape
        E, F = cfg.num_experts, cfg.expert_d_ff
        out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
        init = nn.initializers.normal(stddev=0.02)
        router_DxE = self.param("router", init, (D, E), jnp.float32)
        gate = self.param("gate_proj", init, (E, D, F), cfg.weights_dtype)
        up = self.param("up_proj", init, (E, D, F), cfg.weights_dtype)
        down = self.param("down_proj", nn.initializers.normal(out_std), (E, F, D), cfg.weights_dtype)
        experts = Experts(*(self._proj(n, w) for n, w in zip(EXPERT_WEIGHTS, (gate, up, down), strict=True)))

        x_NxD = x_BxTxD.reshape(B * T, D).astype(cfg.compute_dtype)
        logits_NxE = jnp.dot(x_NxD.astype(jnp.float32), router_DxE, precision=jax.lax.Precision.HIGHEST)
        weights_NxK, experts_NxK, probs_NxE = route(cfg, logits_NxE)
        platform = jax.default_backend()
        impl, reason = choose(cfg, platform)
        _log_choice(platform, impl, reason)
        dropped = jnp.float32(0.0)
        args = (x_NxD, weights_NxK, experts_NxK, experts)
        if impl == "ragged":
            y_NxD = ragged_experts(*args)
        elif impl == "blocks":
            y_NxD = block_experts(*args)
        elif impl == "dispatch":
            y_NxD, dropped = dispatch_experts(*args, capacity(cfg, B * T))
        else:
            y_NxD = dense_experts(*args)
        counts_E = jax.nn.one_hot(experts_NxK, E, dtype=jnp.float32).sum((0, 1))
        stats = {
            "counts": counts_E,  # top-k assignments per expert
            "probs": probs_NxE.sum(0),  # summed router probabilities per expert
            "z": jnp.square(jax.nn.logsumexp(logits_NxE, axis=-1)).sum(),
            "tokens": jnp.float32(B * T),
            "dropped": dropped,
        }
        self.sow(COLLECTION, ROUTER_STATS, stats)
        y_BxTxD = y_NxD.reshape(B, T, D).astype(cfg.compute_dtype)
        return nn.Dropout(cfg.dropout)(y_BxTxD, deterministic=deterministic)

    def _proj(self, name: str, kernel) -> Proj:
        """The stacked expert weight ``name`` in the compute dtype, with its adapter when the ``'lora'``
        collection holds one (``{name: {'lora_a' [E, in, r], 'lora_b' [E, r, out]}}``, models/lora.py)."""
        dtype = self.cfg.compute_dtype
        if not self.has_variable("lora", name):
            return Proj(kernel.astype(dtype))
        entry: dict = self.get_variable("lora", name)
        a, b = entry["lora_a"], entry["lora_b"]
        scale = jnp.asarray(self.cfg.lora_alpha / a.shape[-1], jnp.float32)
        return Proj(kernel.astype(dtype), a.astype(dtype), (b.astype(jnp.float32) * scale).astype(dtype))


def layer_stats(collection) -> list[dict]:
    """Every MoE layer's sown router statistics (dicts of arrays), in a stable order."""
    found: list[dict] = []

    def walk(tree):
        for key in sorted(tree):
            value = tree[key]
            if key == ROUTER_STATS and isinstance(value, tuple):
                found.extend(value)
            elif isinstance(value, dict) or hasattr(value, "items"):
                walk(dict(value))

    walk(dict(collection))
    return found


def load_balancing_loss(counts_LxE, probs_LxE, tokens_L):
    """Switch Transformer's load-balancing loss pooled over layers, as transformers computes it:
    ``E * sum_e (assignments to e / rows) * (router probability of e / rows)``, rows = tokens x layers."""
    E = counts_LxE.shape[-1]
    rows = tokens_L.sum()
    return E * jnp.sum((counts_LxE.sum(0) / rows) * (probs_LxE.sum(0) / rows))


def router_losses(collection) -> dict:
    """``{'moe_balance', 'router_z', 'moe_dropped'}`` of a forward pass's ``'moe'`` collection (float32
    scalars; ``{}`` when it holds no MoE layer): the load-balancing loss, the mean squared log-partition of
    the router logits, and the fraction of assignments dropped at a capacity (mean over layers)."""
    stats = layer_stats(collection)
    if not stats:
        return {}
    stacked = {k: jnp.stack([s[k] for s in stats]) for k in stats[0]}
    tokens_L = stacked["tokens"]
    return {
        "moe_balance": load_balancing_loss(stacked["counts"], stacked["probs"], tokens_L),
        "router_z": stacked["z"].sum() / tokens_L.sum(),
        "moe_dropped": stacked["dropped"].mean(),
    }


def penalty(cfg: ModelConfig, terms: dict):
    """What the router terms add to the training objective: ``router_aux_loss_coef * moe_balance +
    router_z_loss_coef * router_z`` (0 without MoE layers)."""
    if not terms:
        return jnp.float32(0.0)
    return cfg.router_aux_loss_coef * terms["moe_balance"] + cfg.router_z_loss_coef * terms["router_z"]
