"""Loading weights: the params of a checkpoint step, the weights ``model.init_from`` names, and a
LoRA run's frozen base (with its adapters merged for eval, generate and export).

They recurse into each other (a ``'workdir:RUN'`` base is a checkpoint of RUN, itself maybe a
LoRA run with a base of its own), so they live in one module.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from codex_jax.checkpoint import MANIFEST, PARAMS_ITEMS, Retention
from codex_jax.compute.optim import ema_params, make_optimizer
from codex_jax.config.runspec import RunSpec
from codex_jax.errors import UserError
from codex_jax.files import sha256_files
from codex_jax.interop import hf_weights as hf
from codex_jax.models import lora, quant
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params
from codex_jax.setup import adapters
from codex_jax.setup.checkpoints import open_checkpoints
from codex_jax.setup.model import model_config
from codex_jax.setup.resume import FOLLOWUP, check_compatible, check_workdir_config
from codex_jax.setup.runners import eval_runner, fresh_state_fn, optimizer_spec


@dataclasses.dataclass
class Restored:
    """The params of one checkpoint step, its model and metadata (config, tokenizer checksum)."""

    model: Transformer
    params: Any
    step: int
    meta: dict
    adapters: Any = None  # a LoRA run's adapter tree; ``params`` is then its base with them merged


def load_checkpoint(
    cfg: ml_collections.ConfigDict, workdir: Path, merge: bool = True, step: str | int | None = None
) -> Restored:
    """Checkpoint ``step`` (default ``eval.step``: 'latest', 'best' or a number) of
    ``workdir/checkpoints``.

    A LoRA run's adapters are merged into its base (loaded from ``model.init_from``), or with
    ``merge=False`` only restored (``params`` is then None).

    Its params and metadata files are checked against the step's sha256 manifest (a corrupt step
    is an error, or skipped under ``checkpoint.on_corrupt='previous'``); no optimizer state is
    read (but for ``eval.use_ema``: the parameters' EMA it holds replaces the params), and the params
    land on this machine's devices whatever device count saved them.
    """
    if not (workdir / "checkpoints").is_dir():
        raise UserError(f"no checkpoints in {workdir / 'checkpoints'}; train first (--mode=train)")
    check_workdir_config(cfg, workdir, advice=FOLLOWUP)
    lora_run = adapters.enabled(cfg)
    checkpointer = open_checkpoints(workdir, lora=lora_run, retention=Retention.from_config(cfg.checkpoint))
    try:
        which = cfg.eval.step if step is None else step
        step = checkpointer.select(which, on_corrupt=cfg.checkpoint.on_corrupt, items=PARAMS_ITEMS)
        if step is None:
            raise UserError(f"no complete checkpoint in {workdir / 'checkpoints'}")
        meta = checkpointer.restore_meta(step)
        check_compatible(meta, cfg, checkpointer.path(step), notes=False, advice=FOLLOWUP)
        model = Transformer(model_config(cfg, meta.get("model")))
        target = abstract_adapters(cfg, model) if lora_run else abstract_params(cfg, model)
        trained = checkpointer.restore_params(step, target)
        if cfg.eval.use_ema:
            trained = _ema_of(cfg, model, checkpointer, step, trained)
    finally:
        checkpointer.close()
    if not lora_run:
        return Restored(model, trained, step, meta)
    params = None
    if merge:  # a LoRA run: its base (model.init_from) with the adapters merged
        params = merged_params(cfg, model.cfg, trained, meta["lora"], abstract_params(cfg, model))
    return Restored(model, params, step, meta, trained)


def _ema_of(cfg: ml_collections.ConfigDict, model: Transformer, checkpointer, step: int, trained):
    """``eval.use_ema``: the EMA of the trained tree that checkpoint ``step``'s optimizer state holds
    (``train.ema_decay > 0``), read from its ``train`` item (checked against the manifest first)."""
    checkpointer.verify(step, ("train",))
    shapes = jax.eval_shape(fresh_state_fn(cfg, model.cfg, make_optimizer(optimizer_spec(cfg))))
    train = {"step": shapes.step, "opt_state": shapes.opt_state, "rng": shapes.rng}
    restored = checkpointer.restore_train(step, _placed(cfg, model, train))
    try:
        return ema_params(restored["opt_state"], trained)
    except ValueError as e:
        raise UserError(f"config key 'eval.use_ema': checkpoint {checkpointer.path(step)}: {e}") from None


def restore_params(cfg: ml_collections.ConfigDict, workdir: Path):
    """(model, params, step) of checkpoint ``eval.step`` (see :func:`load_checkpoint`)."""
    r = load_checkpoint(cfg, workdir)
    return r.model, weight_only(cfg, r.params), r.step


def abstract_params(cfg: ml_collections.ConfigDict, model: Transformer):
    """The restore target: param shapes with the eval runner's shardings on this machine."""
    return _placed(cfg, model, jax.eval_shape(lambda: init_params(model.cfg, jax.random.key(0))))


def abstract_adapters(cfg: ml_collections.ConfigDict, model: Transformer):
    """The restore target of a LoRA checkpoint's adapter tree (as :func:`abstract_params`)."""
    return _placed(cfg, model, jax.eval_shape(lambda: adapters.init_adapters(cfg, model.cfg)))


def _placed(cfg: ml_collections.ConfigDict, model: Transformer, shapes):
    shardings = eval_runner(cfg, model).shardings_for(shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


# ------------------------------------------------------------------------------ model.init_from


def import_params(cfg: ml_collections.ConfigDict, folder: Path, like, form=None):
    """The folder's weights (in ``model.param_dtype``) placed like the arrays of ``like``.

    ``like`` is a freshly initialised params tree as a runner holds it (sharded over a mesh, or
    stacked per device for pmap); every process reads the files and keeps its shards. ``form``
    (``(key, array) -> leaf``, :func:`base_form`) is applied to each weight as it is read, so a
    quantized base never exists in full precision (``like`` is then the formed tree's target).
    """
    _, imported = hf.import_checkpoint(folder, dtype=jnp.dtype(cfg.model.param_dtype), form=form)

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


def load_params(cfg: ml_collections.ConfigDict, like, step: int | None = None):
    """``(params, step)``: the weights of ``model.init_from`` placed as ``like`` (arrays or
    ShapeDtypeStructs with shardings; pmap's stacked ones too); ``step`` pins (and returns) the
    checkpoint step of a workdir, None for a Hugging Face folder."""
    spec = RunSpec.from_config(cfg)
    if spec.hf_folder is not None:
        return import_params(cfg, spec.hf_folder, like), None
    assert spec.base_run is not None  # a validated init_from is 'hf:FOLDER' or 'workdir:RUN'
    restored = load_checkpoint(spec.base_config(), spec.base_run, step="latest" if step is None else step)

    def place(x, t):
        x = x.astype(t.dtype)
        return jax.device_put(jnp.broadcast_to(x, t.shape) if x.shape != t.shape else x, t.sharding)

    try:
        return jax.tree.map(place, restored.params, like), restored.step
    except ValueError as e:  # another tree structure or shape
        raise UserError(f"model.init_from: {spec.base_run}'s params do not fit this model ({e})") from None


def weight_only(cfg: ml_collections.ConfigDict, params):
    """``params`` for eval, generate and eval-code: with ``eval.quantize='int8'`` every 2-D kernel int8
    with one scale per output channel (dequantized in the matmul), other weights as they were."""
    if not cfg.eval.get("quantize"):
        return params
    print(f"eval.quantize: {cfg.eval.quantize} weight-only kernels (per output channel)", file=sys.stderr)
    return jax.jit(lambda p: quant.quantize_tree(p, cfg.eval.quantize, 0, other_dtype=None))(params)


# --------------------------------------------------------------------------- a LoRA run's base


def load_base(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, target, saved=None, form=None):
    """``(params, record)``: the weights ``model.init_from`` names, placed as ``target`` (arrays or
    ShapeDtypeStructs with shardings), and ``{'source', 'sha256', 'step'}`` for the checkpoint meta.

    ``saved`` (the record of a resumed run) pins a workdir base to the step the run started from;
    a base whose checksum changed since is refused. No ``init_from``: the random init of ``seed``.
    ``form`` (``(function, target)``: a :func:`base_form` and the target of its output) is applied to
    the weights one leaf at a time: to a Hugging Face folder's as each is read, to a workdir's or a
    random init's once they are all made in full precision.
    """
    spec = RunSpec.from_config(cfg)
    record: dict = {"source": spec.init_from or f"random init (seed {cfg.seed})"}
    if spec.hf_folder is not None:
        if form is None:
            params = import_params(cfg, spec.hf_folder, target)
        else:  # formed tensor by tensor as it is read: the full-precision base never exists whole
            params, form = import_params(cfg, spec.hf_folder, form[1], form[0]), None
        record["sha256"] = sha256_files(
            [*hf.safetensors_files(spec.hf_folder), spec.hf_folder / "config.json"]
        )
    elif spec.base_run is not None:
        params, record["step"] = load_params(cfg, target, (saved or {}).get("step"))
        record["sha256"] = sha256_files([spec.base_run / "checkpoints" / str(record["step"]) / MANIFEST])
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
    if form is not None:  # leaf by leaf: one jitted call over the whole tree had XLA quantize every
        fn, out = form  # kernel at once (26.9 GB of temporaries for a 1.1B base)
        params = jax.device_put(quant.map_leaves(fn, params), jax.tree.map(lambda t: t.sharding, out))
    return params, record


def base_form(cfg: ml_collections.ConfigDict):
    """The per-leaf function ``(key, array) -> leaf`` (:func:`quant.map_leaves`) that turns a
    full-precision base into ``lora.base_dtype``'s (None: keep it): a cast, or :func:`quant.leaf_form`
    (other leaves in bfloat16; the embedding tables too with ``lora.quantize_embeddings``) for
    ``'int8'``/``'nf4'``."""
    dtype = cfg.lora.base_dtype
    if dtype in quant.FORMATS:
        tables = bool(cfg.lora.get("quantize_embeddings", False))
        return quant.leaf_form(dtype, cfg.lora.quant_block_size, tables=tables)
    if dtype:
        return lambda key, x: x.astype(dtype)
    return None


def held_base_shapes(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig):
    """The shapes of a LoRA run's frozen base as :func:`place_base` holds it: cast or quantized
    (``lora.base_dtype``); UserError for a block size that does not fit, before anything is loaded."""
    shapes = adapters.base_shapes(model_cfg)
    fn = base_form(cfg)
    return shapes if fn is None else jax.eval_shape(lambda s: quant.map_leaves(fn, s), shapes)


def _release_freed_memory() -> None:
    """Hands the host memory of the full-precision base (freed once quantized or cast) back to the OS:
    glibc keeps freed small blocks in its heap (measured: 2.8 GiB of RSS after placing a 1.1B NF4 base);
    elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def place_base(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, runner, saved=None) -> dict:
    """Loads the base (``model.init_from``) in ``lora.base_dtype`` into ``runner``; returns its
    record for the checkpoint meta (``saved``: the record a resumed run's checkpoint holds)."""
    fn = base_form(cfg)
    form = None if fn is None else (fn, runner.frozen_target(held_base_shapes(cfg, model_cfg)))
    target = runner.frozen_target(adapters.base_shapes(model_cfg))
    base, record = load_base(cfg, model_cfg, target, saved, form)
    runner.set_frozen(base)
    _release_freed_memory()
    record["dtype"] = cfg.lora.base_dtype or model_cfg.param_dtype
    if cfg.lora.base_dtype in quant.FORMATS:
        record["quant_block_size"] = cfg.lora.quant_block_size
        record["quantize_embeddings"] = bool(cfg.lora.get("quantize_embeddings", False))
        record["bytes"] = quant.nbytes(base)
    print(f"LoRA: frozen {record['dtype']} base from {record['source']}", file=sys.stderr)
    return record


def merged_params(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, trained, saved: dict, target):
    """The base of a LoRA checkpoint (``saved``: its ``meta['lora']``) placed as ``target``, in
    ``model.param_dtype``, with the adapter tree ``trained`` merged: plain params for eval, generate
    and export."""
    base, _ = load_base(cfg, model_cfg, target, saved.get("base"))
    return jax.jit(lambda b, a: lora.merge(b, a, model_cfg.lora_alpha))(base, trained)
