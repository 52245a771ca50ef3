"""Causal attention kernels per device (``model.attention_impl``).

``'auto'`` (the default) picks, when the step is traced: cuDNN flash attention on GPU where the shapes
allow, the Pallas flash attention kernel that jax ships (``jax.experimental.pallas.ops.tpu``) on TPU,
the causal query blocks of :func:`blocked_attention` on CPU, and XLA with a logged reason
wherever the fast kernel does not apply. The choice and its reason are logged once per distinct choice
(logger ``codex_jax.models.attention``). ``'xla'``, ``'cudnn'``, ``'pallas'`` and ``'blocked'`` force
one kernel. :func:`resolve` makes the choice for another platform (``codex-jax compile`` compiles for a
TPU from a CPU host). Scores are scaled by :func:`query_scale` and soft-capped by ``model.attn_softcap``
(Gemma 2): the blocked kernel and XLA's math apply a soft-cap, cuDNN's and Pallas' kernels do not.
"""

from __future__ import annotations

import functools
import logging
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from codex_jax.errors import UserError

logger = logging.getLogger(__name__)

PALLAS_BLOCK = 128  # the Pallas TPU kernel's default block: sequence lengths must be multiples of it
CAUSAL_BLOCKS_UP_TO = 512  # 'blocked': causal blocks up to this many positions, recomputed blocks beyond
SCAN_BLOCK = 256  # 'blocked' beyond CAUSAL_BLOCKS_UP_TO: queries per recomputed block


def choose(cfg, platform: str, seq_len: int, packed: bool = False) -> tuple[str, str]:
    """``(kernel, reason)`` of ``cfg.attention_impl`` for causal self-attention over ``seq_len`` positions
    on ``platform`` ('cpu', 'gpu', 'tpu'); ``packed``: rows of several segments (``data.packing``)."""
    if cfg.attention_impl != "auto":
        if cfg.attn_softcap and cfg.attention_impl in ("cudnn", "pallas"):
            raise UserError(
                f"model.attention_impl={cfg.attention_impl!r} has no attention soft-cap "
                f"(model.attn_softcap={cfg.attn_softcap}): use 'auto', 'xla' or 'blocked'"
            )
        return cfg.attention_impl, f"model.attention_impl={cfg.attention_impl!r}"
    if cfg.attn_softcap and platform != "cpu":
        return "xla", f"model.attn_softcap={cfg.attn_softcap}: the fast kernels have no soft-cap"
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
        if packed:
            return "xla", "packed segments: the cuDNN path takes no segment ids here (not run on a GPU yet)"
        return "cudnn", "GPU"
    if platform == "tpu":
        if cfg.sliding_window:
            return "xla", "model.sliding_window: the Pallas TPU flash attention kernel has no window"
        if seq_len % PALLAS_BLOCK:
            return "xla", f"sequence length {seq_len} is not a multiple of {PALLAS_BLOCK} (the Pallas block)"
        return "pallas", "TPU"
    if platform == "cpu" and seq_len <= CAUSAL_BLOCKS_UP_TO:
        return "blocked", f"cpu: causal blocks of {query_block(seq_len)} queries"
    if platform == "cpu":
        return "blocked", f"cpu: blocks of {query_block(seq_len)} queries, recomputed in backward"
    return "xla", f"{platform}: XLA's attention"


def resolve(cfg, platform: str, seq_len: int, packed: bool = False):
    """``cfg`` with ``attention_impl`` set to the kernel :func:`choose` picks on ``platform`` (logged)."""
    impl, reason = choose(cfg, platform, seq_len, packed)
    _log_choice(platform, seq_len, impl, reason)
    return cfg.replace(attention_impl=impl)


@functools.lru_cache(maxsize=64)
def _log_choice(platform: str, seq_len: int, impl: str, reason: str) -> None:
    level = (
        logging.INFO if impl != "xla" or platform == "cpu" or reason.startswith("model.") else logging.WARNING
    )
    fallback = "" if level == logging.INFO else " (fallback)"
    logger.log(level, "attention on %s, %d positions: %s%s: %s", platform, seq_len, impl, fallback, reason)


def query_scale(cfg) -> float:
    """The factor of the attention scores: ``query_scale_dim ** -0.5`` (Gemma's query_pre_attn_scalar), else
    ``head_dim ** -0.5``."""
    return 1.0 / math.sqrt(cfg.query_scale_dim or cfg.dims_per_head)


def softcap(x, cap: float):
    """``cap * tanh(x / cap)`` (Gemma 2's soft-cap); ``x`` itself when ``cap`` is 0."""
    return cap * jnp.tanh(x / cap) if cap else x


