"""Hugging Face checkpoints <-> codex_jax parameter trees (safetensors only; never unpickled).

    model, params = import_checkpoint("hf_folder")  # config.json + *.safetensors (sharded too)
    export_checkpoint(model, params, "out_dir")     # loads with AutoModelForCausalLM

Supported: every ``model_type`` of ``interop/hf_types.py``'s table (GPT-2, Llama, Mistral, Qwen2, Qwen3,
Gemma 1/2/3, StarCoder2, Phi-3). A model has one table of ``(hf_name, [param paths], transpose)`` rows;
import reads a tensor, transposes it if asked and splits it along the last axis over the paths (GPT-2's
fused ``c_attn``, Phi-3's ``qkv_proj`` and ``gate_up_proj``) at the sizes the paths expect; export does
the reverse, so the round trip is exact.
The config.json side (architecture <-> ModelConfig) is ``interop/hf_config.py``; PEFT adapters are
``interop/peft.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy: safetensors.numpy then handles it)
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save, save_file

from codex_jax.errors import UserError
from codex_jax.files import as_path, is_remote, local_copy
from codex_jax.interop import hf_experts
from codex_jax.interop.hf_config import (
    config_from_hf,
    config_to_hf,
    export_model_type,
    model_type_of,
    read_config,
)
from codex_jax.interop.hf_types import HF_TYPES, Names
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_IGNORED_SUFFIXES = (
    ".attn.bias",
    ".attn.masked_bias",
    "rotary_emb.inv_freq",
)  # buffers, not weights


# ----------------------------------------------------------------------------------- weight tables


def weight_table(cfg: ModelConfig) -> list[tuple[str, list[tuple[str, ...]], bool]]:
    """Rows ``(hf_name, param_paths, transpose)`` covering every parameter of ``cfg``, named as the Hugging
    Face architecture of its family names them (``hf_types.HF_TYPES``)."""
    rows: list[tuple[str, list[tuple[str, ...]], bool]] = []

    def add(name, paths, transpose=False):
        rows.append((name, [tuple(p.split("/")) for p in paths], transpose))

    names = HF_TYPES[export_model_type(cfg)].names
    if names.layout == "gpt2":
        add("transformer.wte.weight", ["embed/embedding"])
        add("transformer.wpe.weight", ["pos_embed/embedding"])
        for i in range(cfg.num_layers):
            h, p = f"transformer.h.{i}", f"layers_{i}"
            for hf_norm, norm in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
                add(f"{h}.{hf_norm}.weight", [f"{p}/{norm}/scale"])
                add(f"{h}.{hf_norm}.bias", [f"{p}/{norm}/bias"])
            for kind in ("kernel", "bias"):
                hf_kind = "weight" if kind == "kernel" else "bias"
                add(f"{h}.attn.c_attn.{hf_kind}", [f"{p}/attn/{x}_proj/{kind}" for x in "qkv"])
                add(f"{h}.attn.c_proj.{hf_kind}", [f"{p}/attn/o_proj/{kind}"])
                add(f"{h}.mlp.c_fc.{hf_kind}", [f"{p}/mlp/fc_in/{kind}"])
                add(f"{h}.mlp.c_proj.{hf_kind}", [f"{p}/mlp/fc_out/{kind}"])
        add("transformer.ln_f.weight", ["final_norm/scale"])
        add("transformer.ln_f.bias", ["final_norm/bias"])
    else:
        add("model.embed_tokens.weight", ["embed/embedding"])
        for i in range(cfg.num_layers):
            _decoder_layer_rows(cfg, names, i, add)
        _norm_rows(cfg, "model.norm", "final_norm", add)
    if not cfg.tie_embeddings:
        add("lm_head.weight", ["lm_head"])
    return rows


def _norm_rows(cfg: ModelConfig, hf: str, path: str, add) -> None:
    add(f"{hf}.weight", [f"{path}/scale"])
    if cfg.norm == "layernorm":
        add(f"{hf}.bias", [f"{path}/bias"])


def _decoder_layer_rows(cfg: ModelConfig, names: Names, i: int, add) -> None:
    """One ``model.layers.i`` of Llama's layout, with its family's norms, fusions and MLP names."""
    h, p = f"model.layers.{i}", f"layers_{i}"
    norms = [("input_layernorm", "attn_norm")]
    if cfg.post_norms:  # Gemma 2/3: a norm after each sublayer, another before the MLP
        norms += [
            ("post_attention_layernorm", "post_attn_norm"),
            ("pre_feedforward_layernorm", "mlp_norm"),
            ("post_feedforward_layernorm", "post_mlp_norm"),
        ]
    else:
        norms.append(("post_attention_layernorm", "mlp_norm"))
    for hf_norm, norm in norms:
        _norm_rows(cfg, f"{h}.{hf_norm}", f"{p}/{norm}", add)
    attn = f"{h}.self_attn"
    if cfg.qk_norm:
        add(f"{attn}.q_norm.weight", [f"{p}/attn/q_norm/scale"])
        add(f"{attn}.k_norm.weight", [f"{p}/attn/k_norm/scale"])
    if names.fused_qkv:
        add(f"{attn}.qkv_proj.weight", [f"{p}/attn/{x}_proj/kernel" for x in "qkv"], transpose=True)
    for x in "qkv":
        if not names.fused_qkv:
            add(f"{attn}.{x}_proj.weight", [f"{p}/attn/{x}_proj/kernel"], transpose=True)
        if cfg.attention_bias:
            add(f"{attn}.{x}_proj.bias", [f"{p}/attn/{x}_proj/bias"])
    add(f"{attn}.o_proj.weight", [f"{p}/attn/o_proj/kernel"], transpose=True)
    if cfg.out_bias:
        add(f"{attn}.o_proj.bias", [f"{p}/attn/o_proj/bias"])
    if cfg.sparse_layer(i):  # a mixture-of-experts MLP: interop/hf_experts.py, not rows of this table
        return
    ours: tuple[str, ...] = (
        ("fc_in", "fc_out") if cfg.mlp == "plain" else ("gate_proj", "up_proj", "down_proj")
    )
    hf_mlp = names.mlp if cfg.mlp == "gated" else names.mlp[-2:]
    if names.fused_gate_up:
        add(f"{h}.mlp.gate_up_proj.weight", [f"{p}/mlp/gate_proj/kernel", f"{p}/mlp/up_proj/kernel"], True)
        ours = hf_mlp = ("down_proj",)
    for hf_name, name in zip(hf_mlp, ours, strict=True):
        add(f"{h}.mlp.{hf_name}.weight", [f"{p}/mlp/{name}/kernel"], transpose=True)
        if cfg.mlp_bias:
            add(f"{h}.mlp.{hf_name}.bias", [f"{p}/mlp/{name}/bias"])


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _put(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ----------------------------------------------------------------------------------------- files


def _pickle_refusal(folder: Path) -> UserError:
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(_PICKLE_SUFFIXES))
    found = f"only pickle weights ({', '.join(pickles)})" if pickles else "no *.safetensors weights"
    return UserError(
        f"{folder}: {found}. codex_jax reads safetensors only and never unpickles. If you trust "
        "the checkpoint, convert it once with transformers (which unpickles it): python -c "
        '"from transformers import AutoModelForCausalLM as M; '
        f"M.from_pretrained('{folder}').save_pretrained('OUT', safe_serialization=True)\" "
        "and import OUT"
    )


def safetensors_files(folder) -> list[Path]:
    """A folder's weights: the files of ``model.safetensors.index.json``, else ``*.safetensors``."""
    folder = as_path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{index}: shards missing from the folder: {missing}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise _pickle_refusal(folder)
    return files


