"""Weight-only quantization of the 2-D ``kernel`` leaves: int8 and NF4, block-wise absmax scales.

A quantized kernel replaces the ``kernel`` array ``[in, out]`` in the params tree by a dict of two arrays
(plain leaves: Orbax saves them, FSDP shards them like any array):

    int8: {'codes': int8  [in, out],     'scales': float32 [in / block, out]}
    nf4:  {'codes': uint8 [in / 2, out], 'scales': float32 [in / block, out]}  # two 4-bit codes a byte

Blocks run along the input (contracted) axis: every ``block`` consecutive rows of one output column
share a scale, the block's largest magnitude (absmax). NF4 codes index the 16 NormalFloat levels of
the QLoRA paper (Dettmers et al. 2023), the quantiles of a standard normal scaled to [-1, 1] with an exact
zero; int8 codes are ``round(127 * w / absmax)``. The format and block size are read back from the
codes' dtype and the shapes, so a quantized tree describes itself.

    q = quantize(w_IxO, 'nf4', 64)
    w_approx = dequantize(q, jnp.bfloat16)            # [in, out]
    y = matmul(x, q, jnp.bfloat16)                    # the dequantized kernel is recomputed, never saved
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from codex_jax.errors import UserError

FORMATS = ("int8", "nf4")
# QLoRA's construction: 8 positive and 7 negative normal quantiles over [1 - OFFSET, OFFSET], plus 0.
_NF4_OFFSET = 0.5 * (1 / 32 + 1 / 30)


@functools.cache
def nf4_levels() -> np.ndarray:
    """The 16 NF4 levels, ascending, in [-1, 1] with 0 exactly (float32)."""
    ppf = NormalDist().inv_cdf
    positive = [ppf(p) for p in np.linspace(1 - _NF4_OFFSET, 0.5, 9)[:-1]]
    negative = [-ppf(p) for p in np.linspace(1 - _NF4_OFFSET, 0.5, 8)[:-1]]
    levels = np.sort(np.array([*positive, 0.0, *negative], np.float64))
    return (levels / np.abs(levels).max()).astype(np.float32)


def max_error(fmt: str) -> float:
    """Largest round-off of a value in a block, as a fraction of that block's absmax."""
    if fmt == "int8":
        return 0.5 / 127
    return float(np.diff(nf4_levels()).max() / 2)


def check(fmt: str, block: int, d_in: int, where: str = "lora.quant_block_size") -> None:
    """UserError unless ``fmt`` is a format and ``block`` (even, > 0; 0: all ``d_in`` rows) divides
    ``d_in`` rows."""
    if fmt not in FORMATS:
        raise UserError(f"quantization format {fmt!r}: use one of {', '.join(FORMATS)}")
    if block < 0 or block % 2:
        raise UserError(f"config key '{where}': must be a positive even number (got {block})")
    if block and d_in % block:
        raise UserError(
            f"config key '{where}': {block} does not divide a kernel's {d_in} input rows; "
            "pick a block size that divides the model's d_model and d_ff"
        )


