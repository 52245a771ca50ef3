"""The training loop: data -> steps -> metrics, evaluation and checkpoints, resumable at any saved step."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from codex_jax import checkpoint as ckpt_lib
from codex_jax.compute.optim import learning_rate_schedule, make_optimizer, scan_steps
from codex_jax.compute.parallel import make_runner
from codex_jax.compute.state import TrainState, create_train_state
from codex_jax.config.schema import flatten, init_from_folder, init_from_workdir
from codex_jax.data.pipeline import eval_batches, make_train_iterator, prepare_data
from codex_jax.errors import UserError
from codex_jax.evaluate import evaluate
from codex_jax.files import write_json
from codex_jax.metrics import system
from codex_jax.metrics.perf import StepTimer, mfu
from codex_jax.metrics.writers import create_writers
from codex_jax.models import lora
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, count_params, flops_per_token, init_params
from codex_jax.setup import adapters, init_from
from codex_jax.setup.resume import find_resume, truncate_metrics
from codex_jax.train.profile import Profiler


def model_config(cfg: ml_collections.ConfigDict, saved: dict | None = None) -> ModelConfig:
    """The ModelConfig a run config describes (positions sized to ``data.seq_len``).

    With ``model.init_from='hf:FOLDER'`` it is FOLDER/config.json's (or ``saved``, the resolved
    dict a checkpoint's meta keeps under ``'model'``) with the run-time keys of ``cfg.model``;
    with ``'workdir:RUN'`` that run's. The ``lora.alpha`` / ``lora.dropout`` keys always apply.
    """
    folder, run = init_from_folder(cfg), init_from_workdir(cfg)
    if folder is not None:
        resolved = init_from.hf_model_config(cfg, folder, saved)
    elif run is not None:
        resolved = init_from.workdir_model_config(cfg, run, saved)
    else:
        resolved = ModelConfig.from_dict({**cfg.model.to_dict(), "max_seq_len": cfg.data.seq_len})
    return resolved.replace(lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout)


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
    base: dict | None = None  # a LoRA run's frozen base: its source and checksum (meta['lora'])


def build_trainer(cfg: ml_collections.ConfigDict, workdir: Path, resume: int | None = None) -> Trainer:
    """Prepares data, model, optimizer, runner, checkpointer and writers for ``cfg`` (``resume``: the
    checkpoint step the run continues from, if any)."""
    workdir.mkdir(parents=True, exist_ok=True)
    model = Transformer(model_config(cfg))
    folder, run = init_from_folder(cfg), init_from_workdir(cfg)
    if folder is not None:
        init_from.check_init_from(cfg, folder, model.cfg)
    if run is not None:
        init_from.check_workdir(cfg, run, model.cfg)
    if adapters.enabled(cfg) and not cfg.lora.init_from:  # lora.targets, before any data work
        lora.target_paths(adapters.base_shapes(model.cfg), cfg.lora.targets)
    data = prepare_data(cfg, workdir)
    init_from.check_vocab(data.tokenizer, model.cfg, data.manifest["tokenizer"]["path"])
    tx = make_optimizer(cfg.train)
    runner = make_runner(
        cfg.parallel, model, tx, skip_nonfinite=cfg.train.on_nan == "skip", scan_steps=scan_steps(cfg.train)
    )
    per_process_batch = cfg.data.batch_size // jax.process_count()
    train_iter = make_train_iterator(
        data.train_windows,
        batch_size=per_process_batch,
        seed=cfg.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_workers=cfg.data.num_workers,
        prefetch=cfg.data.prefetch,
    )
    eval_data = eval_batches(
        data.eval_windows,
        batch_size=per_process_batch,
        num_batches=cfg.eval.num_batches,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    checkpointer = ckpt_lib.Checkpointer(
        workdir / "checkpoints",
        retention=ckpt_lib.Retention.from_config(cfg.checkpoint),
        async_save=cfg.checkpoint.async_save,
        params_item=adapters.params_item(cfg),
    )
    writers = create_writers(
        cfg.logging.writers,
        workdir,
        is_main_process=jax.process_index() == 0,
        options=cfg.logging,
        resume_step=resume,
    )
    return Trainer(
        cfg,
        workdir,
        model,
        runner,
        checkpointer,
        data,
        train_iter,
        eval_data,
        writers,
        learning_rate_schedule(cfg.train),
    )


def init_or_restore(t: Trainer, step: int | None):
    """A fresh train state (``step`` None), or checkpoint ``step``'s (iterator restored in place).

    ``step`` comes from :func:`~codex_jax.setup.resume.find_resume`; step folders newer than it (corrupt
    ones skipped under ``checkpoint.on_corrupt='previous'``) are moved aside, so that the run can save
    those again.
    A LoRA run (``lora.rank > 0``) trains an adapter tree; its frozen base is loaded into the
    runner on every start, checked against the checksum the checkpoint recorded.
    """
    cfg = t.cfg
    tx = make_optimizer(cfg.train)
    lora_run = adapters.enabled(cfg)

    def make_state() -> TrainState:
        if lora_run:
            return create_train_state(adapters.init_adapters(cfg, t.model.cfg), tx, cfg.seed)
        params = init_params(t.model.cfg, jax.random.key(cfg.seed), cfg.data.seq_len)
        return create_train_state(params, tx, cfg.seed)

    t.checkpointer.discard_after(step)
    if lora_run:
        saved = None if step is None else t.checkpointer.restore_meta(step)["lora"]["base"]
        t.base = adapters.place_base(cfg, t.model.cfg, t.runner, saved)
    if step is None:
        state = t.runner.init_state(make_state)
        if cfg.model.init_from and not lora_run:  # start from those weights, placed like the init
            state = state.replace(params=init_from.load_params(cfg, state.params)[0])
            print(f"initialised from the weights of {cfg.model.init_from}", file=sys.stderr)
        return state
    abstract = t.runner.abstract_state(jax.eval_shape(make_state))
    state = t.checkpointer.restore(step, abstract, t.train_iter)
    print(f"resumed from {t.checkpointer.directory / str(step)}", file=sys.stderr)
    return t.runner.put_state(state)


def train(cfg: ml_collections.ConfigDict, workdir: Path) -> dict[str, float]:
    """Trains to ``train.steps`` (resuming from the workdir's checkpoints); returns final eval
    metrics. Saves still in flight are waited for before returning (a failed one raises)."""
    resume = find_resume(cfg, workdir)
    truncate_metrics(workdir / "metrics.ndjson", resume)
    t = build_trainer(cfg, workdir, resume)
    try:
        return _train(t, resume)
    finally:
        t.writers.close()
        t.checkpointer.close()  # waits for the last save; a failed one raises UserError


def _train(t: Trainer, resume: int | None) -> dict[str, float]:
    cfg, workdir = t.cfg, t.workdir
    state = init_or_restore(t, resume)
    start = int(jax.device_get(t.runner.state_for_save(state).step))
    write_json(workdir / "config.json", cfg.to_dict(), main_process=jax.process_index() == 0)
    num_params = count_params(jax.eval_shape(lambda: init_params(t.model.cfg, jax.random.key(0))))
    meta = {
        "config": cfg.to_dict(),
        "num_params": num_params,
        "tokenizer": t.data.tokenizer.checksum,
    }
    meta["model"] = t.model.cfg.to_dict()  # the resolved architecture (model.init_from: config.json)
    if t.base is not None:  # a LoRA run: the adapters' sizes and the base they apply to
        trained = t.runner.state_for_save(state).params
        meta["lora"] = adapters.meta(cfg, t.base, trained, t.model.cfg)
        print(lora.describe(trained, num_params), file=sys.stderr)
    if start >= cfg.train.steps:
        print(f"train.steps={cfg.train.steps} already reached (checkpoint step {start}); nothing to train.")
        return _eval_and_log(t, state, start)
    if start == 0:
        t.writers.write_hparams(flatten(cfg))
        _eval_and_log(t, state, 0)
    trained_count = meta["lora"]["trainable_params"] if t.base is not None else num_params
    print(
        f"training {trained_count:,} parameters from step {start} to {cfg.train.steps} on "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)",
        file=sys.stderr,
    )
    state, step, final = _train_steps(
        t, state, start, meta, flops_per_token(t.model.cfg, num_params, cfg.data.seq_len)
    )
    final = final or _eval_and_log(t, state, step)
    if cfg.generate.max_new_tokens > 0:
        _print_sample(t, state, step)
    return final


def _train_steps(t: Trainer, state, start: int, meta: dict, model_flops_per_token: float):
    """The step loop: micro-steps, logging, periodic eval and checkpoints.

    Returns (state, last step, that step's eval metrics or None). With best-k retention every
    checkpoint step is also an eval step (its metrics rank the checkpoint).
    """
    cfg = t.cfg
    steps, accum = cfg.train.steps, cfg.train.grad_accum_steps
    per_call = scan_steps(cfg.train)  # micro-batches per jitted call (K under accum_impl='scan')
    last = min(steps, cfg.train.stop_after or steps)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * accum
    timer, window, evaluated = StepTimer(), [], None
    profile = Profiler(cfg.train.profile_steps, t.workdir / "profile")
    bar = tqdm.tqdm(
        total=steps,
        initial=start,
        unit="step",
        dynamic_ncols=True,
        disable=not cfg.logging.progress or jax.process_index() != 0,
    )
    for step in range(start + 1, last + 1):
        profile.before(step)
        for _ in range(accum // per_call):
            timer.data_start()
            local = [next(t.train_iter) for _ in range(per_call)]
            batch = t.runner.put_batch(local[0] if per_call == 1 else np.stack(local))
            timer.data_end()
            state, metrics = t.runner.train_step(state, batch)
            window.append(metrics)
        log_now = step % cfg.train.log_every == 0 or step == last
        host = micro_metrics(jax.device_get(window)) if log_now or step == start + 1 else None  # blocks
        if step == start + 1:
            _log_compile(t, step, timer)
        else:
            timer.step_end(tokens_per_step)
        if log_now:
            assert host is not None  # fetched above whenever log_now
            _log_train(t, step, host, timer, model_flops_per_token, bar)
            window = []
        profile.after(step, state)
        bar.update(1)
        evaluated = None
        if step % cfg.train.eval_every == 0 and step != steps:
            evaluated = _eval_and_log(t, state, step)
            timer.start()
        if step % cfg.checkpoint.every_steps == 0 or step == last:
            if window:  # never save a state the non-finite check has not seen
                _check_finite(t, micro_metrics(jax.device_get(window)), step)
            if t.checkpointer.retention.best_k and evaluated is None:
                evaluated = _eval_and_log(t, state, step)
                timer.start()
            saved = t.runner.state_for_save(state)
            t.checkpointer.save(step, saved, t.train_iter, meta, metrics=evaluated)
    bar.close()
    return state, last, evaluated


def micro_metrics(host: list[dict]) -> list[dict]:
    """One metrics dict per micro-step (a scan step returns its K micro-steps' metrics stacked)."""
    out = []
    for m in host:
        k = np.size(m["loss"])
        out += [m] if np.ndim(m["loss"]) == 0 else [{name: v[i] for name, v in m.items()} for i in range(k)]
    return out


def _log_compile(t: Trainer, step: int, timer: StepTimer) -> None:
    """Logs the first step's wall time (dominated by compilation) once, and keeps it out of tokens/s."""
    timer.step_end(0)
    seconds = timer.summary()["step_time_mean"]
    print(f"compiled the train step in {seconds:.1f}s", file=sys.stderr)
    t.writers.write_scalars(step, {"train/compile_seconds": seconds})


def _log_train(t: Trainer, step: int, host: list, timer: StepTimer, model_flops_per_token: float, bar):
    """Averages the window's metrics (on host), checks finiteness and writes them."""
    nonfinite = sum(not m["finite"] for m in host)
    _check_finite(t, host, step)
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
        scalars.update(
            {
                "train/tokens_per_second": tps,
                "train/step_time": perf["step_time_mean"],
                "train/data_wait_fraction": perf["data_wait_fraction"],
            }
        )
        utilization = mfu(model_flops_per_token, tps, jax.device_count(), jax.devices()[0].device_kind)
        if utilization is not None:
            scalars["train/mfu"] = utilization
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
    scalars.update(system.collect())  # host/accelerator memory, CPU, GPU utilisation
    t.writers.write_scalars(step, scalars)


def _check_finite(t: Trainer, host: list, step: int) -> None:
    """Under ``train.on_nan='raise'``, stops at the first non-finite micro-step of ``host`` (the
    metrics of whole optimizer steps ending at ``step``), naming it and the last good checkpoint."""
    bad = [i for i, m in enumerate(host) if not m["finite"]]
    if not bad or t.cfg.train.on_nan != "raise":
        return
    first = step - (len(host) - 1 - bad[0]) // t.cfg.train.grad_accum_steps
    t.checkpointer.wait()
    last = t.checkpointer.latest_step()
    good = "no checkpoint was saved yet"
    if last is not None:
        good = f"the last good checkpoint is step {last} in {t.checkpointer.directory}"
    raise UserError(f"non-finite loss at step {first} (train.on_nan='raise'); {good}")


def _eval_and_log(t: Trainer, state, step: int) -> dict[str, float]:
    metrics = evaluate(t.runner, t.runner.params(state), t.eval_data)
    t.writers.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
    return {"step": step, **metrics}


def _print_sample(t: Trainer, state, step: int) -> None:
    """Completes ``generate.prompt`` with the trained params and writes it (stdout, process 0)."""
    from codex_jax.generate import complete
    from codex_jax.safety import filter_output

    g, model = t.cfg.generate, t.model
    n = g.max_new_tokens
    if model.cfg.family == "gpt2":  # learned positions: prompt + new tokens must fit
        n = min(n, model.cfg.max_seq_len)
    params = t.runner.model_params(state)  # every process joins the (sharded) computation
    text = g.prompt + complete(
        model,
        params,
        t.data.tokenizer,
        g.prompt,
        n,
        temperature=g.temperature,
        top_k=g.top_k,
        top_p=g.top_p,
        rng=jax.random.key(t.cfg.seed),
    )
    text = g.prompt + filter_output(text[len(g.prompt) :], g.safety_policy)  # codex_jax.safety
    t.writers.write_texts(step, {"sample": text})  # the console writer prints it to stdout
    console = "console" in [w.strip() for w in t.cfg.logging.writers.split(",")]
    if jax.process_index() == 0 and not console:
        print(f"step {step} sample: {text}", flush=True)