class _Reader:
    """Lazy access to the tensors of several safetensors files (numpy arrays, bfloat16 too)."""

    def __init__(self, files: list[Path]):
        # safe_open maps a local file; a gs:// shard is read from a local copy (files.local_copy)
        self.handles = [safe_open(str(local_copy(f)), framework="np") for f in files]
        self.where = {}
        for handle in self.handles:
            for name in handle.keys():  # noqa: SIM118  (safe_open is not iterable)
                self.where[_strip_base(name)] = (handle, name)

    def get(self, name: str) -> np.ndarray:
        handle, original = self.where[name]
        return handle.get_tensor(original)


def _strip_base(name: str) -> str:
    """Base-model names (``h.0...`` in the original gpt2 upload) get a ``transformer.`` prefix."""
    if name.startswith(("h.", "wte.", "wpe.", "ln_f.")):
        return "transformer." + name
    return name


# -------------------------------------------------------------------------------------- public API


def import_checkpoint(path, dtype=jnp.float32, form=None, **overrides):
    """``(Transformer, params)`` from a Hugging Face folder (local or ``gs://``); params and compute in
    ``dtype``.

    ``form`` (``(key, array) -> leaf``, ``key`` the flat ``'a/b/kernel'`` path) turns each weight, as
    it is read, into what the params tree holds (e.g. a quantized kernel); one tensor exists in
    ``dtype`` at a time. ``overrides`` set other ModelConfig fields (``remat='full'``, ``dtype='bfloat16'``
    compute...).
    """
    folder = as_path(path)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    hf_config = read_config(folder)
    model_type_of(hf_config)  # an unsupported architecture is named before anything else
    files = safetensors_files(folder)  # then pickle-only folders are refused
    name = jnp.dtype(dtype).name
    cfg = config_from_hf(hf_config, **{"dtype": name, "param_dtype": name, **overrides})
    reader = _Reader(files)
    expected = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    rows = weight_table(cfg)
    moe = _moe_prefixes(cfg, reader.where)
    _check_names(folder, cfg, {r[0] for r in rows}, set(reader.where), moe)
    params: dict = {}

    def leaf(key: str, array: np.ndarray):
        weight = jnp.asarray(array.astype(cfg.weights_dtype))
        return weight if form is None else form(key, weight)

    for hf_name, paths, transpose in rows:
        parts = _table_row(
            folder, reader.get(hf_name), hf_name, [_get(expected, p).shape for p in paths], transpose
        )
        for p, part in zip(paths, parts, strict=True):
            _put(params, p, leaf("/".join(p), part))
    style = HF_TYPES[export_model_type(cfg)].names.expert_style
    for i, prefix in moe.items():
        layer = hf_experts.layer_params(
            reader.get, set(reader.where), prefix, cfg.num_experts, style, str(folder)
        )
        for name, array in layer.items():
            want = expected[f"layers_{i}"]["mlp"][name].shape
            if array.shape != want:
                raise UserError(
                    f"{folder}: {prefix} {name} has shape {array.shape}; config.json implies {want}"
                )
            params[f"layers_{i}"].setdefault("mlp", {})[name] = leaf(f"layers_{i}/mlp/{name}", array)
    return Transformer(cfg), params


