"""LoRA adapters as their own parameter tree: the ``'lora'`` collection beside ``'params'``.

    lora_tree = init_lora(params, rank=16, targets=DEFAULT_TARGETS, rng=key)
    logits = model.apply({'params': params, 'lora': lora_tree}, tokens)  # adapters active
    merged = merge(params, lora_tree, alpha)           # plain params, same logits
    export_peft(model.cfg, lora_tree, alpha, out_dir)  # adapter_config.json + safetensors
    lora_tree = import_peft(out_dir, model.cfg, alpha) # any PEFT LoRA of the same model

The tree mirrors the module paths of the targeted kernels (``'layers_0/attn/q_proj'``, matched by
``re.fullmatch(targets, path)``): ``{'layers_0': {'attn': {'q_proj': {'lora_a': [in, r],
'lora_b': [r, out]}}}}``. A module's output gains ``x @ lora_a @ lora_b * alpha / r`` (``r`` is
that module's ``lora_a.shape[-1]``). ``lora_a`` starts kaiming-uniform like PEFT's, ``lora_b`` at
zero, so a fresh adapter leaves the model's function unchanged.

PEFT naming: Llama-family modules map one to one (``model.layers.0.self_attn.q_proj``). GPT-2's
``c_attn`` fuses q/k/v: the targeted ones export as one exact adapter of rank ``sum(r)`` (``A`` the
concatenated ``lora_a``s, ``B`` block-diagonal; ``rank_pattern``/``alpha_pattern`` keep the scale),
and a fused ``c_attn`` adapter imports as q/k/v adapters sharing its ``A`` (zero ``B`` columns
dropped), which is exact too.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from codex_jax.errors import UserError

DEFAULT_TARGETS = r".*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|fc_in|fc_out)$"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


# ----------------------------------------------------------------------------------- tree functions


def _flat(tree) -> dict[str, dict]:
    """``{'layers_0/attn/q_proj': {'lora_a': ..., 'lora_b': ...}}`` of a lora tree."""
    flat = traverse_util.flatten_dict(tree, sep="/")
    modules: dict[str, dict] = {}
    for key, leaf in flat.items():
        path, name = key.rsplit("/", 1)
        modules.setdefault(path, {})[name] = leaf
    return modules


def _unflat(modules: dict[str, dict]):
    flat = {f"{p}/{k}": v for p, entry in modules.items() for k, v in entry.items()}
    return traverse_util.unflatten_dict(flat, sep="/")


def kernel_paths(params) -> list[str]:
    """Module paths of every 2-D ``kernel`` (the layers LoRA can adapt), sorted."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return sorted(k.rsplit("/", 1)[0] for k, v in flat.items() if k.endswith("/kernel") and len(v.shape) == 2)


def target_paths(params, targets: str) -> list[str]:
    """Kernel module paths that ``targets`` (a regex) fully matches; UserError when none does."""
    try:
        pattern = re.compile(targets)
    except re.error as e:
        raise UserError(f"config key 'lora.targets': not a regex ({e})") from None
    paths = kernel_paths(params)
    chosen = [p for p in paths if pattern.fullmatch(p)]
    if not chosen:
        raise UserError(
            f"config key 'lora.targets': {targets!r} matches none of the kernels "
            f"({', '.join(paths[:4])}, ...)"
        )
    return chosen


def init_lora(params, rank: int, targets: str, rng: jax.Array, dtype=jnp.float32):
    """A fresh adapter for the kernels of ``params`` (arrays or shapes) that ``targets`` matches.

    ``lora_a`` ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform with a=sqrt(5)), ``lora_b`` = 0.
    """
    if rank <= 0:
        raise UserError(f"config key 'lora.rank': must be > 0 for an adapter (got {rank})")
    flat = traverse_util.flatten_dict(params, sep="/")
    paths = target_paths(params, targets)
    keys = jax.random.split(rng, len(paths))
    modules = {}
    for path, key in zip(paths, keys, strict=True):
        d_in, d_out = flat[f"{path}/kernel"].shape
        bound = 1.0 / math.sqrt(d_in)
        modules[path] = {
            "lora_a": jax.random.uniform(key, (d_in, rank), dtype, -bound, bound),
            "lora_b": jnp.zeros((rank, d_out), dtype),
        }
    return _unflat(modules)


