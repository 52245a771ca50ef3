"""What the training loop does after each optimizer step, as hooks run in this order: log, profile,
eval, finite (the non-finite check before a save), best-k, save; and before each step, the stop check.

Each hook's ``on_step(step, state, progress)`` sees the step just taken and the :class:`Progress`
the hooks share (the step timer, the micro-step metrics not yet logged, this step's eval metrics).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Protocol

import jax
import numpy as np

from codex_jax.data.pipeline import mixture_scalars
from codex_jax.metrics import system
from codex_jax.metrics.perf import StepTimer, mfu
from codex_jax.train.profile import Profiler
from codex_jax.train.stop import Stopped, StopSignals
from codex_jax.train.trainer import Trainer


@dataclasses.dataclass
class Progress:
    """What the hooks of one run share from step to step."""

    timer: StepTimer
    window: list = dataclasses.field(default_factory=list)  # micro-step metrics since the last log
    evaluated: dict | None = None  # this step's eval metrics, when it evaluated


class StepHook(Protocol):
    """What the loop calls after each optimizer step."""

    def on_step(self, step: int, state, p: Progress) -> None: ...


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


class LogHook:
    """Train metrics every ``train.log_every`` steps and at the last; the first step's compile time."""

    def __init__(self, t: Trainer, start: int, last: int, model_flops_per_token: float, bar):
        self.t, self.start, self.last, self.bar = t, start, last, bar
        self.model_flops_per_token = model_flops_per_token
        cfg = t.cfg
        self.tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * cfg.train.grad_accum_steps
        packing = t.data.manifest.get("packing", {}).get("train", {})  # packed examples: real tokens only
        self.tokens_per_step *= 1.0 - packing.get("padding_fraction", 0.0)

    def on_step(self, step: int, state, p: Progress) -> None:
        first = step == self.start + 1
        log_now = step % self.t.cfg.train.log_every == 0 or step == self.last
        host = micro_metrics(jax.device_get(p.window)) if log_now or first else None  # blocks
        if first:
            self._log_compile(step, p.timer)
        else:
            p.timer.step_end(self.tokens_per_step)
        if log_now:
            assert host is not None  # fetched above whenever log_now
            self._log_train(step, host, p.timer)
            p.window = []
        self.bar.update(1)

    def flush(self, step: int, p: Progress) -> None:
        """Writes the metrics of the steps not logged yet (a stop between two log steps) at ``step``."""
        if p.window:
            self._log_train(step, micro_metrics(jax.device_get(p.window)), p.timer)
            p.window = []

    def _log_compile(self, step: int, timer: StepTimer) -> None:
        """Logs the first step's wall time (dominated by compilation) once, and keeps it out of tokens/s."""
        timer.step_end(0)
        seconds = timer.summary()["step_time_mean"]
        print(f"compiled the train step in {seconds:.1f}s", file=sys.stderr)
        self.t.writers.write_scalars(step, {"train/compile_seconds": seconds})

    def _log_train(self, step: int, host: list, timer: StepTimer) -> None:
        """Averages the window's metrics (on host), checks finiteness and writes them."""
        nonfinite = sum(not m["finite"] for m in host)
        self.t.check_finite(host, step)
        finite = [m for m in host if m["finite"]] or host
        loss = float(np.mean([m["loss"] for m in finite]))
        scalars = {
            "train/loss": loss,
            "train/grad_norm": float(np.mean([m["grad_norm"] for m in finite])),
            "train/learning_rate": float(self.t.schedule(step - 1)),
            "train/skipped_nonfinite": nonfinite,
        }
        perf = timer.summary()
        if perf:
            tps = perf["tokens_per_second"]
            scalars["train/tokens_per_second"] = tps
            scalars["train/step_time"] = perf["step_time_mean"]
            scalars["train/data_wait_fraction"] = perf["data_wait_fraction"]
            kind = jax.devices()[0].device_kind
            utilization = mfu(self.model_flops_per_token, tps, jax.device_count(), kind)
            if utilization is not None:
                scalars["train/mfu"] = utilization
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
        scalars.update(system.collect())  # host/accelerator memory, CPU, GPU utilisation
        scalars.update(mixture_scalars(self.t.train_iter))  # data.mixture: train/mix/NAME so far
        self.t.writers.write_scalars(step, scalars)


