"""The training loop: data -> steps -> metrics, evaluation and checkpoints, resumable at any saved step."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import tqdm

from codex_jax.config.runspec import RUN_CONFIG
from codex_jax.config.schema import flatten
from codex_jax.data.examples import chat_template_text
from codex_jax.errors import UserError
from codex_jax.files import write_json
from codex_jax.generate import sample
from codex_jax.metrics.perf import StepTimer
from codex_jax.metrics.writers import parse_writer_names
from codex_jax.models import lora
from codex_jax.models.sizes import count_params, flops_per_token
from codex_jax.models.transformer import init_params
from codex_jax.setup import adapters
from codex_jax.setup.lock import workdir_lock
from codex_jax.setup.resume import find_resume, truncate_metrics
from codex_jax.train import builtin, hooks
from codex_jax.train.stop import StopSignals
from codex_jax.train.trainer import Trainer, build_trainer, init_or_restore


def train(cfg: ml_collections.ConfigDict, workdir: Path, user_hooks: Sequence[Any] = ()) -> dict[str, float]:
    """Trains to ``train.steps`` (resuming from the workdir's checkpoints); returns final eval
    metrics. Saves still in flight are waited for before returning (a failed one raises).

    ``user_hooks`` run after the ``train.hooks`` entry points (:mod:`codex_jax.train.hooks`); one that
    raises stops the run with a UserError naming it, once every save in flight is committed.
    The run holds the workdir's lock throughout (a second run is refused before anything is written).
    SIGTERM or SIGINT stops it after the current step with that step saved: raises
    :class:`~codex_jax.train.stop.Stopped`.
    """
    user = hooks.user_hooks(cfg.train.hooks, user_hooks)  # before any work: a bad name is one error
    with StopSignals() as signals, workdir_lock(workdir):
        resume = find_resume(cfg, workdir)
        truncate_metrics(workdir / "metrics.ndjson", resume)
        t = build_trainer(cfg, workdir, resume)
        try:
            return _train(t, resume, signals, user)
        except hooks.HookFailed as e:
            raise UserError(f"{e}; {_last_checkpoint(t)}") from e
        finally:
            t.writers.close()
            t.checkpointer.close()  # waits for the last save; a failed one raises UserError


def _last_checkpoint(t: Trainer) -> str:
    """Where the run can resume from, once every save in flight is committed."""
    t.checkpointer.wait()
    step = t.checkpointer.latest_step()
    if step is None:
        return "no checkpoint was saved yet"
    return f"the last checkpoint is step {step} in {t.checkpointer.directory} (rerun to resume from it)"


def _train(t: Trainer, resume: int | None, signals: StopSignals, user: list) -> dict[str, float]:
    cfg = t.cfg
    state = init_or_restore(t, resume)
    start = int(jax.device_get(t.runner.state_for_save(state).step))
    write_json(t.workdir / RUN_CONFIG, cfg.to_dict(), main_process=jax.process_index() == 0)
    num_params = count_params(jax.eval_shape(lambda: init_params(t.model.cfg, jax.random.key(0))))
    meta = _checkpoint_meta(t, state, num_params)
    # the loop adds the other built-ins; several processes learn of a user hook's failure together
    run_hooks = hooks.Hooks([builtin.WritersHook(t.writers)], user, defer_failures=jax.process_count() > 1)
    if start >= cfg.train.steps:
        print(f"train.steps={cfg.train.steps} already reached (checkpoint step {start}); nothing to train.")
        final = builtin.evaluate(t, run_hooks, state, start)
        run_hooks.settle(start)
        return final
    if start == 0:
        t.writers.write_hparams(flatten(cfg))
        builtin.evaluate(t, run_hooks, state, 0)
        run_hooks.settle(0)
    trained_count = meta["lora"]["trainable_params"] if t.base is not None else num_params
    print(
        f"training {trained_count:,} parameters from step {start} to {cfg.train.steps} on "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s)",
        file=sys.stderr,
    )
    model_flops = flops_per_token(t.model.cfg, num_params, cfg.data.seq_len)
    state, step, final = _train_steps(t, run_hooks, state, start, meta, model_flops, signals)
    final = final or builtin.evaluate(t, run_hooks, state, step)
    run_hooks.settle(step)
    if cfg.generate.max_new_tokens > 0:
        _print_sample(t, state, step)
    return final


def _checkpoint_meta(t: Trainer, state, num_params: int) -> dict:
    """The metadata every checkpoint of the run saves (a LoRA run's adapter sizes logged once)."""
    meta = {"config": t.cfg.to_dict(), "num_params": num_params, "tokenizer": t.data.tokenizer.checksum}
    meta["model"] = t.model.cfg.to_dict()  # the resolved architecture (model.init_from: config.json)
    if t.base is not None:  # a LoRA run: the adapters' sizes and the base they apply to
        trained = t.runner.state_for_save(state).params
        meta["lora"] = adapters.meta(t.cfg, t.base, trained, t.model.cfg)
        print(lora.describe(trained, num_params), file=sys.stderr)
    return meta


def _train_steps(t: Trainer, run_hooks: hooks.Hooks, state, start: int, meta: dict, model_flops, signals):
    """The step loop: an optimizer step, its train metrics, then the hooks (writers, bar, profile, eval,
    finite, best-k, save, then the user's); the stop check before the first step and after each.

    Returns (state, last step, that step's eval metrics or None).
    """
    steps = t.cfg.train.steps
    last = min(steps, t.cfg.train.stop_after or steps)
    p = builtin.Progress(state, StepTimer())
    bar = tqdm.tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True, disable=not _shows_bar(t))
    profile = builtin.ProfileHook(t, p)
    run_hooks.builtin += [
        builtin.BarHook(bar),
        profile,
        builtin.EvalHook(t, p, run_hooks),
        builtin.FiniteHook(t, p, last),
        builtin.BestKHook(t, p, run_hooks, last),
        builtin.SaveHook(t, p, run_hooks, last, meta),
    ]
    train_metrics = builtin.TrainMetrics(t, p, start, last, model_flops)
    stop = builtin.StopCheck(t, signals, start, last)
    if stop.requested(start):  # a signal while the run was being set up
        stop.stop(start)
    for step in range(start + 1, last + 1):
        profile.before_step(step)
        p.state = _optimizer_step(t, p.state, p)
        p.stopping = stop.requested(step)
        run_hooks.step_end(step, train_metrics.at(step))
        run_hooks.settle(step)
        if p.stopping:
            stop.stop(step)
    bar.close()
    return p.state, last, p.evaluated


def _shows_bar(t: Trainer) -> bool:
    return t.cfg.logging.progress and jax.process_index() == 0


def _optimizer_step(t: Trainer, state, p: builtin.Progress):
    """``train.grad_accum_steps`` micro-steps (in jitted calls of ``scan_steps`` micro-batches each);
    their metrics join ``p.window``. GRPO: one rollout from ``state`` (timed as the step's data wait),
    then its updates (one jitted call)."""
    if t.post is not None and t.post.rollouts is not None:
        p.timer.data_start()
        batch, rollout_metrics = t.post.rollouts.batch(state)
        p.timer.data_end()
        state, metrics = t.runner.train_step(state, batch)
        p.window.append({**metrics, **rollout_metrics})
        return state
    for _ in range(t.cfg.train.grad_accum_steps // t.runner.scan_steps):
        p.timer.data_start()
        batch = next(t.train_iter)  # read and put while the previous call ran
        p.timer.data_end()
        state, metrics = t.runner.train_step(state, batch)
        p.window.append(metrics)
        p.timer.data_start()
        t.train_iter.fill()  # the next call's batch, while the devices run this one
        p.timer.data_end()
    return state


def _print_sample(t: Trainer, state, step: int) -> None:
    """Completes ``generate.prompt`` with the trained params, drawn as ``generate.temperature``,
    ``top_k``, ``top_p`` and ``seed`` say (0 temperature: greedy), and writes it (stdout, process 0)."""
    g, model = t.cfg.generate, t.model
    n = g.max_new_tokens
    if model.cfg.positions == "learned":  # learned positions: prompt + new tokens must fit
        n = min(n, model.cfg.max_seq_len)
    params = t.runner.model_params(state)  # every process joins the (sharded) computation
    template = chat_template_text(t.cfg.data, t.data.tokenizer)
    text = sample(model, params, t.data.tokenizer, g.prompt, g, max_new_tokens=n, chat_template=template)
    t.writers.write_texts(step, {"sample": text})  # the console writer prints it to stdout
    if jax.process_index() == 0 and "console" not in parse_writer_names(t.cfg.logging.writers):
        print(f"step {step} sample: {text}", flush=True)
