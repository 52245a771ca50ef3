"""Starting a run from existing weights: ``model.init_from='hf:/path/to/folder'`` (a local Hugging
Face checkpoint) or ``'workdir:/path/to/run'`` (the params of another run's latest checkpoint).

The folder's ``config.json`` (or the run's checkpoint metadata) sets the architecture (the
``model.*`` shape keys of the run config are ignored, and the log says which differ); only the
run-time keys :data:`RUNTIME_KEYS` come from the run config. Its weights replace the random init
of a fresh run (a resumed run restores its checkpoint as usual), and its tokenizer is the run's
(``data/pipeline.py``). A LoRA run loads them as its frozen base on every start (:func:`load_base`),
checked against the checksum its checkpoints recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from codex_jax.errors import UserError
from codex_jax.files import sha256_files
from codex_jax.interop import hf_config
from codex_jax.interop import hf_weights as hf
from codex_jax.models.config import ModelConfig

# ModelConfig fields taken from the run config; every other field comes from config.json.
RUNTIME_KEYS = ("dtype", "param_dtype", "dropout", "attention_impl", "remat")
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


def hf_model_config(cfg: ml_collections.ConfigDict, folder: Path, saved: dict | None = None) -> ModelConfig:
    """The ModelConfig of ``folder/config.json`` with the run-time keys of ``cfg.model``.

    ``saved`` (a checkpoint meta's ``'model'``) is used instead of the folder when given.
    """
    runtime = {k: cfg.model[k] for k in RUNTIME_KEYS}
    if saved:
        return ModelConfig.from_dict({**saved, **runtime})
    return hf_config.config_from_hf(hf_config.read_config(folder), **runtime)


def check_init_from(cfg: ml_collections.ConfigDict, folder: Path, model_cfg: ModelConfig) -> None:
    """Refuses a folder without safetensors weights or too short for ``data.seq_len``; logs
    which ``model.*`` keys its config.json overrides."""
    hf.safetensors_files(folder)  # a pickle-only folder is refused before any data work
    if model_cfg.family == "gpt2" and cfg.data.seq_len > model_cfg.max_seq_len:
        raise UserError(
            f"config key 'data.seq_len': {cfg.data.seq_len} exceeds the {model_cfg.max_seq_len} "
            f"positions of model.init_from {folder}"
        )
    changed = [
        f"{k}={cfg.model[k]!r}->{getattr(model_cfg, k)!r}"
        for k in SHAPE_KEYS
        if cfg.model[k] != getattr(model_cfg, k)
    ]
    print(
        f"model.init_from: architecture from {folder / 'config.json'} ({model_cfg.family}, "
        f"{model_cfg.num_layers} layers, d_model {model_cfg.d_model}, vocab "
        f"{model_cfg.vocab_size}); overrides model.* "
        f"{', '.join(changed) if changed else '(all equal)'}",
        file=sys.stderr,
        flush=True,
    )


def check_vocab(tokenizer, model_cfg: ModelConfig, where: str) -> None:
    """UserError when the tokenizer has ids the model's embedding cannot hold."""
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(
            f"the tokenizer ({where}) has {tokenizer.vocab_size} ids, more than the model's "
            f"vocab_size={model_cfg.vocab_size}"
        )


def import_params(cfg: ml_collections.ConfigDict, folder: Path, like):
    """The folder's weights (in ``model.param_dtype``) placed like the arrays of ``like``.

    ``like`` is a freshly initialised params tree as a runner holds it (sharded over a mesh, or
    stacked per device for pmap); every process reads the files and keeps its shards.
    """
    _, imported = hf.import_checkpoint(folder, dtype=jnp.dtype(cfg.model.param_dtype))

    def place(old, new):
        host = np.asarray(new)
        if host.shape != old.shape[old.ndim - host.ndim :] or host.dtype != old.dtype:
            raise UserError(f"{folder}: a weight of shape {host.shape} does not fit {old.shape}")
        full = np.broadcast_to(host, old.shape)  # adds pmap's device axis
        return jax.make_array_from_callback(old.shape, old.sharding, lambda index: full[index])

    try:
        return jax.tree.map(place, like, imported)
    except ValueError as e:  # different tree structure
        raise UserError(f"{folder}: weights do not match the model ({e})") from None


# ------------------------------------------------------------------------- model.init_from=workdir:


def base_run_config(run: Path) -> ml_collections.ConfigDict:
    """The config of the run in ``run``: its config.json over today's defaults."""
    from codex_jax.config.schema import SCHEMA, default_config, flatten

    path = run / "config.json"
    if not path.is_file():
        raise UserError(f"config key 'model.init_from': {run} has no config.json (not a run)")
    try:
        saved = flatten(json.loads(path.read_text()))
    except ValueError as e:
        raise UserError(f"{path}: not readable as JSON ({e})") from None
    base = default_config()
    base.update_from_flattened_dict({k: v for k, v in saved.items() if k in SCHEMA})
    return base


def workdir_model_config(cfg: ml_collections.ConfigDict, run: Path, saved: dict | None = None):
    """The architecture of ``run``'s checkpoints (or ``saved``) with ``cfg``'s run-time keys."""
    runtime = {k: cfg.model[k] for k in RUNTIME_KEYS}
    saved = saved or _run_meta(run).get("model")
    if not saved:  # saved before checkpoints recorded the architecture: the run's own keys
        base = base_run_config(run)
        saved = {**base.model.to_dict(), "max_seq_len": base.data.seq_len}
    return ModelConfig.from_dict({**saved, **runtime})


def _run_meta(run: Path) -> dict:
    """The metadata of ``run``'s latest checkpoint."""
    from codex_jax.checkpoint import Checkpointer

    checkpointer = Checkpointer(run / "checkpoints", read_only=True)
    try:
        step = checkpointer.select("latest", items=("meta",))
        if step is None:
            raise UserError(f"config key 'model.init_from': no checkpoint in {run / 'checkpoints'}")
        return checkpointer.restore_meta(step)
    finally:
        checkpointer.close()


def check_workdir(cfg: ml_collections.ConfigDict, run: Path, model_cfg: ModelConfig) -> None:
    """Refuses a gpt2 base with fewer positions than ``data.seq_len``; logs the architecture."""
    if model_cfg.family == "gpt2" and cfg.data.seq_len > model_cfg.max_seq_len:
        raise UserError(
            f"config key 'data.seq_len': {cfg.data.seq_len} exceeds the "
            f"{model_cfg.max_seq_len} positions of model.init_from {run}"
        )
    print(
        f"model.init_from: architecture of the run in {run} ({model_cfg.family}, "
        f"{model_cfg.num_layers} layers, d_model {model_cfg.d_model}, vocab "
        f"{model_cfg.vocab_size}); the model.* shape keys are ignored",
        file=sys.stderr,
        flush=True,
    )


def load_params(cfg: ml_collections.ConfigDict, like, step: int | None = None):
    """``(params, step)``: the weights of ``model.init_from`` placed as ``like`` (arrays or
    ShapeDtypeStructs with shardings; pmap's stacked ones too); ``step`` pins (and returns) the
    checkpoint step of a workdir, None for a Hugging Face folder."""
    from codex_jax.config.schema import init_from_folder, init_from_workdir
    from codex_jax.restore import load_checkpoint

    folder, run = init_from_folder(cfg), init_from_workdir(cfg)
    if folder is not None:
        return import_params(cfg, folder, like), None
    assert run is not None  # a validated init_from is 'hf:FOLDER' or 'workdir:RUN'
    base_cfg = base_run_config(run)
    restored = load_checkpoint(base_cfg, run, step="latest" if step is None else step)

    def place(x, t):
        x = x.astype(t.dtype)
        return jax.device_put(jnp.broadcast_to(x, t.shape) if x.shape != t.shape else x, t.sharding)

    try:
        return jax.tree.map(place, restored.params, like), restored.step
    except ValueError as e:  # another tree structure or shape
        raise UserError(f"model.init_from: {run}'s params do not fit this model ({e})") from None


# --------------------------------------------------------------------------- a LoRA run's base


def load_base(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, target, saved=None):
    """``(params, record)``: the weights ``model.init_from`` names, placed as ``target`` (arrays or
    ShapeDtypeStructs with shardings), and ``{'source', 'sha256', 'step'}`` for the checkpoint meta.

    ``saved`` (the record of a resumed run) pins a workdir base to the step the run started from;
    a base whose checksum changed since is refused. No ``init_from``: the random init of ``seed``.
    """
    from codex_jax.checkpoint import MANIFEST
    from codex_jax.config.schema import init_from_folder, init_from_workdir
    from codex_jax.models.transformer import init_params

    record: dict = {"source": cfg.model.init_from or f"random init (seed {cfg.seed})"}
    if cfg.model.init_from:
        params, step = load_params(cfg, target, (saved or {}).get("step"))
        folder = init_from_folder(cfg)
        if folder is not None:
            files = [*hf.safetensors_files(folder), folder / "config.json"]
        else:
            run = init_from_workdir(cfg)
            assert run is not None  # a validated init_from is 'hf:FOLDER' or 'workdir:RUN'
            record["step"] = step
            files = [run / "checkpoints" / str(step) / MANIFEST]
        record["sha256"] = sha256_files(files)
    else:
        shardings = jax.tree.map(lambda t: t.sharding, target)
        params = jax.jit(lambda: init_params(model_cfg, jax.random.key(cfg.seed)), out_shardings=shardings)()
        record["sha256"] = None
    if saved is not None and saved.get("sha256") != record["sha256"]:
        raise UserError(
            f"the base model {record['source']} changed since this LoRA run started "
            f"(sha256 {record['sha256']}, checkpoints recorded {saved.get('sha256')}); "
            "restore the original or start a new --workdir"
        )
    return params, record
