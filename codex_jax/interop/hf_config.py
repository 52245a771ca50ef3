"""Hugging Face ``config.json`` <-> :class:`ModelConfig`, through the ``model_type`` table of
``interop/hf_types.py``.

:func:`config_from_hf` reads a ``config.json`` through the installed transformers' own config class (so
every default is the one transformers would use) and refuses settings codex_jax cannot reproduce exactly
(one :class:`UserError` naming them); :func:`config_to_hf` writes one that transformers loads, and refuses a
model no Hugging Face architecture reproduces (it reads its own output back and compares).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from codex_jax.errors import UserError
from codex_jax.files import as_path
from codex_jax.interop.hf_types import ARCHITECTURES, HF_TYPES
from codex_jax.models.config import ModelConfig

_SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")


# ------------------------------------------------------------------------------------- public API


def read_config(path) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face folder."""
    file = as_path(path) / "config.json"
    if not file.is_file():
        raise UserError(f"{path}: no config.json; expected a Hugging Face model folder")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{file}:{e.lineno}: not JSON ({e.msg})") from None


def model_type_of(hf: dict) -> str:
    """The supported ``model_type`` of a config.json, or a UserError naming the supported ones."""
    archs = hf.get("architectures") or []
    known = [ARCHITECTURES[a] for a in archs if a in ARCHITECTURES]
    if known and len(known) == len(archs):
        return known[0]
    if not archs and hf.get("model_type") in HF_TYPES:
        return hf["model_type"]
    hint = ""
    if hf.get("model_type") == "gemma3":
        hint = " (a multimodal Gemma 3: save its language model as Gemma3ForCausalLM)"
    raise UserError(
        f"config.json: unsupported architectures={archs} (model_type={hf.get('model_type')!r}){hint}; "
        f"supported model_types: {', '.join(HF_TYPES)} ({', '.join(sorted(ARCHITECTURES))})"
    )


def _resolved(model_type: str, hf: dict):
    """The installed transformers' config object for ``hf`` (its defaults filled in)."""
    import transformers  # a runtime dependency; imported where config.json is read

    if model_type != "gpt2":
        missing = [k for k in _SHAPE_KEYS if k not in hf]
        if missing:
            raise UserError(f"config.json ({model_type}): missing key {missing[0]!r}")
    fields = {k: v for k, v in hf.items() if k not in ("architectures", "model_type", "transformers_version")}
    quiet = logging.getLogger("transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # transformers warns about token ids and rope fields it then fixes
    try:
        return transformers.AutoConfig.for_model(model_type, **fields)
    except Exception as e:  # transformers' validation raises several kinds; each is a bad config.json
        raise UserError(f"config.json ({model_type}): {' '.join(str(e).split())[:300]}") from None
    finally:
        quiet.setLevel(level)


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """ModelConfig for a parsed ``config.json``; ``overrides`` set other fields (dtype, ...)."""
    model_type = model_type_of(hf)
    entry = HF_TYPES[model_type]
    try:
        fields = entry.read(_resolved(model_type, hf))
    except (KeyError, AttributeError) as e:
        raise UserError(f"config.json ({model_type}): missing key {e}") from None
    return ModelConfig(**{"family": entry.family, **fields, **overrides})


def export_model_type(cfg: ModelConfig) -> str:
    """The Hugging Face ``model_type`` that holds ``cfg`` (Llama's family: llama, mistral or qwen2)."""
    if cfg.family != "llama":
        return next(name for name, t in HF_TYPES.items() if t.family == cfg.family)
    if cfg.attention_bias and not cfg.out_bias:
        return "qwen2"
    return "mistral" if cfg.sliding_window and not (cfg.attention_bias or cfg.mlp_bias) else "llama"


_RUNTIME = (
    "dtype",
    "param_dtype",
    "dropout",
    "attention_impl",
    "remat",
    "grad_barriers",
    "loss_chunk",
    "moe_impl",
    "capacity_factor",
    "router_z_loss_coef",  # training only: no Hugging Face config holds it
)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A ``config.json`` mapping that transformers reads back as ``cfg``; UserError naming the fields that
    the Hugging Face architecture of ``cfg``'s family cannot hold."""
    model_type = export_model_type(cfg)
    entry = HF_TYPES[model_type]
    out = dict(
        architectures=[entry.architecture],
        model_type=model_type,
        vocab_size=cfg.vocab_size,
        tie_word_embeddings=cfg.tie_embeddings,
        dtype=cfg.param_dtype,
        torch_dtype=cfg.param_dtype,
        # Token ids belong to the tokenizer: pass them with export_checkpoint(extra_config=...).
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **entry.write(cfg),
    )
    back = config_from_hf(out, **{k: getattr(cfg, k) for k in _RUNTIME})
    differ = [
        f"{f.name}={getattr(cfg, f.name)!r}"
        for f in dataclasses.fields(cfg)
        if f.name not in _RUNTIME + ("lora_alpha", "lora_dropout", "frozen_base")
        and getattr(back, f.name) != getattr(cfg, f.name)
    ]
    if differ:
        raise UserError(
            f"no Hugging Face {entry.architecture} holds this model ({cfg.family}): {', '.join(differ)}"
        )
    return out