def _check_names(folder, cfg: ModelConfig, wanted: set[str], found: set[str], moe: dict[int, str]) -> None:
    """UserError naming the tensors the table wants and the folder lacks, and those it has unasked (buffers,
    an untied head's ``lm_head`` and the experts' own tensors aside)."""
    experts = tuple(f"{p}." for p in moe.values())
    unknown = sorted(
        n
        for n in found
        if n not in wanted
        and not n.endswith(_IGNORED_SUFFIXES)
        and n != "lm_head.weight"
        and not n.startswith(experts)
    )
    missing = sorted(wanted - found)
    if unknown or missing:
        raise UserError(
            f"{folder}: weights do not match config.json ({cfg.family}); "
            f"missing {missing[:5]}, unexpected {unknown[:5]}"
        )


def _table_row(folder, array: np.ndarray, hf_name: str, wants: list[tuple], transpose: bool) -> list:
    """One row's tensor as the parts its param paths of shapes ``wants`` take (transposed if asked, split
    along the last axis); UserError when its shape is not what config.json implies."""
    array = array.T if transpose else array
    implied = (*wants[0][:-1], sum(w[-1] for w in wants))
    if array.shape != implied:
        shape = array.T.shape if transpose else array.shape
        raise UserError(
            f"{folder}: {hf_name} has shape {tuple(shape)}; config.json implies "
            f"{tuple(implied[::-1]) if transpose else implied}"
        )
    return np.split(array, np.cumsum([w[-1] for w in wants])[:-1], axis=-1)


def _moe_prefixes(cfg: ModelConfig, tensors) -> dict[int, str]:
    """``{layer: the Hugging Face prefix of its experts}`` of the sparse layers: the family's module
    (Mixtral's ``block_sparse_moe``), or ``mlp`` where the checkpoint holds transformers 5's fused tensors
    there."""
    names = HF_TYPES[export_model_type(cfg)].names
    out = {}
    for i in range(cfg.num_layers):
        if cfg.sparse_layer(i):
            fused = f"model.layers.{i}.mlp"
            out[i] = (
                fused if f"{fused}.experts.gate_up_proj" in tensors else f"model.layers.{i}.{names.moe_block}"
            )
    return out


def export_checkpoint(model, params, out_dir, *, dtype=None, extra_config: dict | None = None) -> Path:
    """Writes ``config.json`` + ``model.safetensors`` for ``AutoModelForCausalLM.from_pretrained``.

    ``dtype`` (default: the params' own) casts the weights; ``extra_config`` adds keys to
    config.json (e.g. ``{'eos_token_id': 2}``).
    """
    cfg: ModelConfig = model.cfg
    out = as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for hf_name, paths, transpose in weight_table(cfg):
        parts = [np.asarray(_get(params, p)) for p in paths]
        array = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
        array = array.T if transpose else array
        if dtype is not None:
            array = array.astype(jnp.dtype(dtype))
        tensors[hf_name] = np.ascontiguousarray(array)
    names = HF_TYPES[export_model_type(cfg)].names
    for i in range(cfg.num_layers):
        if cfg.sparse_layer(i):
            prefix = f"model.layers.{i}.{names.moe_block}"
            for hf_name, array in hf_experts.layer_tensors(
                params[f"layers_{i}"]["mlp"], prefix, names.expert_style
            ).items():
                tensors[hf_name] = array if dtype is None else array.astype(jnp.dtype(dtype))
    hf = config_to_hf(cfg)
    stored = tensors[weight_table(cfg)[0][0]].dtype.name  # the embedding's
    hf.update(dtype=stored, torch_dtype=stored)
    hf.update(extra_config or {})
    if is_remote(out):  # one upload of the serialized file (the same bytes save_file writes)
        (out / "model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))
    else:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    return out