def causal_attention(cfg, q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, segments_BxT=None):
    """Causal (maybe windowed) attention ``[B, T, N, H]`` through the kernel ``cfg`` picks here; with
    ``segments_BxT`` (packed rows) a query sees only keys of its own segment."""
    T = q_BxTxNxH.shape[1]
    impl, reason = choose(cfg, jax.default_backend(), T, packed=segments_BxT is not None)
    _log_choice(jax.default_backend(), T, impl, reason)
    scale = query_scale(cfg)
    if impl == "pallas":
        return _pallas(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale, segments_BxT)
    if impl == "blocked" or cfg.attn_softcap:  # XLA's kernel has no soft-cap: XLA's math as one block
        return blocked_attention(
            q_BxTxNxH,
            k_BxTxKxH,
            v_BxTxKxH,
            cfg.sliding_window,
            block=0 if impl == "blocked" else T,
            segments_BxT=segments_BxT,
            scale=scale,
            cap=cfg.attn_softcap,
        )
    window = (cfg.sliding_window - 1, 0) if cfg.sliding_window else None
    mask = None if segments_BxT is None else (segments_BxT[:, :, None] == segments_BxT[:, None, :])[:, None]
    return jax.nn.dot_product_attention(
        q_BxTxNxH,
        k_BxTxKxH,
        v_BxTxKxH,
        mask=mask,
        scale=scale,
        is_causal=True,
        local_window_size=window,
        implementation=impl,
    )


def masked_attention(cfg, q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_Bx1xTxS):
    """Attention under an explicit boolean mask (True: may attend; generation's cache columns), scaled and
    soft-capped as ``cfg`` says."""
    if not cfg.attn_softcap:
        return jax.nn.dot_product_attention(
            q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask=mask_Bx1xTxS, scale=query_scale(cfg)
        )
    B, T, N, H = q_BxTxNxH.shape
    K = k_BxSxKxH.shape[2]
    q_BxTxKxGxH = q_BxTxNxH.reshape(B, T, K, N // K, H)
    out = _attend(
        q_BxTxKxGxH, k_BxSxKxH, v_BxSxKxH, mask_Bx1xTxS[:, :, None], query_scale(cfg), cfg.attn_softcap
    )
    return out.reshape(B, T, N, H)


def _pallas(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, scale: float, segments_BxT=None):
    """The Pallas TPU flash attention kernel (with its segment ids for packed rows), per shard of the batch
    when a mesh is set (the kernel is a custom call that the partitioner cannot split itself)."""
    # Optional dependency guard: the TPU kernels import only where they run (or are compiled for).
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    N, H = q_BxTxNxH.shape[2], q_BxTxNxH.shape[3]
    repeat = N // k_BxTxKxH.shape[2]  # grouped-query attention: the kernel wants every head's k/v

    def kernel(q, k, v, *segments):
        q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, jnp.repeat(k, repeat, 2), jnp.repeat(v, repeat, 2)))
        sizes = fa.BlockSizes.get_default(*q.shape[:3], k.shape[2], H)
        ids = fa.SegmentIds(q=segments[0], kv=segments[0]) if segments else None
        out = fa.flash_attention(q, k, v, segment_ids=ids, causal=True, sm_scale=scale, block_sizes=sizes)
        return jnp.swapaxes(out, 1, 2)

    args = (q_BxTxNxH, k_BxTxKxH, v_BxTxKxH) + (() if segments_BxT is None else (segments_BxT,))
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(*args)
    batch = P(mesh.axis_names)
    in_specs = (batch,) * len(args)
    return jax.shard_map(kernel, mesh=mesh, in_specs=in_specs, out_specs=batch, check_vma=False)(*args)