def scale(alpha: float, lora_a) -> float:
    """The factor of one module's update: ``alpha / r``."""
    return alpha / lora_a.shape[-1]


def delta(entry: dict, alpha: float):
    """A module's weight update ``lora_a @ lora_b * alpha / r`` (float32, ``[..., in, out]``)."""
    a = entry["lora_a"].astype(jnp.float32)
    return (a @ entry["lora_b"].astype(jnp.float32)) * scale(alpha, a)


def _fold(params, lora_tree, alpha: float, sign: float):
    flat = traverse_util.flatten_dict(params, sep="/")
    for path, entry in _flat(lora_tree).items():
        kernel = flat[f"{path}/kernel"]
        flat[f"{path}/kernel"] = (kernel.astype(jnp.float32) + sign * delta(entry, alpha)).astype(
            kernel.dtype
        )
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
        f"LoRA: {len(_flat(lora_tree))} modules, {n:,} trainable parameters "
        f"({100.0 * n / max(num_base, 1):.3f}% of the {num_base:,} frozen)"
    )


# ----------------------------------------------------------------------------------- PEFT format


def _peft_modules(cfg) -> dict[str, list[tuple[str, int]]]:
    """Hugging Face module name -> its kernels ``[(path, out_size)]`` (GPT-2's c_attn: three)."""
    from codex_jax.interop.hf_weights import weight_table

    kv = cfg.num_kv_heads * cfg.dims_per_head
    sizes = {"q_proj": cfg.num_heads * cfg.dims_per_head, "k_proj": kv, "v_proj": kv}
    out = {}
    for hf_name, paths, _ in weight_table(cfg):
        if hf_name.endswith(".weight") and paths[0][-1] == "kernel":
            kernels = [("/".join(p[:-1]), sizes.get(p[-2], 0)) for p in paths]
            out[hf_name[: -len(".weight")]] = kernels
    return out


def export_peft(
    cfg, lora_tree, alpha: float, out_dir, *, dropout: float = 0.0, base_name: str | None = None
) -> Path:
    """Writes ``adapter_config.json`` + ``adapter_model.safetensors`` for ``peft.PeftModel``.

    ``cfg`` is the model's ModelConfig (its Hugging Face export names the modules); the result loads
    with ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out_dir)``.
    """
    from safetensors.numpy import save_file

    modules = {p: jax.tree.map(np.asarray, e) for p, e in _flat(lora_tree).items()}
    ranks = [e["lora_a"].shape[-1] for e in modules.values()]
    r = max(set(ranks), key=ranks.count)
    tensors: dict[str, np.ndarray] = {}
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    used: set[str] = set()
    for name, kernels in _peft_modules(cfg).items():
        parts = [(i, p) for i, (p, _) in enumerate(kernels) if p in modules]
        if not parts:
            continue
        used.update(p for _, p in parts)
        if len(kernels) == 1:
            a, b = modules[kernels[0][0]]["lora_a"], modules[kernels[0][0]]["lora_b"]
            module_alpha = alpha
        else:
            a, b = _fuse(kernels, parts, modules, r)
            module_alpha = alpha * a.shape[-1] / r  # keeps the scale at alpha / r
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(b.T)
        if a.shape[-1] != r:
            rank_pattern[re.escape(name)] = int(a.shape[-1])
        if module_alpha != alpha:
            alpha_pattern[re.escape(name)] = float(module_alpha)
    left = sorted(set(modules) - used)
    if left:
        raise UserError(f"export.format=peft: no Hugging Face module for the adapters {left[:4]}")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": int(r),
        "lora_alpha": float(alpha),
        "lora_dropout": float(dropout),
        "target_modules": sorted(
            n[len(_PREFIX) : -len(".lora_A.weight")] for n in tensors if n.endswith(".lora_A.weight")
        ),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "fan_in_fan_out": cfg.family == "gpt2",
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "base_model_name_or_path": base_name,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def _fuse(kernels, parts, modules, r: int):
    """One ``(A [in, R], B [R, sum(out)])`` for a fused module: A concatenated, B block-diagonal,
    each block rescaled from its own ``alpha / r_i`` to the fused module's ``alpha / r``."""
    offsets = np.cumsum([0] + [size for _, size in kernels])
    a = np.concatenate([modules[p]["lora_a"] for _, p in parts], axis=-1)
    b = np.zeros((a.shape[-1], offsets[-1]), a.dtype)
    row = 0
    for i, p in parts:
        entry = modules[p]
        ri = entry["lora_a"].shape[-1]
        b[row : row + ri, offsets[i] : offsets[i + 1]] = entry["lora_b"] * (r / ri)
        row += ri
    return a, b


