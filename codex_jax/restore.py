"""Evaluation and generation from a workdir: restore the params of one checkpoint (no optimizer state)."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections

from codex_jax.checkpoint import Checkpointer
from codex_jax.data.pipeline import eval_batches, prepare_data
from codex_jax.errors import UserError
from codex_jax.evaluate import evaluate
from codex_jax.models.transformer import Transformer, init_params
from codex_jax.train.loop import check_compatible, model_config
from codex_jax.train.parallel import JitRunner, make_mesh


def restore_params(cfg: ml_collections.ConfigDict, workdir: Path):
    """(model, params, step) of ``eval.step`` ('latest' or a number) in ``workdir/checkpoints``."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise UserError(f"no checkpoints in {directory}; train first (--mode=train)")
    checkpointer = Checkpointer(directory, read_only=True)
    steps = checkpointer.all_steps()
    if not steps:
        raise UserError(f"no complete checkpoint in {directory}")
    step = max(steps) if cfg.eval.step == "latest" else int(cfg.eval.step)
    if step not in steps:
        raise UserError(f"config key 'eval.step': no checkpoint {step} in {directory} (have {sorted(steps)})")
    check_compatible(checkpointer.restore_meta(step), cfg, directory / str(step))
    model = Transformer(model_config(cfg))
    runner = eval_runner(cfg, model)
    shapes = jax.eval_shape(lambda: init_params(model.cfg, jax.random.key(0), cfg.data.seq_len))
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, runner.shardings_for(shapes)
    )
    params = checkpointer.restore_params(step, abstract)
    checkpointer.close()
    return model, params, step


def eval_runner(cfg: ml_collections.ConfigDict, model) -> JitRunner:
    """A jit runner over this machine's devices (whatever device count the checkpoint was saved on)."""
    mesh = make_mesh(-1, 1) if cfg.parallel.mode == "pmap" else make_mesh(
        cfg.parallel.mesh.data, cfg.parallel.mesh.fsdp
    )
    return JitRunner(model, tx=None, mesh=mesh, fsdp_min_size=cfg.parallel.fsdp_min_size)


def evaluate_workdir(cfg: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Held-out metrics of a checkpoint: ``{'step', 'loss', 'perplexity', 'token_accuracy'}``."""
    model, params, step = restore_params(cfg, workdir)
    data = prepare_data(cfg, workdir)
    runner = eval_runner(cfg, model)
    batches = eval_batches(
        data.eval_windows, batch_size=cfg.data.batch_size // jax.process_count(),
        num_batches=cfg.eval.num_batches, process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return {"step": step, **evaluate(runner, params, batches)}


def generate_from_workdir(cfg: ml_collections.ConfigDict, workdir: Path) -> list[str]:
    """Completions of ``generate.prompt`` by a checkpoint's params."""
    from codex_jax.generate import complete

    model, params, _ = restore_params(cfg, workdir)
    data = prepare_data(cfg, workdir)
    g = cfg.generate
    text = complete(model, params, data.tokenizer, g.prompt, g.max_new_tokens,
                    temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, rng=jax.random.key(cfg.seed))
    return [g.prompt + text]
