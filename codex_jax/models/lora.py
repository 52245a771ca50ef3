"""LoRA adapters as their own parameter tree: the ``'lora'`` collection beside ``'params'``.

    lora_tree = init_lora(params, rank=16, targets=DEFAULT_TARGETS, rng=key)
    logits = model.apply({'params': params, 'lora': lora_tree}, tokens)  # adapters active
    merged = merge(params, lora_tree, alpha)           # plain params, same logits

The tree mirrors the module paths of the targeted kernels (``'layers_0/attn/q_proj'``, matched by
``re.fullmatch(targets, path)``): ``{'layers_0': {'attn': {'q_proj': {'lora_a': [in, r],
'lora_b': [r, out]}}}}``. A module's output gains ``x @ lora_a @ lora_b * alpha / r`` (``r`` is
that module's ``lora_a.shape[-1]``). ``lora_a`` starts kaiming-uniform like PEFT's, ``lora_b`` at
zero, so a fresh adapter leaves the model's function unchanged.

With ``experts=True`` (``lora.experts``) the stacked expert weights of a mixture-of-experts layer
(``'layers_0/mlp/gate_proj'`` ``[E, in, out]``) that ``targets`` matches get one adapter per expert:
``lora_a [E, in, r]``, ``lora_b [E, r, out]``, applied inside every expert path (models/moe.py). A router
is never adapted: a ``targets`` that matches one is an error.

The PEFT adapter format (export and import) is :mod:`codex_jax.interop.peft`.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
from flax import traverse_util

from codex_jax.errors import UserError
from codex_jax.models import quant
from codex_jax.models.moe import EXPERT_WEIGHTS

DEFAULT_TARGETS = r".*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|fc_in|fc_out)$"


# ----------------------------------------------------------------------------------- tree functions


def modules_of(tree) -> dict[str, dict]:
    """``{'layers_0/attn/q_proj': {'lora_a': ..., 'lora_b': ...}}`` of a lora tree."""
    flat = traverse_util.flatten_dict(tree, sep="/")
    modules: dict[str, dict] = {}
    for key, leaf in flat.items():
        path, name = key.rsplit("/", 1)
        modules.setdefault(path, {})[name] = leaf
    return modules


def tree_of(modules: dict[str, dict]):
    """The lora tree of ``{module path: {'lora_a': ..., 'lora_b': ...}}`` (inverse of :func:`modules_of`)."""
    flat = {f"{p}/{k}": v for p, entry in modules.items() for k, v in entry.items()}
    return traverse_util.unflatten_dict(flat, sep="/")


def kernel_paths(params) -> list[str]:
    """Module paths of every 2-D ``kernel`` (the layers LoRA can adapt), sorted."""
    flat = traverse_util.flatten_dict(params, sep="/")
    plain = [k.rsplit("/", 1)[0] for k, v in flat.items() if k.endswith("/kernel") and len(v.shape) == 2]
    quantized = [k.rsplit("/", 2)[0] for k in flat if k.endswith("/kernel/codes")]
    return sorted(plain + quantized)


def expert_paths(params) -> list[str]:
    """Paths of every mixture-of-experts layer's stacked ``[E, in, out]`` expert weight
    (``'layers_0/mlp/gate_proj'``, models/moe.py), sorted."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return sorted(k for k, v in flat.items() if k.rsplit("/", 1)[-1] in EXPERT_WEIGHTS and len(v.shape) == 3)