def import_peft(folder, cfg, alpha: float, dtype=jnp.float32):
    """The lora tree of a PEFT LoRA folder (``adapter_config.json``, ``adapter_model.safetensors``)
    for the model ``cfg``; ``lora_b`` is rescaled so that the scale ``alpha / r`` gives PEFT's."""
    folder = Path(folder)
    config = _read_peft_config(folder)
    weights = folder / PEFT_WEIGHTS
    if not weights.is_file():
        raise UserError(f"{folder}: no {PEFT_WEIGHTS} (pickled adapter_model.bin is not read)")
    from safetensors.numpy import load_file

    tensors = {_module_name(k): v for k, v in load_file(str(weights)).items()}
    names = {n for n, _ in tensors}
    table = _peft_modules(cfg)
    unknown = sorted(names - set(table))
    if unknown:
        raise UserError(f"{folder}: adapters for modules this model does not have: {unknown[:4]}")
    modules = {}
    for name in sorted(names):
        a, b = tensors[(name, "lora_A")].T, tensors[(name, "lora_B")].T  # [in, R], [R, out]
        peft_scale = _peft_scale(config, name, a.shape[-1])
        for path, keep, b_i in _split(table[name], b):
            a_i = a[:, keep]
            b_i = b_i[keep] * (peft_scale / scale(alpha, a_i))
            modules[path] = {"lora_a": jnp.asarray(a_i, dtype), "lora_b": jnp.asarray(b_i, dtype)}
    return _unflat(modules)


def _split(kernels, b):
    """``(path, rank columns kept, B columns)`` per kernel of a module's ``B [R, out]``: all columns
    for a single kernel; for a fused one the columns that reach it (all of them when B is zero)."""
    if len(kernels) == 1:
        yield kernels[0][0], np.ones(b.shape[0], bool), b
        return
    offsets = np.cumsum([0] + [size for _, size in kernels])
    for i, (path, _) in enumerate(kernels):
        b_i = b[:, offsets[i] : offsets[i + 1]]
        keep = np.any(b_i, axis=1) if np.any(b) else np.ones(b.shape[0], bool)
        if keep.any():
            yield path, keep, b_i


def _read_peft_config(folder: Path) -> dict:
    path = folder / PEFT_CONFIG
    if not path.is_file():
        raise UserError(f"{folder}: no {PEFT_CONFIG}; expected a PEFT adapter folder")
    config = json.loads(path.read_text())
    problems = [
        (config.get("peft_type") != "LORA", f"peft_type={config.get('peft_type')!r}"),
        (bool(config.get("use_dora")), "use_dora=true"),
        (config.get("bias", "none") != "none", f"bias={config.get('bias')!r}"),
        (bool(config.get("modules_to_save")), f"modules_to_save={config.get('modules_to_save')}"),
    ]
    for bad, what in problems:
        if bad:
            raise UserError(f"{path}: {what} is not supported (plain LoRA adapters only)")
    return config


def _module_name(key: str) -> tuple[str, str]:
    """``base_model.model.X.lora_A.weight`` -> ``('X', 'lora_A')``."""
    m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight", key)
    if not m:
        raise UserError(f"{PEFT_WEIGHTS}: unexpected tensor {key!r} (LoRA A/B weights only)")
    return m.group(1), m.group(2)


def _peft_scale(config: dict, name: str, rank: int) -> float:
    """PEFT's scaling of module ``name``: its alpha (pattern) over r, or sqrt(r) with rsLoRA."""
    module_alpha = config.get("lora_alpha", 8)
    for key, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            module_alpha = value
            break
    return module_alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
