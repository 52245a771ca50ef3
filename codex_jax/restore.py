"""Evaluation and generation from a workdir: the params of one checkpoint (no optimizer state)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections

from codex_jax.checkpoint import PARAMS_ITEMS, Checkpointer, Retention
from codex_jax.compute.parallel import JitRunner, make_mesh
from codex_jax.data.pipeline import eval_batches, prepare_data
from codex_jax.errors import UserError
from codex_jax.evaluate import evaluate_checkpoint
from codex_jax.models.transformer import Transformer, init_params
from codex_jax.setup import adapters
from codex_jax.setup.resume import check_compatible, check_workdir_config
from codex_jax.train.loop import model_config


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
    read, and the params land on this machine's devices whatever device count saved them.
    """
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise UserError(f"no checkpoints in {directory}; train first (--mode=train)")
    check_workdir_config(cfg, workdir)
    retention = Retention.from_config(cfg.checkpoint)
    checkpointer = Checkpointer(
        directory, retention=retention, read_only=True, params_item=adapters.params_item(cfg)
    )
    trained = None
    try:
        step = checkpointer.select(
            cfg.eval.step if step is None else step,
            on_corrupt=cfg.checkpoint.on_corrupt,
            items=PARAMS_ITEMS,
        )
        if step is None:
            raise UserError(f"no complete checkpoint in {directory}")
        meta = checkpointer.restore_meta(step)
        check_compatible(meta, cfg, checkpointer.path(step))
        model = Transformer(model_config(cfg, meta.get("model")))
        if adapters.enabled(cfg):
            trained = checkpointer.restore_params(step, abstract_adapters(cfg, model))
        else:
            params = checkpointer.restore_params(step, abstract_params(cfg, model))
    finally:
        checkpointer.close()
    if trained is not None and not merge:
        params = None
    elif trained is not None:  # a LoRA run: its base (model.init_from) with the adapters merged
        params = adapters.merged_params(cfg, model.cfg, trained, meta["lora"], abstract_params(cfg, model))
    return Restored(model, params, step, meta, trained)


def restore_params(cfg: ml_collections.ConfigDict, workdir: Path):
    """(model, params, step) of checkpoint ``eval.step`` (see :func:`load_checkpoint`)."""
    r = load_checkpoint(cfg, workdir)
    return r.model, r.params, r.step


def abstract_params(cfg: ml_collections.ConfigDict, model: Transformer):
    """The restore target: param shapes with the eval runner's shardings on this machine."""
    shapes = jax.eval_shape(lambda: init_params(model.cfg, jax.random.key(0), cfg.data.seq_len))
    shardings = eval_runner(cfg, model).shardings_for(shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def abstract_adapters(cfg: ml_collections.ConfigDict, model: Transformer):
    """The restore target of a LoRA checkpoint's adapter tree (as :func:`abstract_params`)."""
    shapes = jax.eval_shape(lambda: adapters.init_adapters(cfg, model.cfg))
    shardings = eval_runner(cfg, model).shardings_for(shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def eval_runner(cfg: ml_collections.ConfigDict, model) -> JitRunner:
    """A jit runner over this machine's devices (whatever device count saved the checkpoint)."""
    mesh = (
        make_mesh(-1, 1)
        if cfg.parallel.mode == "pmap"
        else make_mesh(cfg.parallel.mesh.data, cfg.parallel.mesh.fsdp)
    )
    return JitRunner(model, tx=None, mesh=mesh, fsdp_min_size=cfg.parallel.fsdp_min_size)


def evaluate_workdir(cfg: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Held-out metrics of a checkpoint: ``{'step', 'loss', 'perplexity', 'token_accuracy', ...}``
    (``eval.metrics``), also written to ``workdir/eval_<step>.json``."""
    model, params, step = restore_params(cfg, workdir)
    data = prepare_data(cfg, workdir)
    runner = eval_runner(cfg, model)
    batches = eval_batches(
        data.eval_windows,
        batch_size=cfg.data.batch_size // jax.process_count(),
        num_batches=cfg.eval.num_batches,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return evaluate_checkpoint(cfg, workdir, model, params, step, data, runner.put_batch, batches)


def generate_from_workdir(
    cfg: ml_collections.ConfigDict, workdir: Path, prompts: list[str] | None = None
) -> list[str]:
    """Each of ``prompts`` (default: ``generate.prompt``) followed by its completion by a checkpoint's
    params, restored once (``generate.safety_policy`` redacts or withholds secrets in them)."""
    from codex_jax.generate import complete
    from codex_jax.safety import filter_output

    model, params, _ = restore_params(cfg, workdir)
    data = prepare_data(cfg, workdir)
    g = cfg.generate
    out = []
    for prompt in [g.prompt] if prompts is None else prompts:
        text = complete(
            model,
            params,
            data.tokenizer,
            prompt,
            g.max_new_tokens,
            temperature=g.temperature,
            top_k=g.top_k,
            top_p=g.top_p,
            rng=jax.random.key(cfg.seed),
        )
        out.append(prompt + filter_output(text, g.safety_policy))
    return out
