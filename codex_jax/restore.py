"""Evaluation and generation from a workdir: the params of one checkpoint (no optimizer state)."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections

from codex_jax.data.examples import chat_template_text
from codex_jax.data.pipeline import eval_batches, load_run_tokenizer, prepare_data
from codex_jax.evaluate import evaluate_checkpoint
from codex_jax.generate import sample
from codex_jax.setup.lock import held_by_another
from codex_jax.setup.runners import eval_runner
from codex_jax.setup.weights import restore_params


def evaluate_workdir(cfg: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Held-out metrics of a checkpoint: ``{'step', 'loss', 'perplexity', 'token_accuracy', ...}``
    (``eval.metrics``), also written to ``workdir/eval_<step>.json``."""
    model, params, step = restore_params(cfg, workdir)
    data = prepare_data(cfg, workdir, write=_data_writer(workdir))
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
    params, restored once (``generate.safety_policy`` redacts or withholds secrets in them). Only the run's
    tokenizer is loaded: no data is read."""
    model, params, _ = restore_params(cfg, workdir)
    tokenizer, _ = load_run_tokenizer(cfg, workdir, write=False)
    prompts = [cfg.generate.prompt] if prompts is None else prompts
    template = chat_template_text(cfg.data, tokenizer)
    return [sample(model, params, tokenizer, p, cfg.generate, chat_template=template) for p in prompts]


def _data_writer(workdir: Path) -> bool | None:
    """False while a run trains in ``workdir`` (its files are the run's: read, never written), else
    None (process 0 writes what is missing)."""
    return False if held_by_another(workdir) else None