def router_paths(params) -> list[str]:
    """Paths of every mixture-of-experts router (``'layers_0/mlp/router'``): never adapted."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return sorted(k for k in flat if k.endswith("/mlp/router"))


def target_paths(params, targets: str, experts: bool = False) -> list[str]:
    """Kernel module paths that ``targets`` (a regex) fully matches, and with ``experts`` the stacked
    expert weights it matches; UserError when none does, or when it matches a router."""
    try:
        pattern = re.compile(targets)
    except re.error as e:
        raise UserError(f"config key 'lora.targets': not a regex ({e})") from None
    routers = [p for p in router_paths(params) if pattern.fullmatch(p)]
    if routers:
        raise UserError(
            f"config key 'lora.targets': {targets!r} matches the mixture-of-experts router "
            f"{routers[0]!r}; routers are never adapted (lora.experts=True adapts the experts)"
        )
    paths = kernel_paths(params) + (expert_paths(params) if experts else [])
    chosen = sorted(p for p in paths if pattern.fullmatch(p))
    if not chosen:
        raise UserError(
            f"config key 'lora.targets': {targets!r} matches none of the kernels "
            f"({', '.join(paths[:4])}, ...)"
        )
    return chosen


def init_lora(params, rank: int, targets: str, rng: jax.Array, dtype=jnp.float32, experts: bool = False):
    """A fresh adapter for the kernels of ``params`` (arrays or shapes) that ``targets`` matches, and
    with ``experts`` for the stacked expert weights it matches (``lora_a [E, in, r]``, ``lora_b [E, r,
    out]``: one adapter per expert).

    ``lora_a`` ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform with a=sqrt(5)), ``lora_b`` = 0.
    """
    if rank <= 0:
        raise UserError(f"config key 'lora.rank': must be > 0 for an adapter (got {rank})")
    flat = traverse_util.flatten_dict(params, sep="/")
    paths = target_paths(params, targets, experts)
    keys = jax.random.split(rng, len(paths))
    modules = {}
    for path, key in zip(paths, keys, strict=True):
        lead: tuple[int, ...] = ()
        if f"{path}/kernel" in flat:
            d_in, d_out = flat[f"{path}/kernel"].shape
        elif path in flat:  # a stacked expert weight
            lead, (d_in, d_out) = flat[path].shape[:1], flat[path].shape[1:]
        else:  # a quantized kernel (models/quant.py)
            d_in, d_out = quant.kernel_shape({n: flat[f"{path}/kernel/{n}"] for n in ("codes", "scales")})
        bound = 1.0 / math.sqrt(d_in)
        modules[path] = {
            "lora_a": jax.random.uniform(key, (*lead, d_in, rank), dtype, -bound, bound),
            "lora_b": jnp.zeros((*lead, rank, d_out), dtype),
        }
    return tree_of(modules)


def is_expert_adapter(entry: dict) -> bool:
    """Whether an adapter (``{'lora_a', 'lora_b'}``) is a stack of per-expert adapters (3-D)."""
    return len(entry["lora_a"].shape) == 3


def scale(alpha: float, lora_a) -> float:
    """The factor of one module's update: ``alpha / r``."""
    return alpha / lora_a.shape[-1]


def delta(entry: dict, alpha: float):
    """A module's weight update ``lora_a @ lora_b * alpha / r`` (float32, ``[..., in, out]``)."""
    a = entry["lora_a"].astype(jnp.float32)
    return (a @ entry["lora_b"].astype(jnp.float32)) * scale(alpha, a)


def _fold(params, lora_tree, alpha: float, sign: float):
    if quant.quantized_format(params) is not None:  # a quantized base merges into bfloat16 kernels
        params = quant.dequantize_tree(params, jnp.bfloat16)
    flat = traverse_util.flatten_dict(params, sep="/")
    for path, entry in modules_of(lora_tree).items():
        name = path if is_expert_adapter(entry) else f"{path}/kernel"  # experts: the [E, in, out] weight
        kernel = flat[name]
        flat[name] = (kernel.astype(jnp.float32) + sign * delta(entry, alpha)).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat, sep="/")


def merge(params, lora_tree, alpha: float):
    """``params`` with every adapter folded into its kernel (in float32, stored in the kernel's
    dtype): ``apply({'params': merge(p, l, a)})`` equals ``apply({'params': p, 'lora': l})``."""
    return _fold(params, lora_tree, alpha, 1.0)


def unmerge(params, lora_tree, alpha: float):
    """Reverses :func:`merge` (exactly up to float rounding of the kernel's dtype)."""
    return _fold(params, lora_tree, alpha, -1.0)


def count(lora_tree) -> int:
    """Scalars in an adapter tree: ``sum(r * (in + out))`` over its modules."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(lora_tree)))


def describe(lora_tree, num_base: int) -> str:
    """One log line: modules adapted, trainable scalars and their fraction of the base."""
    n = count(lora_tree)
    return (
        f"LoRA: {len(modules_of(lora_tree))} modules, {n:,} trainable parameters "
        f"({100.0 * n / max(num_base, 1):.3f}% of the {num_base:,} frozen)"
    )