class ProfileHook:
    """A profiler trace of steps ``train.profile_steps`` (started before its first step)."""

    def __init__(self, t: Trainer):
        self.profiler = Profiler(t.cfg.train.profile_steps, t.workdir / "profile")

    def before_step(self, step: int) -> None:
        self.profiler.before(step)

    def on_step(self, step: int, state, p: Progress) -> None:
        self.profiler.after(step, state)


class EvalHook:
    """Held-out metrics every ``train.eval_every`` steps (the last step's are the loop's to take)."""

    def __init__(self, t: Trainer):
        self.t = t

    def on_step(self, step: int, state, p: Progress) -> None:
        p.evaluated = None
        if step % self.t.cfg.train.eval_every == 0 and step != self.t.cfg.train.steps:
            p.evaluated = self.t.eval_and_log(state, step)
            p.timer.start()


class FiniteHook:
    """Before a save: the non-finite check of the micro-steps not logged yet (never save a state
    the check has not seen)."""

    def __init__(self, t: Trainer, last: int):
        self.t, self.last = t, last

    def on_step(self, step: int, state, p: Progress) -> None:
        if saves_at(self.t, step, self.last) and p.window:
            self.t.check_finite(micro_metrics(jax.device_get(p.window)), step)


class BestKHook:
    """With best-k retention every checkpoint step is also an eval step (its metrics rank it)."""

    def __init__(self, t: Trainer, last: int):
        self.t, self.last = t, last

    def on_step(self, step: int, state, p: Progress) -> None:
        if saves_at(self.t, step, self.last) and self.t.checkpointer.retention.best_k and p.evaluated is None:
            p.evaluated = self.t.eval_and_log(state, step)
            p.timer.start()


class SaveHook:
    """A checkpoint every ``checkpoint.every_steps`` steps and at the last (with the step's eval
    metrics, if any)."""

    def __init__(self, t: Trainer, last: int, meta: dict):
        self.t, self.last, self.meta = t, last, meta

    def on_step(self, step: int, state, p: Progress) -> None:
        if saves_at(self.t, step, self.last):
            saved = self.t.runner.state_for_save(state)
            self.t.checkpointer.save(step, saved, self.t.train_iter, self.meta, metrics=p.evaluated)


class StopHook:
    """Before each step: a graceful stop (SIGTERM/SIGINT, :mod:`codex_jax.train.stop`) ends the run
    here. The metrics not logged yet are written, the last step is saved (unless it was already), every
    save is waited for, and :class:`Stopped` is raised."""

    def __init__(self, t: Trainer, signals: StopSignals, start: int, last: int, meta: dict, log: LogHook):
        self.t, self.signals, self.start, self.last, self.meta, self.log = t, signals, start, last, meta, log

    def before_step(self, step: int, state, p: Progress) -> None:
        done = step - 1
        if not self.signals.requested(done):
            return
        self.log.flush(done, p)  # checks finiteness first: an unchecked state is never saved
        ckpt = self.t.checkpointer
        if done > self.start and not saves_at(self.t, done, self.last):
            ckpt.save(done, self.t.runner.state_for_save(state), self.t.train_iter, self.meta, p.evaluated)
        ckpt.wait()
        how = f"run the same command again to resume from step {done}"
        if done == 0:
            saved, how = "nothing to save", "run the same command again to start"
        else:
            saved = f"saved {ckpt.path(done)}"
        raise Stopped(f"stopped by {self.signals.name} after step {done}: {saved}; {how}", done)
