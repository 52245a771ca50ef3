"""PEFT LoRA adapter folders <-> codex_jax lora trees (``models/lora.py``).

    export_peft(model.cfg, lora_tree, alpha, out_dir)  # adapter_config.json + safetensors
    lora_tree = import_peft(out_dir, model.cfg, alpha) # any PEFT LoRA of the same model

PEFT naming: Llama-layout modules map one to one (``model.layers.0.self_attn.q_proj``). GPT-2's
``c_attn`` fuses q/k/v (Phi-3's ``qkv_proj`` and ``gate_up_proj`` likewise): the targeted ones export as
one exact adapter of rank ``sum(r)`` (``A`` the concatenated ``lora_a``s, ``B`` block-diagonal;
``rank_pattern``/``alpha_pattern`` keep the scale), and a fused adapter imports as adapters of its parts
sharing its ``A`` (zero ``B`` columns dropped), which is exact too.

Per-expert adapters of a mixture of experts (``lora.experts``) export as PEFT's ``target_parameters`` on
transformers' fused 3-D expert weights (:func:`expert_peft_tensors`); they are not imported.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from codex_jax.errors import UserError
from codex_jax.interop.hf_config import export_model_type
from codex_jax.interop.hf_types import HF_TYPES
from codex_jax.interop.hf_weights import weight_table
from codex_jax.models.lora import is_expert_adapter, modules_of, scale, tree_of

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _peft_modules(cfg) -> dict[str, list[tuple[str, int]]]:
    """Hugging Face module name -> its kernels ``[(path, out_size)]`` (GPT-2's c_attn: three)."""
    kv = cfg.num_kv_heads * cfg.dims_per_head
    sizes = {
        "q_proj": cfg.num_heads * cfg.dims_per_head,
        "k_proj": kv,
        "v_proj": kv,
        "gate_proj": cfg.d_ff,
        "up_proj": cfg.d_ff,
    }
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
    modules = {p: jax.tree.map(np.asarray, e) for p, e in modules_of(lora_tree).items()}
    ranks = [e["lora_a"].shape[-1] for e in modules.values()]
    r = max(set(ranks), key=ranks.count)
    experts = {p: e for p, e in modules.items() if is_expert_adapter(e)}
    plain = {p: e for p, e in modules.items() if p not in experts}
    tensors, rank_pattern, alpha_pattern = peft_tensors(cfg, plain, r, alpha)
    config = peft_config(cfg, tensors, r, alpha, dropout, base_name)
    if experts:
        if rank_pattern or alpha_pattern or len(set(ranks)) > 1:
            raise UserError("export.format=peft: expert adapters need one rank for every adapter")
        rank, expert_tensors, targets = expert_peft_tensors(experts, r)
        tensors = {k: _pad_rank(k, v, rank) for k, v in tensors.items()}
        tensors.update(expert_tensors)
        # every module at the one rank PEFT gives them all; the scale stays alpha / r
        config.update(r=rank, lora_alpha=float(alpha) * rank / r, target_parameters=targets)
    config.update(rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    return write_peft(out_dir, tensors, config)


def _pad_rank(name: str, tensor: np.ndarray, rank: int) -> np.ndarray:
    """A plain module's ``lora_A [r, in]`` / ``lora_B [out, r]`` with zero rank rows/columns up to ``rank``
    (the same update)."""
    if name.endswith(".lora_A.weight"):
        return np.pad(tensor, ((0, rank - tensor.shape[0]), (0, 0)))
    return np.pad(tensor, ((0, 0), (0, rank - tensor.shape[1])))


def expert_peft_tensors(experts: dict[str, dict], r: int) -> tuple[int, dict[str, np.ndarray], list[str]]:
    """``(rank, tensors, target_parameters)`` of per-expert adapters (``'layers_1/mlp/gate_proj'``: ``lora_a
    [E, in, r]``, ``lora_b [E, r, out]``) in PEFT's ``target_parameters`` form on transformers' fused expert
    weights (``mlp.experts.gate_up_proj [E, 2F, D]``, ``mlp.experts.down_proj [E, D, F]``).

    ``gate_up_proj`` is one adapter: the gate and up ``A``s side by side, ``B`` block-diagonal (rank 2r when
    both are adapted). PEFT nests two adapted parameters of one module: the first (``gate_up_proj``) under
    ``experts.base_layer``, the second at ``experts``. Its ``lora_A.weight`` is ``[E * R, in]`` (expert
    major), its ``lora_B.weight`` ``[out, R * E]`` (rank major)."""
    layers: dict[str, dict[str, dict]] = {}
    for path, entry in experts.items():
        layer, _, weight = path.rpartition("/")
        if not re.fullmatch(r"layers_\d+/mlp", layer):
            raise UserError(f"export.format=peft: no Hugging Face parameter for the expert adapter {path!r}")
        layers.setdefault(layer, {})[weight] = entry
    fused = any({"gate_proj", "up_proj"} <= set(w) for w in layers.values())
    rank = 2 * r if fused else r
    wanted = {n for w in layers.values() for n in w}
    targets = [t for t, parts in _EXPERT_PARAMS if wanted & set(parts)]
    tensors: dict[str, np.ndarray] = {}
    for layer, weights in sorted(layers.items()):
        prefix = f"{_PREFIX}model.layers.{layer.split('/')[0].split('_')[1]}.mlp.experts"
        for target, parts in _EXPERT_PARAMS:
            if not set(parts) & set(weights):
                continue
            a, b = _expert_adapter(weights, parts, rank)
            where = prefix + (".base_layer" if len(targets) == 2 and target.endswith("gate_up_proj") else "")
            E, d_in, R = a.shape
            tensors[f"{where}.lora_A.weight"] = np.ascontiguousarray(
                a.transpose(0, 2, 1).reshape(E * R, d_in)
            )
            tensors[f"{where}.lora_B.weight"] = np.ascontiguousarray(b.transpose(2, 1, 0).reshape(-1, R * E))
    return rank, tensors, targets


# transformers' fused expert parameters and our stacked weights they hold, in the module's order
_EXPERT_PARAMS = (
    ("mlp.experts.gate_up_proj", ("gate_proj", "up_proj")),
    ("mlp.experts.down_proj", ("down_proj",)),
)


def _expert_adapter(weights: dict[str, dict], parts: tuple[str, ...], rank: int):
    """``(A [E, in, rank], B [E, rank, sum(out)])`` of one fused parameter: the adapted parts' ``A``s side
    by side, ``B`` block-diagonal, zero where a part has no adapter or the rank is padded."""
    first = next(weights[p] for p in parts if p in weights)
    E, d_in, _ = first["lora_a"].shape
    outs = [weights[p]["lora_b"].shape[-1] if p in weights else first["lora_b"].shape[-1] for p in parts]
    a = np.zeros((E, d_in, rank), first["lora_a"].dtype)
    b = np.zeros((E, rank, sum(outs)), first["lora_b"].dtype)
    row, col = 0, 0
    for part, out in zip(parts, outs, strict=True):
        if part in weights:
            r = weights[part]["lora_a"].shape[-1]
            a[:, :, row : row + r] = weights[part]["lora_a"]
            b[:, row : row + r, col : col + out] = weights[part]["lora_b"]
            row += r
        col += out
    return a, b


def peft_tensors(cfg, modules: dict[str, dict], r: int, alpha: float):
    """``(tensors, rank_pattern, alpha_pattern)`` of the adapters ``modules`` (numpy entries by
    kernel path) under their Hugging Face names; UserError for an adapter with no such module."""
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
    return tensors, rank_pattern, alpha_pattern


def peft_config(cfg, tensors: dict, r: int, alpha: float, dropout: float, base_name: str | None) -> dict:
    """The ``adapter_config.json`` of ``tensors`` (without the rank/alpha patterns)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": int(r),
        "lora_alpha": float(alpha),
        "lora_dropout": float(dropout),
        "target_modules": sorted(
            n[len(_PREFIX) : -len(".lora_A.weight")] for n in tensors if n.endswith(".lora_A.weight")
        ),
        "fan_in_fan_out": HF_TYPES[export_model_type(cfg)].names.layout == "gpt2",  # GPT-2's Conv1D
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "base_model_name_or_path": base_name,
    }


def write_peft(out_dir, tensors: dict[str, np.ndarray], config: dict) -> Path:
    """Writes the adapter folder ``out_dir``: the safetensors weights and the JSON config."""
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
    return tree_of(modules)


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
        (
            bool(config.get("target_parameters")),
            f"target_parameters={config.get('target_parameters')} (expert adapters are exported, not read)",
        ),
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
