"""Hugging Face checkpoints <-> codex_jax parameter trees (safetensors only; never unpickled).

    model, params = import_checkpoint("hf_folder")  # config.json + *.safetensors (sharded too)
    export_checkpoint(model, params, "out_dir")     # loads with AutoModelForCausalLM

Supported: GPT2LMHeadModel (family 'gpt2'), LlamaForCausalLM, MistralForCausalLM and
Qwen2ForCausalLM (family 'llama'). Each family has one table of ``(hf_name, [param paths],
transpose)`` rows; import reads a tensor, transposes it if asked and splits it along the last axis
over the paths (GPT-2's fused ``c_attn``); export does the reverse, so the round trip is exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy: safetensors.numpy then handles it)
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from codex_jax.errors import UserError
from codex_jax.models.transformer import ModelConfig, Transformer, init_params

ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_IGNORED_SUFFIXES = (
    ".attn.bias",
    ".attn.masked_bias",
    "rotary_emb.inv_freq",
)  # buffers, not weights
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


# ------------------------------------------------------------------------------------- config.json


def read_config(path) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face folder."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise UserError(f"{path}: no config.json; expected a Hugging Face model folder")
    return json.loads(file.read_text())


def _model_type(hf: dict) -> str:
    archs = hf.get("architectures") or []
    known = [ARCHITECTURES[a] for a in archs if a in ARCHITECTURES]
    if known and len(known) == len(archs):
        return known[0]
    if not archs and hf.get("model_type") in ARCHITECTURES.values():
        return hf["model_type"]
    raise UserError(
        f"config.json: unsupported architectures={archs} (model_type={hf.get('model_type')!r}); "
        f"supported: {sorted(ARCHITECTURES)}"
    )


def _require(ok: bool, what: str):
    if not ok:
        raise UserError(f"config.json: {what} is not supported")


def _gpt2_fields(hf: dict) -> dict[str, Any]:
    _require(
        hf.get("activation_function", "gelu_new") in _GELU_TANH,
        f"activation {hf.get('activation_function')}",
    )
    _require(hf.get("scale_attn_weights", True), "scale_attn_weights=false")
    _require(not hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx=true")
    _require(not hf.get("add_cross_attention", False), "add_cross_attention=true")
    d = hf["n_embd"]
    return dict(
        family="gpt2",
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        num_kv_heads=hf["n_head"],
        d_model=d,
        d_ff=hf.get("n_inner") or 4 * d,
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("n_positions", 1024),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _rope_fields(hf: dict) -> dict[str, Any]:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    _require(
        params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) == 1.0,
        "partial_rotary_factor != 1",
    )
    fields: dict[str, Any] = {"rope_theta": float(theta)}
    if kind == "linear":
        fields["rope_linear_factor"] = float(params["factor"])
    elif kind == "llama3":
        fields["rope_llama3_scaling"] = (
            float(params["factor"]),
            float(params["low_freq_factor"]),
            float(params["high_freq_factor"]),
            int(params["original_max_position_embeddings"]),
        )
    else:
        _require(kind == "default", f"rope type {kind!r} (have: default, linear, llama3)")
    return fields


def _llama_fields(hf: dict, model_type: str) -> dict[str, Any]:
    _require(hf.get("hidden_act", "silu") == "silu", f"hidden_act {hf.get('hidden_act')}")
    _require(not hf.get("mlp_bias", False), "mlp_bias=true")
    # Llama's attention_bias also biases o_proj; ModelConfig.attention_bias (Qwen2) does not.
    _require(model_type == "qwen2" or not hf.get("attention_bias", False), "llama attention_bias=true")
    window = 0
    if model_type == "mistral":
        window = hf.get("sliding_window") or 0
    elif model_type == "qwen2":
        _require(not hf.get("use_sliding_window", False), "qwen2 use_sliding_window=true")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    return dict(
        family="llama",
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"],
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        head_dim=0 if head_dim * heads == hf["hidden_size"] else head_dim,
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        attention_bias=model_type == "qwen2",
        sliding_window=int(window),
        **_rope_fields(hf),
    )


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """ModelConfig for a parsed ``config.json``; ``overrides`` set other fields (dtype, ...)."""
    model_type = _model_type(hf)
    try:
        fields = _gpt2_fields(hf) if model_type == "gpt2" else _llama_fields(hf, model_type)
    except KeyError as e:
        raise UserError(f"config.json ({model_type}): missing key {e}") from None
    return ModelConfig(**{**fields, **overrides})


def _export_model_type(cfg: ModelConfig) -> str:
    if cfg.family == "gpt2":
        plain = cfg.dims_per_head * cfg.num_heads == cfg.d_model and not cfg.sliding_window
        if cfg.num_kv_heads != cfg.num_heads or not plain:
            raise UserError(
                "Hugging Face GPT-2 has no grouped-query attention, head_dim or sliding_window "
                f"(this model: num_kv_heads={cfg.num_kv_heads} of {cfg.num_heads} heads, "
                f"head_dim={cfg.head_dim}, sliding_window={cfg.sliding_window})"
            )
        return "gpt2"
    if cfg.attention_bias:
        if cfg.sliding_window or cfg.head_dim:
            raise UserError("no Hugging Face architecture has q/k/v biases with sliding_window or head_dim")
        return "qwen2"
    return "mistral" if cfg.sliding_window else "llama"


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A ``config.json`` mapping that transformers reads back as ``cfg``."""
    model_type = _export_model_type(cfg)
    arch = {v: k for k, v in ARCHITECTURES.items()}[model_type]
    common = dict(
        architectures=[arch],
        model_type=model_type,
        vocab_size=cfg.vocab_size,
        tie_word_embeddings=cfg.tie_embeddings,
        dtype=cfg.param_dtype,
        torch_dtype=cfg.param_dtype,
        # Token ids belong to the tokenizer: pass them with export_checkpoint(extra_config=...).
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    if model_type == "gpt2":
        return dict(
            common,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_embd=cfg.d_model,
            n_inner=cfg.d_ff,
            n_positions=cfg.max_seq_len,
            layer_norm_epsilon=cfg.norm_eps,
            activation_function="gelu_new",
            scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
            reorder_and_upcast_attn=False,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=0.0,
        )
    rope: dict[str, Any] = {"rope_type": "default"}
    if cfg.rope_llama3_scaling:
        factor, low, high, original = cfg.rope_llama3_scaling
        rope = dict(
            rope_type="llama3",
            factor=factor,
            low_freq_factor=low,
            high_freq_factor=high,
            original_max_position_embeddings=original,
        )
    elif cfg.rope_linear_factor != 1.0:
        rope = dict(rope_type="linear", factor=cfg.rope_linear_factor)
    if cfg.rope_llama3_scaling and cfg.rope_linear_factor != 1.0:
        raise UserError("Hugging Face rope takes one scaling: llama3 or linear, not both")
    out = dict(
        common,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        head_dim=cfg.dims_per_head,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        rope_theta=cfg.rope_theta,
        rope_scaling=None if rope["rope_type"] == "default" else rope,
        rope_parameters=dict(rope, rope_theta=cfg.rope_theta),
    )
    if model_type == "qwen2":
        out.update(attention_bias=True, use_sliding_window=False, sliding_window=None)
        del out["head_dim"]
    if model_type == "mistral":
        out["sliding_window"] = cfg.sliding_window
    return out


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
    folder = Path(folder)
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
        self.handles = [safe_open(str(f), framework="np") for f in files]
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
    """``(Transformer, params)`` from a local Hugging Face folder; params and compute in ``dtype``.

    ``overrides`` set other ModelConfig fields (``remat='full'``, ``dtype='bfloat16'`` compute...).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    hf_config = read_config(folder)
    _model_type(hf_config)  # an unsupported architecture is named before anything else
    files = safetensors_files(folder)  # then pickle-only folders are refused
    name = jnp.dtype(dtype).name
    cfg = config_from_hf(hf_config, **{"dtype": name, "param_dtype": name, **overrides})
    reader = _Reader(files)
    expected = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), 1))
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
    out = Path(out_dir)
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
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    return out
