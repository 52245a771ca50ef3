"""The training loop: data -> steps -> metrics, evaluation and checkpoints, resumable at any saved step."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from codex_jax import checkpoint as ckpt_lib
from codex_jax.config import flatten
from codex_jax.data.pipeline import eval_batches, make_train_iterator, prepare_data
from codex_jax.errors import UserError
from codex_jax.evaluate import evaluate
from codex_jax.metrics.writers import create_writers
from codex_jax.metrics.perf import StepTimer, mfu
from codex_jax.models.transformer import (
    ModelConfig,
    Transformer,
    count_params,
    flops_per_token,
    init_params,
)
from codex_jax.train.profile import Profiler
from codex_jax.train.optim import learning_rate_schedule, make_optimizer
from codex_jax.train.parallel import make_runner
from codex_jax.train.state import TrainState, create_train_state


def model_config(cfg: ml_collections.ConfigDict) -> ModelConfig:
    """The ModelConfig a run config describes (positions sized to ``data.seq_len``)."""
    return ModelConfig.from_dict({**cfg.model.to_dict(), "max_seq_len": cfg.data.seq_len})


@dataclasses.dataclass
class Trainer:
    """Everything a run is made of, built once by :func:`build_trainer`."""

    cfg: ml_collections.ConfigDict
    workdir: Path
    model: Transformer
    runner: Any
    checkpointer: ckpt_lib.Checkpointer
    data: Any
    train_iter: Any
    eval_data: list
    writers: Any
    schedule: Any


def build_trainer(cfg: ml_collections.ConfigDict, workdir: Path) -> Trainer:
    """Prepares data, model, optimizer, runner, checkpointer and writers for ``cfg``."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, workdir)
    model = Transformer(model_config(cfg))
    tx = make_optimizer(cfg.train)
    runner = make_runner(cfg.parallel, model, tx, skip_nonfinite=cfg.train.on_nan == "skip")
    per_process_batch = cfg.data.batch_size // jax.process_count()
    train_iter = make_train_iterator(
        data.train_windows, batch_size=per_process_batch, seed=cfg.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_workers=cfg.data.num_workers,
    )
    eval_data = eval_batches(
        data.eval_windows, batch_size=per_process_batch, num_batches=cfg.eval.num_batches,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    checkpointer = ckpt_lib.Checkpointer(
        workdir / "checkpoints", max_to_keep=cfg.checkpoint.max_to_keep,
        async_save=cfg.checkpoint.async_save,
    )
    writers = create_writers(cfg.logging.writers, workdir, is_main_process=jax.process_index() == 0)
    return Trainer(cfg, workdir, model, runner, checkpointer, data, train_iter, eval_data, writers,
                   learning_rate_schedule(cfg.train))


def init_or_restore(t: Trainer):
    """A fresh train state, or the latest checkpoint's (iterator restored in place)."""
    cfg = t.cfg
    tx = make_optimizer(cfg.train)

    def make_state() -> TrainState:
        params = init_params(t.model.cfg, jax.random.key(cfg.seed), cfg.data.seq_len)
        return create_train_state(params, tx, cfg.seed)

    step = t.checkpointer.latest_step()
    if step is None:
        return t.runner.init_state(make_state)
    check_compatible(t.checkpointer.restore_meta(step), cfg, t.checkpointer.directory / str(step))
    abstract = t.runner.abstract_state(jax.eval_shape(make_state))
    state = t.checkpointer.restore(step, abstract, t.train_iter)
    print(f"resumed from {t.checkpointer.directory / str(step)}", file=sys.stderr)
    return t.runner.put_state(state)


def check_compatible(meta: dict, cfg: ml_collections.ConfigDict, path: Path) -> None:
    """Refuses a checkpoint whose model or data shape differs; logs changed training keys."""
    saved = meta.get("config", {})
    now = flatten(cfg)
    for key, old in flatten(saved).items():
        new = now.get(key)
        if new == old:
            continue
        if key.startswith(("model.", "data.seq_len", "data.source", "data.tokenizer", "parallel.")) and not (
            key in ("model.dropout", "model.remat", "model.attention_impl", "parallel.mode")
        ):
            raise UserError(f"checkpoint {path}: saved with {key}={old!r}, config says {new!r}")
        print(f"note: {key} changed on resume: {old!r} -> {new!r}", file=sys.stderr)


def train(cfg: ml_collections.ConfigDict, workdir: Path) -> dict[str, float]:
    """Trains to ``train.steps`` (resuming when the workdir has checkpoints); returns final eval metrics."""
    t = build_trainer(cfg, workdir)
    state = init_or_restore(t)
    start = int(jax.device_get(t.runner.state_for_save(state).step))
    write_json(workdir / "config.json", cfg.to_dict())
    num_params = count_params(jax.eval_shape(lambda: init_params(t.model.cfg, jax.random.key(0))))
    meta = {"config": cfg.to_dict(), "num_params": num_params, "tokenizer": t.data.tokenizer.checksum}
    if start >= cfg.train.steps:
        print(f"train.steps={cfg.train.steps} already reached (checkpoint step {start}); nothing to train.")
        return _eval_and_log(t, state, start)
    if start == 0:
        t.writers.write_hparams(flatten(cfg))
        _eval_and_log(t, state, 0)
    print(f"training {num_params:,} parameters from step {start} to {cfg.train.steps} on "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)", file=sys.stderr)
    state, step = _train_steps(t, state, start, meta, flops_per_token(t.model.cfg, num_params, cfg.data.seq_len))
    final = _eval_and_log(t, state, step)
    t.checkpointer.close()
    t.writers.close()
    return final


def _train_steps(t: Trainer, state, start: int, meta: dict, model_flops_per_token: float):
    """The step loop: micro-steps, logging, periodic eval and checkpoints."""
    cfg = t.cfg
    steps, accum = cfg.train.steps, cfg.train.grad_accum_steps
    last = min(steps, cfg.train.stop_after or steps)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * accum
    timer, window = StepTimer(), []
    profile = Profiler(cfg.train.profile_steps, t.workdir / "profile")
    bar = tqdm.tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True,
                    disable=not cfg.logging.progress or jax.process_index() != 0)
    for step in range(start + 1, last + 1):
        profile.before(step)
        for _ in range(accum):
            timer.data_start()
            batch = t.runner.put_batch(next(t.train_iter))
            timer.data_end()
            state, metrics = t.runner.train_step(state, batch)
            window.append(metrics)
        log_now = step % cfg.train.log_every == 0 or step == last
        host = jax.device_get(window) if log_now or step == start + 1 else None  # blocks on the device
        if step == start + 1:
            _log_compile(t, step, timer)
        else:
            timer.step_end(tokens_per_step)
        if log_now:
            _log_train(t, step, host, timer, model_flops_per_token, bar)
            window = []
        profile.after(step, state)
        bar.update(1)
        if step % cfg.train.eval_every == 0 and step != steps:
            _eval_and_log(t, state, step)
            timer.start()
        if step % cfg.checkpoint.every_steps == 0 or step == last:
            t.checkpointer.save(step, t.runner.state_for_save(state), t.train_iter, meta)
    bar.close()
    return state, last


