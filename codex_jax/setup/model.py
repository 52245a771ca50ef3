"""The model a run config describes, resolved from ``model.init_from`` when it names one.

``'hf:/path/to/folder'`` (a local Hugging Face checkpoint) or ``'workdir:/path/to/run'`` (another
run's latest checkpoint): the folder's ``config.json`` (or the run's checkpoint metadata) sets the
architecture (the ``model.*`` shape keys of the run config are ignored, and the log says which
differ); only the run-time keys :data:`RUNTIME_KEYS` come from the run config. Its weights are
loaded by ``setup/weights.py`` and its tokenizer by ``data/pipeline.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ml_collections

from codex_jax.config.runspec import RunSpec
from codex_jax.config.schema import SCHEMA
from codex_jax.errors import UserError
from codex_jax.interop import hf_config
from codex_jax.interop import hf_weights as hf
from codex_jax.models import registry
from codex_jax.models.config import ModelConfig
from codex_jax.setup.checkpoints import open_checkpoints

# ModelConfig fields taken from the run config; every other field comes from config.json.
RUNTIME_KEYS = (
    "dtype",
    "param_dtype",
    "dropout",
    "attention_impl",
    "remat",
    "grad_barriers",
    "loss_chunk",
    "moe_impl",  # how the experts compute, not their shapes (models/moe.py)
    "capacity_factor",
)
# Run-config keys that config.json overrides (named in the log when they differ).
SHAPE_KEYS = (
    "family",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "d_model",
    "d_ff",
    "vocab_size",
    "rope_theta",
    "norm_eps",
    "tie_embeddings",
)


def model_config(cfg: ml_collections.ConfigDict, saved: dict | None = None) -> ModelConfig:
    """The ModelConfig a run config describes (positions sized to ``data.seq_len``).

    With ``model.init_from='hf:FOLDER'`` it is FOLDER/config.json's, with ``'workdir:RUN'`` that
    run's (``saved``, the resolved dict a checkpoint's meta keeps under ``'model'``, wins over
    both), with the run-time keys of ``cfg.model``. The ``lora.alpha`` / ``lora.dropout`` keys
    always apply.
    """
    spec = RunSpec.from_config(cfg)
    runtime = {k: cfg.model[k] for k in RUNTIME_KEYS}
    if spec.hf_folder is not None and not saved:
        resolved = hf_config.config_from_hf(hf_config.read_config(spec.hf_folder), **runtime)
    elif spec.hf_folder is not None or spec.base_run is not None:
        resolved = ModelConfig.from_dict({**(saved or _base_run_model(spec)), **runtime})
    elif cfg.model.preset:
        resolved = ModelConfig.from_dict({**(saved or registry.get(cfg.model.preset)), **runtime})
    else:
        resolved = ModelConfig.from_dict({**cfg.model.to_dict(), "max_seq_len": cfg.data.seq_len})
    return resolved.replace(
        lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, frozen_base=cfg.lora.rank > 0
    )


def _base_run_model(spec: RunSpec) -> dict:
    """The architecture of the base run's latest checkpoint (``'workdir:RUN'``)."""
    assert spec.base_run is not None  # a validated init_from is 'hf:FOLDER' or 'workdir:RUN'
    checkpointer = open_checkpoints(spec.base_run)
    try:
        step = checkpointer.select("latest", items=("meta",))
        if step is None:
            raise UserError(f"config key 'model.init_from': no checkpoint in {spec.base_run / 'checkpoints'}")
        saved = checkpointer.restore_meta(step).get("model")
    finally:
        checkpointer.close()
    if not saved:  # saved before checkpoints recorded the architecture: the run's own keys
        base = spec.base_config()
        saved = {**base.model.to_dict(), "max_seq_len": base.data.seq_len}
    return saved


def check_model(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig) -> None:
    """Refuses a ``model.init_from`` without safetensors weights (``hf:``) or with fewer positions than
    ``data.seq_len`` (gpt2); logs the architecture it sets. Nothing without ``model.init_from``."""
    spec = RunSpec.from_config(cfg)
    source = spec.hf_folder or spec.base_run
    if cfg.model.preset and source is None:
        if model_cfg.positions == "learned" and cfg.data.seq_len > model_cfg.max_seq_len:
            raise UserError(
                f"config key 'data.seq_len': {cfg.data.seq_len} exceeds the {model_cfg.max_seq_len} "
                f"positions of model.preset {cfg.model.preset!r}"
            )
        changed = _set_shape_keys(cfg, model_cfg)
        print(
            f"model.preset {cfg.model.preset!r} ({model_cfg.family}, {model_cfg.num_layers} layers, d_model "
            f"{model_cfg.d_model}, vocab {model_cfg.vocab_size}): the model.* shape keys are ignored"
            + (f" (the config's {', '.join(changed)})" if changed else ""),
            file=sys.stderr,
            flush=True,
        )
        return
    if source is None:
        return
    if spec.hf_folder is not None:
        hf.safetensors_files(spec.hf_folder)  # a pickle-only folder is refused before any data work
    if model_cfg.positions == "learned" and cfg.data.seq_len > model_cfg.max_seq_len:
        raise UserError(
            f"config key 'data.seq_len': {cfg.data.seq_len} exceeds the {model_cfg.max_seq_len} "
            f"positions of model.init_from {source}"
        )
    shape = (
        f"{model_cfg.family}, {model_cfg.num_layers} layers, d_model {model_cfg.d_model}, "
        f"vocab {model_cfg.vocab_size}"
    )
    if spec.hf_folder is not None:
        changed = _set_shape_keys(cfg, model_cfg)
        said = "the model.* shape keys are ignored"
        said += f" (the config's {', '.join(changed)})" if changed else ""
        if cfg.model.preset:
            said += f", and so is model.preset {cfg.model.preset!r}"
        where = f"architecture from {spec.hf_folder / 'config.json'}"
    else:
        said, where = "the model.* shape keys are ignored", f"architecture of the run in {spec.base_run}"
    print(f"model.init_from: {where} ({shape}); {said}", file=sys.stderr, flush=True)


def _set_shape_keys(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig) -> list[str]:
    """``key=config->model`` of the shape keys the config set (not schema defaults) that the model differs
    on: only those are news to the user."""
    return [
        f"{k}={cfg.model[k]!r}->{getattr(model_cfg, k)!r}"
        for k in SHAPE_KEYS
        if cfg.model[k] != getattr(model_cfg, k) and cfg.model[k] != SCHEMA[f"model.{k}"][0]
    ]


def check_vocab(tokenizer, model_cfg: ModelConfig, where: str | Path) -> None:
    """UserError when the tokenizer has ids the model's embedding cannot hold."""
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(
            f"the tokenizer ({where}) has {tokenizer.vocab_size} ids, more than the model's "
            f"vocab_size={model_cfg.vocab_size}"
        )
