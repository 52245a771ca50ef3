"""A GRPO run: steps of rollout + updates over a problem set, its state saved in the workdir and resumed
bit for bit.

What a step does depends only on the step number, the seed and the saved state: the problems of step s are
entries ``(s-1)*k .. s*k-1`` of an endless sequence of seeded permutations of the problem set (one per
epoch), and its sampling key is ``fold_in(key(seed), s)``. The state (policy params, optimizer state, step)
is saved as safetensors (``grpo_state.safetensors`` + ``grpo_state.json``, each written atomically); the
reference is the starting weights the caller passes on every start. Each step appends one JSON line of
metrics to ``metrics.ndjson`` (split ``grpo``). SIGTERM or SIGINT stops the run after the current step
(its rollout finished and saved) with :class:`~codex_jax.train.stop.Stopped`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import optax

from codex_jax.codeeval.problems import Problem
from codex_jax.compute.grpo import GRPO
from codex_jax.errors import UserError
from codex_jax.metrics.ndjson import NdjsonWriter
from codex_jax.posttrain.grpo import Sampling, grpo_step, make_update, rollout
from codex_jax.posttrain.state import restore_state, save_state, step_indices
from codex_jax.sandbox import Sandbox
from codex_jax.train.stop import Stopped, StopSignals

NAME, METRICS = "grpo", "metrics.ndjson"
STATE, STATE_META = f"{NAME}_state.safetensors", f"{NAME}_state.json"
DEFAULT_SAMPLING, DEFAULT_GRPO = Sampling(), GRPO()


def usable_problems(problems: Sequence[Problem], tokenizer, context: int, max_new_tokens: int):
    """``(problems whose prompt + max_new_tokens fit the model's context, 'task_id: why' for the others)``;
    none usable is a UserError."""
    kept, skipped = [], []
    for problem in problems:
        n = len(tokenizer.encode(problem.prompt))
        if n and n + max_new_tokens <= context:
            kept.append(problem)
        else:
            skipped.append(
                f"{problem.task_id}: prompt of {n} tokens + {max_new_tokens} new exceed the context {context}"
            )
    if not kept:
        raise UserError(f"GRPO: no problem fits the model's context of {context} ({len(skipped)} skipped)")
    return kept, skipped


def train_grpo(
    model,
    params,
    tokenizer,
    problems: Sequence[Problem],
    sandbox: Sandbox,
    tx: optax.GradientTransformation,
    workdir: Path,
    *,
    steps: int,
    prompts_per_step: int,
    iterations: int = 1,
    sampling: Sampling = DEFAULT_SAMPLING,
    grpo: GRPO = DEFAULT_GRPO,
    seed: int = 0,
    frozen=None,
    stop_after: int = 0,
) -> list[dict]:
    """Trains ``params`` (a LoRA run: the adapters, ``frozen`` the base and the reference) to ``steps``,
    resuming from ``workdir``; returns the metrics of the steps run now (``stop_after``: stop there)."""
    workdir.mkdir(parents=True, exist_ok=True)
    problems, skipped = usable_problems(problems, tokenizer, model.cfg.max_seq_len, sampling.max_new_tokens)
    if skipped:
        print(
            f"grpo: {len(skipped)} of {len(skipped) + len(problems)} problems skipped: {skipped[0]}",
            file=sys.stderr,
        )
    reference = params if frozen is None else frozen
    start, policy, opt_state = restore_state(workdir, NAME, params, tx.init(params))
    update = make_update(model, tx, grpo, frozen)
    last = min(steps, stop_after or steps)
    width = max(len(tokenizer.encode(p.prompt)) for p in problems)  # one shape for every step: one compile
    history = []
    writer = NdjsonWriter(workdir / METRICS)
    with StopSignals() as signals:
        for step in range(start + 1, last + 1):
            chosen = [problems[i] for i in step_indices(len(problems), prompts_per_step, seed, step)]
            variables = {"params": policy} if frozen is None else {"params": frozen, "lora": policy}
            rng = jax.random.fold_in(jax.random.key(seed), step)
            batch = rollout(model, variables, tokenizer, chosen, sampling, sandbox, rng, grpo, width)
            policy, opt_state, updated = grpo_step(
                model, policy, opt_state, reference, update, batch, iterations, frozen
            )
            save_state(workdir, NAME, step, policy, opt_state)
            metrics = {**batch.metrics, **updated}
            writer.write_scalars(step, {f"grpo/{k}": v for k, v in metrics.items()})
            history.append({"step": step, **metrics})
            if signals.requested(step):  # SIGTERM/SIGINT during the step: it is saved, stop here
                writer.close()
                raise Stopped(
                    f"stopped by {signals.name} after step {step}, saved in {workdir}: rerun to resume", step
                )
    writer.close()
    return history