def query_block(seq_len: int) -> int:
    """Queries per block of :func:`blocked_attention` for ``seq_len`` positions: an eighth of them (at least
    32) up to :data:`CAUSAL_BLOCKS_UP_TO` positions, :data:`SCAN_BLOCK` beyond (fastest on a 2-core CPU)."""
    return max(seq_len // 8, 32) if seq_len <= CAUSAL_BLOCKS_UP_TO else SCAN_BLOCK


def blocked_attention(
    q_BxTxNxH,
    k_BxTxKxH,
    v_BxTxKxH,
    sliding_window: int = 0,
    block: int = 0,
    segments_BxT=None,
    scale: float | None = None,
    cap: float = 0.0,
):
    """Causal attention over blocks of ``block`` queries (0: :func:`query_block`), within each segment of
    ``segments_BxT`` when given (packed rows). Up to :data:`CAUSAL_BLOCKS_UP_TO` positions each block attends
    only the keys at or before its last query (and inside the window): about half of XLA's ``[T, T]`` work
    and memory. Beyond, the blocks run in a
    ``lax.map`` against all keys, each block's probabilities recomputed in backward (``jax.checkpoint``;
    XLA's CPU pipeline merges a recomputation outside a loop with the forward pass), so backward keeps no
    ``[T, T]`` probabilities. Same result as XLA's attention within float32 rounding. Scores are scaled by
    ``scale`` (default ``H ** -0.5``) and soft-capped by ``cap`` (0: none)."""
    B, T, N, H = q_BxTxNxH.shape
    K = k_BxTxKxH.shape[2]
    score = (1.0 / math.sqrt(H) if scale is None else scale, cap)
    block = min(block or query_block(T), T)
    q_BxTxKxGxH = q_BxTxNxH.reshape(B, T, K, N // K, H)  # head n reads k/v head n // (N // K)
    outs, first = [], 0
    if T > CAUSAL_BLOCKS_UP_TO:
        first = T - T % block

        def blocks(x_BxTx___):  # [B, first, ...] -> [first // block, B, block, ...]
            return jnp.swapaxes(x_BxTx___[:, :first].reshape(B, -1, block, *x_BxTx___.shape[2:]), 0, 1)

        def attend_keys(q_BxQxKxGxH, q_segments_BxQ, first_query):
            return _attend_block(
                q_BxQxKxGxH,
                k_BxTxKxH,
                v_BxTxKxH,
                first_query,
                0,
                sliding_window,
                score,
                q_segments_BxQ,
                segments_BxT,
            )

        recomputed = jax.checkpoint(attend_keys)
        firsts_C = jnp.arange(0, first, block, dtype=jnp.int32)
        xs = (blocks(q_BxTxKxGxH), None if segments_BxT is None else blocks(segments_BxT), firsts_C)
        out_CxBxQxKxGxH = jax.lax.map(lambda x: recomputed(*x), xs)
        outs.append(jnp.swapaxes(out_CxBxQxKxGxH, 0, 1).reshape(B, first, *q_BxTxKxGxH.shape[2:]))
    for start in range(first, T, block):  # the causal blocks (or the last, partial block of the map)
        end = min(start + block, T)
        keys = slice(max(0, start - sliding_window + 1) if sliding_window else 0, end)
        segments = () if segments_BxT is None else (segments_BxT[:, start:end], segments_BxT[:, keys])
        q_BxQxKxGxH, k_BxSxKxH, v_BxSxKxH = q_BxTxKxGxH[:, start:end], k_BxTxKxH[:, keys], v_BxTxKxH[:, keys]
        outs.append(
            _attend_block(
                q_BxQxKxGxH, k_BxSxKxH, v_BxSxKxH, start, keys.start, sliding_window, score, *segments
            )
        )
    return jnp.concatenate(outs, axis=1).reshape(B, T, N, H)


def _attend_block(
    q_BxQxKxGxH,
    k_BxSxKxH,
    v_BxSxKxH,
    first_query,
    first_key: int,
    sliding_window: int,
    score: tuple[float, float],
    q_segments_BxQ=None,
    k_segments_BxS=None,
):
    """Attention of the queries from position ``first_query`` over the keys from ``first_key`` (causal, maybe
    windowed, within segments); ``score``: the scores' ``(scale, soft-cap)``."""
    q_Q = first_query + jnp.arange(q_BxQxKxGxH.shape[1], dtype=jnp.int32)
    k_S = first_key + jnp.arange(k_BxSxKxH.shape[1], dtype=jnp.int32)
    allowed_QxS = k_S[None, :] <= q_Q[:, None]
    if sliding_window:
        allowed_QxS &= q_Q[:, None] - k_S[None, :] < sliding_window
    allowed = allowed_QxS  # broadcasts over [B, K, G, Q, S]
    if q_segments_BxQ is not None:
        allowed = (allowed_QxS[None] & (q_segments_BxQ[:, :, None] == k_segments_BxS[:, None, :]))[
            :, None, None
        ]
    return _attend(q_BxQxKxGxH, k_BxSxKxH, v_BxSxKxH, allowed, *score)


def _attend(q_BxQxKxGxH, k_BxSxKxH, v_BxSxKxH, allowed, scale: float, cap: float):
    """Grouped-query attention of queries over keys where ``allowed`` (broadcasting to [B, K, G, Q, S])."""
    logits_BxKxGxQxS = jnp.einsum(
        "bqkgh,bskh->bkgqs", q_BxQxKxGxH, k_BxSxKxH, preferred_element_type=jnp.float32
    )
    logits_BxKxGxQxS = softcap(logits_BxKxGxQxS * scale, cap)
    logits_BxKxGxQxS = jnp.where(allowed, logits_BxKxGxQxS, jnp.finfo(jnp.float32).min)
    probs_BxKxGxQxS = jax.nn.softmax(logits_BxKxGxQxS, axis=-1).astype(v_BxSxKxH.dtype)
    return jnp.einsum("bkgqs,bskh->bqkgh", probs_BxKxGxQxS, v_BxSxKxH)
