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

An embedding table ``[V, D]`` (``embed/embedding``, and an untied ``lm_head``: ``TABLE_KEYS``) is
quantized as the kernel ``[D, V]`` it is in the output head (``logits = x @ table.T``): blocks run along
D, one scale per block of each token's row, and a lookup dequantizes only the looked-up columns
(:func:`take`).

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


def _dot(x, w, out_dtype=None):
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=out_dtype)


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


def _width(w) -> int:
    """Output columns of a kernel, plain or quantized."""
    return kernel_shape(w)[1] if is_quantized(w) else w.shape[1]


def _columns(w, start, size: int):
    """Columns ``[start, start + size)`` of a kernel, plain or quantized (codes and scales alike)."""
    return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, axis=1), w)


def column_chunks(d_out: int, most: int) -> int:
    """The fewest equal chunks of ``d_out`` columns with at most ``most`` columns each; one (no chunking)
    for ``most`` 0, or when that takes more than 4x the fewest possible (``d_out`` with no divisor near)."""
    fewest = -(-d_out // most) if most > 0 else 1
    return next((n for n in range(fewest, 4 * fewest + 1) if d_out % n == 0), 1) if fewest > 1 else 1


def _forward_dot(x, w, dtype, out_dtype, chunks: int):
    """``x @ w`` with ``w`` dequantized (cast) ``chunks`` column blocks at a time."""
    if chunks == 1:
        return _dot(x, dequantized_kernel(w, dtype), out_dtype)
    size = _width(w) // chunks
    y = jnp.zeros((*x.shape[:-1], _width(w)), out_dtype or dtype)

    def one(i, y):
        y_c = _dot(x, dequantized_kernel(_columns(w, i * size, size), dtype), out_dtype)
        return jax.lax.dynamic_update_slice_in_dim(y, y_c.astype(y.dtype), i * size, axis=y.ndim - 1)

    return jax.lax.fori_loop(0, chunks, one, y)


def _backward_dot(g, w, dtype, chunks: int):
    """``g @ w.T`` (the input's gradient) with ``w`` dequantized (cast) ``chunks`` column blocks at a time;
    a float32 output's cotangent (the LM head's) is multiplied in ``dtype``."""
    g = g.astype(dtype)
    dims = (((g.ndim - 1,), (1,)), ((), ()))
    if chunks == 1:
        return jax.lax.dot_general(g, dequantized_kernel(w, dtype), dims)
    size = _width(w) // chunks

    def one(i, dx):
        g_c = jax.lax.dynamic_slice_in_dim(g, i * size, size, axis=g.ndim - 1)
        w_c = dequantized_kernel(_columns(w, i * size, size), dtype)
        return dx + jax.lax.dot_general(g_c, w_c, dims, preferred_element_type=jnp.float32)

    dx = jnp.zeros((*g.shape[:-1], kernel_shape(w)[0] if is_quantized(w) else w.shape[0]), jnp.float32)
    return jax.lax.fori_loop(0, chunks, one, dx).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _frozen_matmul(x, w, dtype, guard, out_dtype, chunks):
    x, w = jax.lax.optimization_barrier((x, w))  # dequantize when x arrives, not all layers up front
    return _guarded(guard, lambda x, w: _forward_dot(x, w, dtype, out_dtype, chunks), x, w)


def _frozen_matmul_fwd(x, w, dtype, guard, out_dtype, chunks):
    return _frozen_matmul(x, w, dtype, guard, out_dtype, chunks), w


def _zero_cotangent(a):
    integer = not jnp.issubdtype(a.dtype, jnp.floating)
    return np.zeros(a.shape, jax.dtypes.float0 if integer else a.dtype)


def _frozen_matmul_bwd(dtype, guard, out_dtype, chunks, w, g):
    g, w = jax.lax.optimization_barrier((g, w))  # likewise: when the cotangent arrives
    dx = _guarded(guard, lambda g, w: _backward_dot(g, w, dtype, chunks), g, w)
    return dx, jax.tree.map(_zero_cotangent, w)


_frozen_matmul.defvjp(_frozen_matmul_fwd, _frozen_matmul_bwd)


def matmul(
    x, kernel, dtype, guard: bool = True, frozen: bool = False, out_dtype=None, most_columns: int = 0
) -> jax.Array:
    """``x @ kernel`` in ``dtype`` (the result in ``out_dtype``, e.g. float32 logits; None: ``dtype``).

    A quantized kernel, or any kernel with ``frozen`` (a LoRA base: its gradient is zero), is dequantized
    (cast) when ``x`` arrives, and again in the backward pass when the cotangent arrives: no
    full-precision copy of it is kept between the two, and XLA cannot dequantize every layer's kernel
    ahead of time. ``guard`` (for XLA's CPU pipeline, see :func:`_guarded`) puts both inside a
    conditional so that XLA cannot hoist them or merge the backward's with the forward's.
    ``most_columns`` (> 0) dequantizes a wide kernel (the LM head) in chunks of at most that many
    output columns (:func:`column_chunks`), so only one chunk exists in ``dtype`` at a time."""
    out_dtype = None if out_dtype is None else jnp.dtype(out_dtype)
    if is_quantized(kernel) or frozen:
        chunks = column_chunks(_width(kernel), most_columns)
        return _frozen_matmul(x, kernel, jnp.dtype(dtype), bool(guard), out_dtype, chunks)
    return _dot(x, kernel.astype(dtype), out_dtype)


def take(q, ids, dtype) -> jax.Array:
    """Rows ``ids`` (any shape) of a quantized embedding table, ``[*ids.shape, D]`` in ``dtype``: only
    the looked-up columns of its ``[D, V]`` codes and scales are dequantized."""
    ids_N = ids.reshape(-1)
    columns = {name: jnp.take(q[name], ids_N, axis=1) for name in ("codes", "scales")}
    rows_NxD = dequantize(columns, dtype).T
    return rows_NxD.reshape(*ids.shape, rows_NxD.shape[-1])


# ------------------------------------------------------------------------------------------ trees

# Embedding tables [V, D], quantized (with ``tables``) as the kernel [D, V] of the output head.
TABLE_KEYS = ("embed/embedding", "lm_head")


_quantize_jit = jax.jit(quantize, static_argnums=(1, 2))
_cast_jit = jax.jit(lambda x, dtype: x.astype(dtype), static_argnums=1)


def leaf_form(fmt: str, block: int, other_dtype=jnp.bfloat16, tables: bool = False):
    """``(key, leaf) -> leaf``: a 2-D ``.../kernel`` leaf (and with ``tables`` an embedding table of
    ``TABLE_KEYS``) quantized, any other cast to ``other_dtype`` (None: kept); ``key`` is the leaf's flat
    ``'a/b/kernel'`` path. Outside ``jit`` each leaf is one jitted call (arrays, numpy arrays, or under
    :func:`jax.eval_shape` shapes). UserError when ``block`` does not divide the rows a scale covers."""

    def form(key: str, leaf):
        table = tables and key in TABLE_KEYS
        if table or (key.endswith("/kernel") and len(leaf.shape) == 2):
            kernel = leaf.T if table else leaf
            check(fmt, block, kernel.shape[0])
            return _quantize_jit(kernel, fmt, block)
        return leaf if other_dtype is None else _cast_jit(leaf, jnp.dtype(other_dtype))

    return form


def map_leaves(form, params):
    """``params`` with every leaf ``x`` (flat key ``k``) replaced by ``form(k, x)`` (e.g. a
    :func:`leaf_form`), one leaf at a time."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return traverse_util.unflatten_dict({k: form(k, x) for k, x in flat.items()}, sep="/")


def quantize_tree(params, fmt: str, block: int, other_dtype=jnp.bfloat16, tables: bool = False):
    """``params`` with every 2-D kernel (and with ``tables`` the embedding tables of ``TABLE_KEYS``)
    quantized and every other leaf cast to ``other_dtype`` (None: kept), one leaf at a time, so that only
    one kernel's float32 intermediates exist at a time: :func:`map_leaves` of a :func:`leaf_form`.
    Every block size is checked (UserError) before anything is quantized."""
    form = leaf_form(fmt, block, other_dtype, tables)
    jax.eval_shape(lambda p: map_leaves(form, p), params)
    return map_leaves(form, params)


def quantized_format(params) -> str | None:
    """The format of the quantized kernels in ``params`` (None: none is)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    for key, leaf in flat.items():
        if key.endswith("/kernel/codes"):
            return "int8" if jnp.dtype(leaf.dtype) == jnp.int8 else "nf4"
    return None


def dequantize_tree(params, dtype=jnp.float32):
    """``params`` with every quantized kernel and table back to a ``dtype`` array (other leaves
    untouched)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    out: dict = {}
    for key, leaf in flat.items():
        path, _, name = key.rpartition("/")
        if name not in ("codes", "scales") or not (path.endswith("/kernel") or path in TABLE_KEYS):
            out[key] = leaf
        elif name == "codes":
            w = dequantize({"codes": leaf, "scales": flat[f"{path}/scales"]}, dtype)
            out[path] = w.T if path in TABLE_KEYS else w
    return traverse_util.unflatten_dict(out, sep="/")


def nbytes(params) -> int:
    """Bytes the leaves of ``params`` (arrays or shapes) take."""
    return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)))
