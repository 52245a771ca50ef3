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

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import optax
from safetensors.numpy import load, save

from codex_jax.codeeval.problems import Problem
from codex_jax.compute.grpo import GRPO
from codex_jax.errors import UserError
from codex_jax.files import write_bytes_atomic, write_text_atomic
from codex_jax.metrics.ndjson import NdjsonWriter
from codex_jax.posttrain.grpo import Sampling, grpo_step, make_update, rollout
from codex_jax.sandbox import Sandbox
from codex_jax.train.stop import Stopped, StopSignals

STATE, STATE_META, METRICS = "grpo_state.safetensors", "grpo_state.json", "metrics.ndjson"
DEFAULT_SAMPLING, DEFAULT_GRPO = Sampling(), GRPO()


def step_problems(count: int, per_step: int, seed: int, step: int) -> list[int]:
    """The problem indices of ``step`` (1-based): a slice of seeded per-epoch permutations."""
    first = (step - 1) * per_step
    out = []
    for position in range(first, first + per_step):
        epoch, index = divmod(position, count)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(count)[index]))
    return out


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


def _save(workdir: Path, step: int, params, opt_state) -> None:
    leaves = jax.tree.leaves((params, opt_state))
    write_bytes_atomic(workdir / STATE, save({f"{i:06d}": np.asarray(x) for i, x in enumerate(leaves)}))
    write_text_atomic(workdir / STATE_META, json.dumps({"step": step, "leaves": len(leaves)}))


def _restore(workdir: Path, params, opt_state):
    """``(step, params, opt_state)`` saved in ``workdir``, or step 0 and the given ones."""
    if not (workdir / STATE_META).is_file():
        return 0, params, opt_state
    meta = json.loads((workdir / STATE_META).read_text())
    arrays = load((workdir / STATE).read_bytes())
    treedef = jax.tree.structure((params, opt_state))
    leaves = [arrays[f"{i:06d}"] for i in range(meta["leaves"])]
    restored = jax.tree.unflatten(treedef, [jax.numpy.asarray(x) for x in leaves])
    return int(meta["step"]), *restored


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
    start, policy, opt_state = _restore(workdir, params, tx.init(params))
    update = make_update(model, tx, grpo, frozen)
    last = min(steps, stop_after or steps)
    width = max(len(tokenizer.encode(p.prompt)) for p in problems)  # one shape for every step: one compile
    history = []
    writer = NdjsonWriter(workdir / METRICS)
    with StopSignals() as signals:
        for step in range(start + 1, last + 1):
            chosen = [problems[i] for i in step_problems(len(problems), prompts_per_step, seed, step)]
            variables = {"params": policy} if frozen is None else {"params": frozen, "lora": policy}
            rng = jax.random.fold_in(jax.random.key(seed), step)
            batch = rollout(model, variables, tokenizer, chosen, sampling, sandbox, rng, grpo, width)
            policy, opt_state, updated = grpo_step(
                model, policy, opt_state, reference, update, batch, iterations, frozen
            )
            _save(workdir, step, policy, opt_state)
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
