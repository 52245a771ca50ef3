"""What a training run is made of (:class:`Trainer`), built once, and its first train state."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections

from codex_jax.checkpoint import Checkpointer, Retention
from codex_jax.compute.optim import learning_rate_schedule
from codex_jax.data.feed import DeviceFeed
from codex_jax.data.pipeline import eval_batches, make_train_iterator, prepare_data
from codex_jax.errors import UserError
from codex_jax.evaluate import evaluate
from codex_jax.metrics.writers import create_writers
from codex_jax.models import lora
from codex_jax.models.transformer import Transformer
from codex_jax.setup import adapters
from codex_jax.setup.checkpoints import open_checkpoints
from codex_jax.setup.model import check_model, check_vocab, model_config
from codex_jax.setup.runners import fresh_state_fn, optimizer_spec, train_runner
from codex_jax.setup.weights import load_params, place_base
from codex_jax.train import objective


@dataclasses.dataclass
class Trainer:
    """Everything a run is made of, built once by :func:`build_trainer`."""

    cfg: ml_collections.ConfigDict
    workdir: Path
    model: Transformer
    runner: Any
    tx: Any  # the optimizer the runner steps with
    checkpointer: Checkpointer
    data: Any
    train_iter: DeviceFeed  # device batches, one jitted call ahead
    eval_data: list
    writers: Any
    schedule: Any
    base: dict | None = None  # a LoRA run's frozen base: its source and checksum (meta['lora'])
    post: objective.Posttrain | None = None  # train.objective 'dpo' or 'grpo': its data

    def evaluate(self, state) -> dict[str, float]:
        """Held-out metrics of ``state`` (``train.builtin.evaluate`` sends them to the writers); DPO's
        held-out pairs add ``dpo/*``, GRPO's held-out problems ``grpo/pass@k``."""
        params = self.runner.params(state)
        metrics = evaluate(self.runner, params, self.eval_data)
        if self.post is not None:
            metrics |= objective.eval_pairs(self.runner, params, self.post.eval_pairs)
            if self.post.rollouts is not None:  # GRPO: pass@k on train.grpo.eval_problems
                metrics |= self.post.rollouts.evaluate(params)
        return metrics

    def check_finite(self, host: list, step: int) -> None:
        """Under ``train.on_nan='raise'``, stops at the first non-finite micro-step of ``host`` (the
        metrics of whole optimizer steps ending at ``step``), naming it and the last good checkpoint."""
        bad = [i for i, m in enumerate(host) if not m["finite"]]
        if not bad or self.cfg.train.on_nan != "raise":
            return
        first = step - (len(host) - 1 - bad[0]) // self.cfg.train.grad_accum_steps
        self.checkpointer.wait()
        last = self.checkpointer.latest_step()
        good = "no checkpoint was saved yet"
        if last is not None:
            good = f"the last good checkpoint is step {last} in {self.checkpointer.directory}"
        raise UserError(f"non-finite loss at step {first} (train.on_nan='raise'); {good}")


def build_trainer(cfg: ml_collections.ConfigDict, workdir: Path, resume: int | None = None) -> Trainer:
    """Prepares data, model, optimizer, runner, checkpointer and writers for ``cfg`` (``resume``: the
    checkpoint step the run continues from, if any)."""
    workdir.mkdir(parents=True, exist_ok=True)
    model = Transformer(model_config(cfg))
    check_model(cfg, model.cfg)
    if adapters.enabled(cfg) and not cfg.lora.init_from:  # lora.targets, before any data work
        lora.target_paths(adapters.base_shapes(model.cfg), cfg.lora.targets, cfg.lora.experts)
    data = prepare_data(cfg, workdir)
    check_vocab(data.tokenizer, model.cfg, data.manifest["tokenizer"]["path"])
    runner, tx = train_runner(cfg, model)
    train_iter, eval_data, post = _iterators(cfg, data, runner, model)
    checkpointer = open_checkpoints(
        workdir,
        lora=adapters.enabled(cfg),
        retention=Retention.from_config(cfg.checkpoint),
        read_only=False,
        async_save=cfg.checkpoint.async_save,
    )
    main_process = jax.process_index() == 0
    writers = create_writers(
        cfg.logging.writers, workdir, is_main_process=main_process, options=cfg.logging, resume_step=resume
    )
    schedule = _step_schedule(cfg)
    return Trainer(
        cfg,
        workdir,
        model,
        runner,
        tx,
        checkpointer,
        data,
        train_iter,
        eval_data,
        writers,
        schedule,
        post=post,
    )


def _step_schedule(cfg: ml_collections.ConfigDict):
    """The learning rate at the first update of each optimizer step, by step index (GRPO makes
    ``train.grpo.iterations`` updates a step: its optimizer's schedule counts every update)."""
    updates = learning_rate_schedule(optimizer_spec(cfg))
    iterations = cfg.train.grpo.iterations if cfg.train.objective == "grpo" else 1
    return updates if iterations == 1 else (lambda step: updates(step * iterations))


def _iterators(cfg: ml_collections.ConfigDict, data, runner, model) -> tuple[Any, list, Any]:
    """This process's train batches (on the devices, one jitted call ahead; GRPO: its rollouts), its
    held-out batches, and a post-training objective's data (:mod:`codex_jax.train.objective`)."""
    per_process_batch = cfg.data.batch_size // jax.process_count()

    def lm_feed() -> DeviceFeed:
        train_iter = make_train_iterator(
            data.train_windows,
            batch_size=per_process_batch,
            seed=cfg.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            num_workers=cfg.data.num_workers,
            prefetch=cfg.data.prefetch,
            accum_steps=cfg.train.grad_accum_steps,
        )
        return DeviceFeed(train_iter, runner.put_batch, runner.scan_steps)

    train_feed, post = objective.train_feed(cfg, data, runner, model, lm_feed)
    eval_data = eval_batches(
        data.eval_windows,
        batch_size=per_process_batch,
        num_batches=cfg.eval.num_batches,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return train_feed, eval_data, post


def init_or_restore(t: Trainer, step: int | None):
    """A fresh train state (``step`` None), or checkpoint ``step``'s (iterator restored in place).

    ``step`` comes from :func:`~codex_jax.setup.resume.find_resume`; step folders newer than it (corrupt
    ones skipped under ``checkpoint.on_corrupt='previous'``) are moved aside, so that the run can save
    those again.
    A LoRA run (``lora.rank > 0``) trains an adapter tree; its frozen base is loaded into the
    runner on every start, checked against the checksum the checkpoint recorded.
    """
    cfg = t.cfg
    lora_run = adapters.enabled(cfg)
    make_state = fresh_state_fn(cfg, t.model.cfg, t.tx)

    t.checkpointer.discard_after(step)
    if lora_run:
        saved = None if step is None else t.checkpointer.restore_meta(step)["lora"]["base"]
        t.base = place_base(cfg, t.model.cfg, t.runner, saved)
    if step is None:
        state = t.runner.init_state(make_state)
        if cfg.model.init_from and not lora_run:  # start from those weights, placed like the init
            state = state.replace(params=load_params(cfg, state.params)[0])
            print(f"initialised from the weights of {cfg.model.init_from}", file=sys.stderr)
        objective.start(t, t.post, state, fresh=True)  # a full fine-tune's DPO / GRPO reference
        return state
    abstract = t.runner.abstract_state(jax.eval_shape(make_state))
    state = t.checkpointer.restore(step, abstract, t.train_iter)
    print(f"resumed from {t.checkpointer.directory / str(step)}", file=sys.stderr)
    objective.start(t, t.post, state, fresh=False)
    return t.runner.put_state(state)
