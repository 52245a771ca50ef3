"""Causal attention kernels per device (``model.attention_impl``).

``'auto'`` (the default) picks, when the step is traced: cuDNN flash attention on GPU where the shapes
allow, the Pallas flash attention kernel that jax ships (``jax.experimental.pallas.ops.tpu``) on TPU,
XLA's attention on CPU, and XLA with a logged reason wherever the fast kernel does not apply. The choice
and its reason are logged once per distinct choice (logger ``codex_jax.models.attention``). ``'xla'``,
``'cudnn'`` and ``'pallas'`` force one kernel. :func:`resolve` makes the choice for another platform
(``codex-jax compile`` compiles for a TPU from a CPU host).
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
