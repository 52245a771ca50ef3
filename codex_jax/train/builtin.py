"""The run's own hooks (:mod:`codex_jax.train.hooks`), in the order they run after each optimizer step:
writers, progress bar, profile, eval, finite (the non-finite check before a save), best-k, save; and
what feeds them: the step's train metrics (:class:`TrainMetrics`) and the stop check before and after
the steps (:class:`StopCheck`).

They share one :class:`Progress` (the train state, the step timer, the micro-step metrics not yet
logged, this step's eval metrics); user hooks never see it.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import jax
import numpy as np

from codex_jax.data.pipeline import mixture_scalars
from codex_jax.metrics import system
from codex_jax.metrics.perf import StepTimer, mfu
from codex_jax.train.hooks import Hook, Hooks, Metrics
from codex_jax.train.profile import Profiler
from codex_jax.train.stop import Stopped, StopSignals
from codex_jax.train.trainer import Trainer


@dataclasses.dataclass
class Progress:
    """What the built-in hooks of one run share from step to step."""

    state: Any
    timer: StepTimer
    window: list = dataclasses.field(default_factory=list)  # micro-step metrics since the last log
    evaluated: dict | None = None  # this step's eval metrics, when it evaluated
    stopping: bool = False  # a stop was requested: this step is saved and the run ends after it


def micro_metrics(host: list[dict]) -> list[dict]:
    """One metrics dict per micro-step (a scan step returns its K micro-steps' metrics stacked)."""
    out = []
    for m in host:
        k = np.size(m["loss"])
        out += [m] if np.ndim(m["loss"]) == 0 else [{name: v[i] for name, v in m.items()} for i in range(k)]
    return out


def saves_at(t: Trainer, step: int, last: int) -> bool:
    """Whether ``step`` is a checkpoint step (every ``checkpoint.every_steps`` and the last)."""
    return step % t.cfg.checkpoint.every_steps == 0 or step == last


def evaluate(t: Trainer, hooks: Hooks, state, step: int) -> dict[str, float]:
    """Held-out metrics of ``state`` at ``step``, sent to the hooks as ``eval/*`` (the writers write
    them); returns ``{'step': step, 'loss': ..., ...}``."""
    metrics = t.evaluate(state)
    hooks.eval_end(step, {f"eval/{k}": v for k, v in metrics.items()})
    return {"step": step, **metrics}


class TrainMetrics:
    """The ``train/*`` and ``system/*`` scalars of a step: every ``train.log_every`` steps, at the last
    and before a stop (averaged over the micro-steps since the last log, checked for non-finite
    losses); the first step's wall time (mostly compilation) as ``train/compile_seconds``."""

    def __init__(self, t: Trainer, p: Progress, start: int, last: int, model_flops_per_token: float):
        self.t, self.p, self.start, self.last = t, p, start, last
        self.model_flops_per_token = model_flops_per_token
        cfg = t.cfg
        self.tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * cfg.train.grad_accum_steps
        packing = t.data.manifest.get("packing", {}).get("train", {})  # packed examples: real tokens only
        self.tokens_per_step *= 1.0 - packing.get("padding_fraction", 0.0)

    def at(self, step: int) -> dict[str, float]:
        """The scalars step ``step`` logs (``{}`` on most steps); blocks on the device when it logs."""
        p, scalars = self.p, {}
        first = step == self.start + 1
        log_now = step % self.t.cfg.train.log_every == 0 or step == self.last or p.stopping
        host = micro_metrics(jax.device_get(p.window)) if log_now or first else None  # blocks
        if first:
            p.timer.step_end(0)  # the first step's time stays out of tokens/s
            seconds = p.timer.summary()["step_time_mean"]
            print(f"compiled the train step in {seconds:.1f}s", file=sys.stderr)
            scalars["train/compile_seconds"] = seconds
        else:
            p.timer.step_end(self.tokens_per_step)
        if log_now:
            assert host is not None  # fetched above whenever log_now
            scalars.update(self._train_scalars(step, host))
            p.window = []
        return scalars

    def _train_scalars(self, step: int, host: list) -> dict[str, float]:
        """The window's metrics averaged on host, after the non-finite check."""
        nonfinite = sum(not m["finite"] for m in host)
        self.t.check_finite(host, step)
        finite = [m for m in host if m["finite"]] or host
        scalars = {
            "train/loss": float(np.mean([m["loss"] for m in finite])),
            "train/grad_norm": float(np.mean([m["grad_norm"] for m in finite])),
            "train/learning_rate": float(self.t.schedule(step - 1)),
            "train/skipped_nonfinite": nonfinite,
        }
        # the step's other metrics: train.z_loss's term, a mixture-of-experts model's router terms, a
        # post-training objective's (DPO rewards, GRPO reward, kl, clip_ratio, seconds_sampling, ...)
        for key in (k for k in finite[0] if k not in ("loss", "grad_norm", "finite")):
            scalars[f"train/{key}"] = float(np.mean([m[key] for m in finite]))
        perf = self.p.timer.summary()
        if perf:
            tps = perf["tokens_per_second"]
            scalars["train/tokens_per_second"] = tps
            scalars["train/step_time"] = perf["step_time_mean"]
            scalars["train/data_wait_fraction"] = perf["data_wait_fraction"]
            kind = jax.devices()[0].device_kind
            utilization = mfu(self.model_flops_per_token, tps, jax.device_count(), kind)
            if utilization is not None:
                scalars["train/mfu"] = utilization
        scalars.update(system.collect())  # host/accelerator memory, CPU, GPU utilisation
        feed = self.t.train_iter  # data.mixture: train/mix/NAME of the batches consumed so far
        if hasattr(feed, "source"):
            scalars.update(mixture_scalars(feed.source, feed.get_state()))
        return scalars


class WritersHook(Hook):
    """The metric writers (``logging.writers``): every step's and every evaluation's scalars."""

    name = "writers"

    def __init__(self, writers):
        self.writers = writers

    def on_step_end(self, step: int, metrics: Metrics) -> None:
        if metrics:
            self.writers.write_scalars(step, dict(metrics))

    def on_eval_end(self, step: int, metrics: Metrics) -> None:
        self.writers.write_scalars(step, dict(metrics))


class BarHook(Hook):
    """The progress bar: one tick a step, the loss and tokens/s when logged."""

    name = "progress"

    def __init__(self, bar):
        self.bar = bar

    def on_step_end(self, step: int, metrics: Metrics) -> None:
        if "train/loss" in metrics:
            postfix = {"loss": f"{metrics['train/loss']:.3f}"}
            if "train/tokens_per_second" in metrics:
                postfix["tok_s"] = f"{metrics['train/tokens_per_second']:,.0f}"
            self.bar.set_postfix(**postfix)
        self.bar.update(1)


class ProfileHook(Hook):
    """A profiler trace of steps ``train.profile_steps`` (started before its first step)."""

    name = "profile"

    def __init__(self, t: Trainer, p: Progress):
        self.profiler, self.p = Profiler(t.cfg.train.profile_steps, t.workdir / "profile"), p

    def before_step(self, step: int) -> None:
        """Starts the trace before its first step."""
        self.profiler.before(step)

    def on_step_end(self, step: int, metrics: Metrics) -> None:
        self.profiler.after(step, self.p.state)


class EvalHook(Hook):
    """Held-out metrics every ``train.eval_every`` steps (the last step's are the loop's to take)."""

    name = "eval"

    def __init__(self, t: Trainer, p: Progress, hooks: Hooks):
        self.t, self.p, self.hooks = t, p, hooks

    def on_step_end(self, step: int, metrics: Metrics) -> None:
        self.p.evaluated = None
        if step % self.t.cfg.train.eval_every == 0 and step != self.t.cfg.train.steps:
            self.p.evaluated = evaluate(self.t, self.hooks, self.p.state, step)
            self.p.timer.start()


class FiniteHook(Hook):
    """Before a save: the non-finite check of the micro-steps not logged yet (never save a state
    the check has not seen)."""

    name = "finite"

    def __init__(self, t: Trainer, p: Progress, last: int):
        self.t, self.p, self.last = t, p, last

    def on_step_end(self, step: int, metrics: Metrics) -> None:
        if saves_at(self.t, step, self.last) and self.p.window:
            self.t.check_finite(micro_metrics(jax.device_get(self.p.window)), step)


class BestKHook(Hook):
    """With best-k retention every checkpoint step is also an eval step (its metrics rank it)."""

    name = "best-k"

    def __init__(self, t: Trainer, p: Progress, hooks: Hooks, last: int):
        self.t, self.p, self.hooks, self.last = t, p, hooks, last

    def on_step_end(self, step: int, metrics: Metrics) -> None:
        p = self.p
        if saves_at(self.t, step, self.last) and self.t.checkpointer.retention.best_k and p.evaluated is None:
            p.evaluated = evaluate(self.t, self.hooks, p.state, step)
            p.timer.start()


class SaveHook(Hook):
    """A checkpoint every ``checkpoint.every_steps`` steps, at the last and before a stop (with the
    step's eval metrics, if any)."""

    name = "checkpoint"

    def __init__(self, t: Trainer, p: Progress, hooks: Hooks, last: int, meta: dict):
        self.t, self.p, self.hooks, self.last, self.meta = t, p, hooks, last, meta

    def on_step_end(self, step: int, metrics: Metrics) -> None:
        t, p = self.t, self.p
        if saves_at(t, step, self.last) or p.stopping:
            t.checkpointer.save(step, t.runner.state_for_save(p.state), t.train_iter, self.meta, p.evaluated)
            saved = {f"eval/{k}": v for k, v in (p.evaluated or {}).items() if k != "step"}
            self.hooks.checkpoint_save(step, saved)


class StopCheck:
    """A graceful stop (SIGTERM/SIGINT, :mod:`codex_jax.train.stop`): asked before the first step and
    after each step but the last. A stop after a step logs and saves that step (``Progress.stopping``)
    before :meth:`stop` waits for every save and raises :class:`Stopped`."""

    def __init__(self, t: Trainer, signals: StopSignals, start: int, last: int):
        self.t, self.signals, self.start, self.last = t, signals, start, last

    def requested(self, step: int) -> bool:
        """Whether to stop after ``step`` (every process gets the same answer)."""
        return step < self.last and self.signals.requested(step)

    def stop(self, step: int) -> None:
        """Waits for the saves in flight, then raises :class:`Stopped` saying how to resume."""
        ckpt = self.t.checkpointer
        ckpt.wait()
        how = f"run the same command again to resume from step {step}"
        if step == 0:
            saved, how = "nothing to save", "run the same command again to start"
        else:
            saved = f"saved {ckpt.path(step)}"
        raise Stopped(f"stopped by {self.signals.name} after step {step}: {saved}; {how}", step)