def _log_compile(t: Trainer, step: int, timer: StepTimer) -> None:
    """Logs the first step's wall time (dominated by compilation) once, and keeps it out of tokens/s."""
    timer.step_end(0)
    seconds = timer.summary()["step_time_mean"]
    print(f"compiled the train step in {seconds:.1f}s", file=sys.stderr)
    t.writers.write_scalars(step, {"train/compile_seconds": seconds})


def _log_train(t: Trainer, step: int, host: list, timer: StepTimer, model_flops_per_token: float, bar):
    """Averages the window's metrics (on host), checks finiteness and writes them."""
    nonfinite = sum(not m["finite"] for m in host)
    if nonfinite and t.cfg.train.on_nan == "raise":
        raise UserError(f"non-finite loss at step {step} (train.on_nan='raise'); last checkpoint: "
                        f"{t.checkpointer.latest_step()} in {t.checkpointer.directory}")
    finite = [m for m in host if m["finite"]] or host
    perf = timer.summary()
    loss = float(np.mean([m["loss"] for m in finite]))
    scalars = {
        "train/loss": loss,
        "train/grad_norm": float(np.mean([m["grad_norm"] for m in finite])),
        "train/learning_rate": float(t.schedule(step - 1)),
        "train/skipped_nonfinite": nonfinite,
    }
    if perf:
        tps = perf["tokens_per_second"]
        scalars.update({
            "train/tokens_per_second": tps,
            "train/step_time": perf["step_time_mean"],
            "train/data_wait_fraction": perf["data_wait_fraction"],
        })
        utilization = mfu(model_flops_per_token, tps, jax.device_count(), jax.devices()[0].device_kind)
        if utilization is not None:
            scalars["train/mfu"] = utilization
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
    t.writers.write_scalars(step, scalars)


def _eval_and_log(t: Trainer, state, step: int) -> dict[str, float]:
    metrics = evaluate(t.runner, t.runner.params(state), t.eval_data)
    t.writers.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
    return {"step": step, **metrics}


def write_json(path: Path, obj: Any) -> None:
    """Writes ``obj`` as indented JSON (process 0 only)."""
    if jax.process_index() == 0:
        path.write_text(json.dumps(obj, indent=2) + "\n")
