"""Hugging Face checkpoints <-> codex_jax parameter trees (safetensors only; never unpickled).

    model, params = import_checkpoint("hf_folder")  # config.json + *.safetensors (sharded too)
    export_checkpoint(model, params, "out_dir")     # loads with AutoModelForCausalLM

Supported: GPT2LMHeadModel (family 'gpt2'), LlamaForCausalLM, MistralForCausalLM and
Qwen2ForCausalLM (family 'llama'). Each family has one table of ``(hf_name, [param paths],
transpose)`` rows; import reads a tensor, transposes it if asked and splits it along the last axis
over the paths (GPT-2's fused ``c_attn``); export does the reverse, so the round trip is exact.
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
from codex_jax.interop.hf_config import config_from_hf, config_to_hf, model_type_of, read_config
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
    """Rows ``(hf_name, param_paths, transpose)`` covering every parameter of ``cfg``."""
    rows: list[tuple[str, list[tuple[str, ...]], bool]] = []

    def add(name, paths, transpose=False):
        rows.append((name, [tuple(p.split("/")) for p in paths], transpose))

    if cfg.family == "gpt2":
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
            h, p = f"model.layers.{i}", f"layers_{i}"
            add(f"{h}.input_layernorm.weight", [f"{p}/attn_norm/scale"])
            add(f"{h}.post_attention_layernorm.weight", [f"{p}/mlp_norm/scale"])
            for x in "qkvo":
                add(f"{h}.self_attn.{x}_proj.weight", [f"{p}/attn/{x}_proj/kernel"], transpose=True)
                if cfg.attention_bias and x != "o":
                    add(f"{h}.self_attn.{x}_proj.bias", [f"{p}/attn/{x}_proj/bias"])
            for x in ("gate", "up", "down"):
                add(f"{h}.mlp.{x}_proj.weight", [f"{p}/mlp/{x}_proj/kernel"], transpose=True)
        add("model.norm.weight", ["final_norm/scale"])
    if not cfg.tie_embeddings:
        add("lm_head.weight", ["lm_head"])
    return rows


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


def import_checkpoint(path, dtype=jnp.float32, **overrides):
    """``(Transformer, params)`` from a Hugging Face folder (local or ``gs://``); params and compute in
    ``dtype``.

    ``overrides`` set other ModelConfig fields (``remat='full'``, ``dtype='bfloat16'`` compute...).
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
    wanted = {r[0] for r in rows}
    unknown = sorted(
        n
        for n in reader.where
        if n not in wanted and not n.endswith(_IGNORED_SUFFIXES) and n != "lm_head.weight"
    )
    missing = sorted(wanted - set(reader.where))
    if unknown or missing:
        raise UserError(
            f"{folder}: weights do not match config.json ({cfg.family}); "
            f"missing {missing[:5]}, unexpected {unknown[:5]}"
        )
    params: dict = {}
    for hf_name, paths, transpose in rows:
        array = reader.get(hf_name)
        array = array.T if transpose else array
        parts = np.split(array, len(paths), axis=-1) if len(paths) > 1 else [array]
        for p, part in zip(paths, parts, strict=True):
            want = _get(expected, p).shape
            if part.shape != want:
                raise UserError(f"{folder}: {hf_name} has shape {array.shape}; config.json implies {want}")
            _put(params, p, jnp.asarray(part.astype(cfg.weights_dtype)))
    return Transformer(cfg), params


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
