"""Causal attention kernels per device (``model.attention_impl``).

``'auto'`` (the default) picks, when the step is traced: cuDNN flash attention on GPU where the shapes
allow, the Pallas flash attention kernel that jax ships (``jax.experimental.pallas.ops.tpu``) on TPU,
XLA's attention on CPU (:func:`blocked_attention` for long sequences), and XLA with a logged reason
wherever the fast kernel does not apply. The choice and its reason are logged once per distinct choice
(logger ``codex_jax.models.attention``). ``'xla'``, ``'cudnn'``, ``'pallas'`` and ``'blocked'`` force
one kernel. :func:`resolve` makes the choice for another platform (``codex-jax compile`` compiles for a
TPU from a CPU host).
"""

from __future__ import annotations

import functools
import logging
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

logger = logging.getLogger(__name__)

PALLAS_BLOCK = 128  # the Pallas TPU kernel's default block: sequence lengths must be multiples of it
QUERY_BLOCK = 256  # 'blocked': queries per block; 'auto' uses it on CPU for sequences longer than 2 blocks


def choose(cfg, platform: str, seq_len: int) -> tuple[str, str]:
    """``(kernel, reason)`` of ``cfg.attention_impl`` for causal self-attention over ``seq_len`` positions
    on ``platform`` ('cpu', 'gpu', 'tpu')."""
    if cfg.attention_impl != "auto":
        return cfg.attention_impl, f"model.attention_impl={cfg.attention_impl!r}"
    if platform in ("gpu", "cuda", "rocm"):
        if cfg.dtype not in ("bfloat16", "float16"):
            return "xla", f"cuDNN flash attention needs bfloat16/float16 compute (model.dtype={cfg.dtype!r})"
        if cfg.dims_per_head > 128 or cfg.dims_per_head % 8:
            return (
                "xla",
                f"cuDNN flash attention needs head_dim <= 128 and a multiple of 8 ({cfg.dims_per_head})",
            )
        if cfg.sliding_window:
            return "xla", "model.sliding_window: the cuDNN path is not used with a window"
        return "cudnn", "GPU"
    if platform == "tpu":
        if cfg.sliding_window:
            return "xla", "model.sliding_window: the Pallas TPU flash attention kernel has no window"
        if seq_len % PALLAS_BLOCK:
            return "xla", f"sequence length {seq_len} is not a multiple of {PALLAS_BLOCK} (the Pallas block)"
        return "pallas", "TPU"
    if seq_len > 2 * QUERY_BLOCK and seq_len % QUERY_BLOCK == 0:
        return (
            "blocked",
            f"{platform}, long sequences: {QUERY_BLOCK} queries at a time, recomputed in backward",
        )
    return "xla", f"{platform}: XLA's attention"


def resolve(cfg, platform: str, seq_len: int):
    """``cfg`` with ``attention_impl`` set to the kernel :func:`choose` picks on ``platform`` (logged)."""
    impl, reason = choose(cfg, platform, seq_len)
    _log_choice(platform, seq_len, impl, reason)
    return cfg.replace(attention_impl=impl)


@functools.lru_cache(maxsize=64)
def _log_choice(platform: str, seq_len: int, impl: str, reason: str) -> None:
    level = (
        logging.INFO if impl != "xla" or platform == "cpu" or reason.startswith("model.") else logging.WARNING
    )
    fallback = "" if level == logging.INFO else " (fallback)"
    logger.log(level, "attention on %s, %d positions: %s%s: %s", platform, seq_len, impl, fallback, reason)


def causal_attention(cfg, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH):
    """Causal (maybe windowed) attention ``[B, T, N, H]`` through the kernel ``cfg`` picks here."""
    T = q_BxTxNxH.shape[1]
    impl, reason = choose(cfg, jax.default_backend(), T)
    _log_choice(jax.default_backend(), T, impl, reason)
    if impl == "pallas":
        return _pallas(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
    if impl == "blocked":
        return blocked_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, cfg.sliding_window)
    window = (cfg.sliding_window - 1, 0) if cfg.sliding_window else None
    return jax.nn.dot_product_attention(
        q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, is_causal=True, local_window_size=window, implementation=impl
    )


def _pallas(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH):
    """The Pallas TPU flash attention kernel, per shard of the batch when a mesh is set (the kernel is a
    custom call that the partitioner cannot split itself)."""
    # Optional dependency guard: the TPU kernels import only where they run (or are compiled for).
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    N, H = q_BxTxNxH.shape[2], q_BxTxNxH.shape[3]
    repeat = N // k_BxTxKxH.shape[2]  # grouped-query attention: the kernel wants every head's k/v

    def kernel(q, k, v):
        q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, jnp.repeat(k, repeat, 2), jnp.repeat(v, repeat, 2)))
        sizes = fa.BlockSizes.get_default(*q.shape[:3], k.shape[2], H)
        out = fa.flash_attention(q, k, v, causal=True, sm_scale=1.0 / math.sqrt(H), block_sizes=sizes)
        return jnp.swapaxes(out, 1, 2)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH)
    batch = P(mesh.axis_names)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(batch, batch, batch), out_specs=batch, check_vma=False)(
        q_BxTxNxH, k_BxTxKxH, v_BxTxKxH
    )


def blocked_attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, sliding_window: int = 0, block: int = QUERY_BLOCK):
    """Causal attention ``QUERY_BLOCK`` queries at a time, each block's probabilities recomputed in backward
    (``jax.checkpoint``): memory ``[B, N, block, T]`` instead of XLA's ``[B, N, T, T]`` float32 per layer kept
    for backward. Same result as XLA's attention within float32 rounding."""
    B, T, N, H = q_BxTxNxH.shape
    repeat = N // k_BxTxKxH.shape[2]
    k_BxTxNxH, v_BxTxNxH = jnp.repeat(k_BxTxKxH, repeat, 2), jnp.repeat(v_BxTxKxH, repeat, 2)
    k_T = jnp.arange(T, dtype=jnp.int32)

    @jax.checkpoint
    def one(q_BxQxNxH, first):
        logits_BxNxQxT = jnp.einsum(
            "bqnh,bknh->bnqk", q_BxQxNxH, k_BxTxNxH, preferred_element_type=jnp.float32
        )
        logits_BxNxQxT = logits_BxNxQxT / jnp.sqrt(jnp.float32(H))
        q_Q = first + jnp.arange(q_BxQxNxH.shape[1], dtype=jnp.int32)
        allowed_QxT = k_T[None, :] <= q_Q[:, None]
        if sliding_window:
            allowed_QxT &= q_Q[:, None] - k_T[None, :] < sliding_window
        logits_BxNxQxT = jnp.where(allowed_QxT, logits_BxNxQxT, jnp.finfo(jnp.float32).min)
        probs_BxNxQxT = jax.nn.softmax(logits_BxNxQxT, axis=-1).astype(v_BxTxNxH.dtype)
        return jnp.einsum("bnqk,bknh->bqnh", probs_BxNxQxT, v_BxTxNxH)

    q_CxBxQxNxH = jnp.swapaxes(q_BxTxNxH.reshape(B, T // block, block, N, H), 0, 1)
    firsts_C = jnp.arange(T // block, dtype=jnp.int32) * block
    out_CxBxQxNxH = jax.lax.map(lambda xs: one(*xs), (q_CxBxQxNxH, firsts_C))
    return jnp.swapaxes(out_CxBxQxNxH, 0, 1).reshape(B, T, N, H)