def quantize(w_IxO: jax.Array, fmt: str, block: int) -> dict:
    """``{'codes', 'scales'}`` of a kernel ``[in, out]`` (see the module docstring); ``block`` 0: one
    scale per output column (per channel)."""
    d_in, d_out = w_IxO.shape
    check(fmt, block, d_in)
    block = block or d_in
    w_NxBxO = w_IxO.astype(jnp.float32).reshape(d_in // block, block, d_out)
    absmax_NxO = jnp.abs(w_NxBxO).max(axis=1)
    safe_NxO = jnp.where(absmax_NxO > 0, absmax_NxO, 1.0)
    x_NxBxO = w_NxBxO / safe_NxO[:, None]
    if fmt == "int8":
        codes = jnp.clip(jnp.round(x_NxBxO * 127), -127, 127).astype(jnp.int8).reshape(d_in, d_out)
        return {"codes": codes, "scales": absmax_NxO / 127}
    levels = jnp.asarray(nf4_levels())
    codes_IxO = (
        jnp.searchsorted((levels[1:] + levels[:-1]) / 2, x_NxBxO).astype(jnp.uint8).reshape(d_in, d_out)
    )
    packed = codes_IxO[0::2] | (codes_IxO[1::2] << 4)
    return {"codes": packed, "scales": absmax_NxO}


def is_quantized(kernel) -> bool:
    """Whether a ``kernel`` leaf of a params tree is a quantized one (a dict with codes and scales)."""
    return isinstance(kernel, Mapping) and "codes" in kernel and "scales" in kernel


def format_of(q) -> str:
    """``'int8'`` or ``'nf4'``, from the codes' dtype."""
    return "int8" if jnp.dtype(q["codes"].dtype) == jnp.int8 else "nf4"


def kernel_shape(q) -> tuple[int, int]:
    """``(in, out)`` of the kernel that ``q`` holds."""
    rows, d_out = q["codes"].shape
    return (rows if format_of(q) == "int8" else 2 * rows, d_out)


def dequantize(q, dtype=jnp.float32) -> jax.Array:
    """The kernel ``[in, out]`` in ``dtype`` (arithmetic in float32)."""
    d_in, d_out = kernel_shape(q)
    codes = q["codes"]
    if format_of(q) == "int8":
        values_IxO = codes.astype(jnp.float32)
    else:
        unpacked = jnp.stack([codes & 15, codes >> 4], axis=1).reshape(d_in, d_out)
        values_IxO = jnp.asarray(nf4_levels())[unpacked]
    scales_NxO = q["scales"].astype(jnp.float32)
    w_NxBxO = values_IxO.reshape(scales_NxO.shape[0], -1, d_out) * scales_NxO[:, None]
    return w_NxBxO.reshape(d_in, d_out).astype(dtype)


def dequantized_kernel(kernel, dtype) -> jax.Array:
    """``kernel`` in ``dtype``: a plain array cast, a quantized one dequantized."""
    return dequantize(kernel, dtype) if is_quantized(kernel) else kernel.astype(dtype)


def _dot(x, w):
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _guarded(guard: bool, fn, a, q):
    """``fn(a, q)``; with ``guard``, inside a conditional on ``a``'s first value.

    XLA's CPU pipeline drops optimization barriers before scheduling and CSE: it would dequantize every
    layer's kernel up front and merge the backward's dequantization with the forward's, so that the
    whole base lived in float32 from the forward to the backward pass. A conditional whose predicate is
    unknown at compile time stops both: the kernel is dequantized when ``a`` arrives, in the forward and
    again in the backward pass. The branches must differ as jaxprs or jax drops the cond."""
    if not guard:
        return fn(a, q)
    known = jnp.isfinite(a.reshape(-1)[0])
    return jax.lax.cond(known, fn, lambda a, q: fn(a * 1, q), a, q)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _frozen_matmul(x, w, dtype, guard):
    x, w = jax.lax.optimization_barrier((x, w))  # dequantize when x arrives, not all layers up front
    return _guarded(guard, lambda x, w: _dot(x, dequantized_kernel(w, dtype)), x, w)


def _frozen_matmul_fwd(x, w, dtype, guard):
    return _frozen_matmul(x, w, dtype, guard), w


def _backward_dot(g, w, dtype):
    return jax.lax.dot_general(g, dequantized_kernel(w, dtype), (((g.ndim - 1,), (1,)), ((), ())))


def _zero_cotangent(a):
    integer = not jnp.issubdtype(a.dtype, jnp.floating)
    return np.zeros(a.shape, jax.dtypes.float0 if integer else a.dtype)


def _frozen_matmul_bwd(dtype, guard, w, g):
    g, w = jax.lax.optimization_barrier((g, w))  # likewise: when the cotangent arrives
    dx = _guarded(guard, lambda g, w: _backward_dot(g, w, dtype), g, w)
    return dx, jax.tree.map(_zero_cotangent, w)


_frozen_matmul.defvjp(_frozen_matmul_fwd, _frozen_matmul_bwd)


def matmul(x, kernel, dtype, guard: bool = True, frozen: bool = False) -> jax.Array:
    """``x @ kernel`` in ``dtype``. A quantized kernel, or any kernel with ``frozen`` (a LoRA base: its
    gradient is zero), is dequantized (cast) when ``x`` arrives, and again in the backward pass when the
    cotangent arrives: no full-precision copy of it is kept between the two, and XLA cannot dequantize
    every layer's kernel ahead of time. ``guard`` (for XLA's CPU pipeline, see :func:`_guarded`) puts
    both inside a conditional so that XLA cannot hoist them or merge the backward's with the forward's."""
    if is_quantized(kernel) or frozen:
        return _frozen_matmul(x, kernel, jnp.dtype(dtype), bool(guard))
    return _dot(x, kernel.astype(dtype))


# ------------------------------------------------------------------------------------------ trees


def kernel_keys(params) -> list[str]:
    """Flat ``'a/b/kernel'`` keys of the 2-D kernels of a full-precision tree (arrays or shapes)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return sorted(k for k, v in flat.items() if k.endswith("/kernel") and len(v.shape) == 2)


_quantize_jit = jax.jit(quantize, static_argnums=(1, 2))
_cast_jit = jax.jit(lambda x, dtype: x.astype(dtype), static_argnums=1)


def quantize_tree(params, fmt: str, block: int, other_dtype=jnp.bfloat16):
    """``params`` with every 2-D kernel quantized and every other leaf cast to ``other_dtype`` (None:
    kept) (works on arrays, and under :func:`jax.eval_shape` on shapes). UserError when ``block``
    does not divide a kernel's input rows. Called outside ``jit`` it quantizes one leaf per jitted
    call, so that only one kernel's float32 intermediates exist at a time."""
    flat = traverse_util.flatten_dict(params, sep="/")
    for key in kernel_keys(params):
        check(fmt, block, flat[key].shape[0])
    kernels = set(kernel_keys(params))
    out = {}
    for key, leaf in flat.items():
        if key in kernels:
            out.update({f"{key}/{name}": v for name, v in _quantize_jit(leaf, fmt, block).items()})
        else:
            out[key] = leaf if other_dtype is None else _cast_jit(leaf, jnp.dtype(other_dtype))
    return traverse_util.unflatten_dict(out, sep="/")


def quantized_format(params) -> str | None:
    """The format of the quantized kernels in ``params`` (None: none is)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    for key, leaf in flat.items():
        if key.endswith("/kernel/codes"):
            return "int8" if jnp.dtype(leaf.dtype) == jnp.int8 else "nf4"
    return None


def dequantize_tree(params, dtype=jnp.float32):
    """``params`` with every quantized kernel back to a ``dtype`` array (other leaves untouched)."""

    def walk(node):
        if not isinstance(node, Mapping):
            return node
        return {
            k: dequantize(v, dtype) if k == "kernel" and is_quantized(v) else walk(v) for k, v in node.items()
        }

    return walk(params)


def nbytes(params) -> int:
    """Bytes the leaves of ``params`` (arrays or shapes) take."""
    return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)))
