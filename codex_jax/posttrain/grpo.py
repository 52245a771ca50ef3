"""GRPO with execution rewards: sample G completions of each problem's prompt with the KV-cache generator,
judge each in the sandbox (:mod:`codex_jax.sandbox.judged`: the verdict a completion cannot forge), reward
it, and update the policy with :func:`codex_jax.compute.grpo.grpo_loss` several times on the batch.

Rows for the update are ``prompt + completion`` right-padded (causal attention: the padding after a row
changes none of its log-probabilities); the mask is 1 on the completion's tokens (up to and including EOS,
or cut where a stop sequence begins). The reference is the base with the adapters off for a LoRA policy
(``frozen`` given), else the starting params the caller keeps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from codex_jax.codeeval.generation import truncate_at_stop
from codex_jax.codeeval.problems import Problem
from codex_jax.compute.grpo import GRPO, group_advantages, grpo_loss, token_logps
from codex_jax.errors import UserError
from codex_jax.generate import generate, left_pad
from codex_jax.sandbox import Attempt, Sandbox, run_tests_many


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How completions are drawn and rewarded (``train.grpo.*``)."""

    group: int = 4  # G completions per prompt
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    length_penalty: float = 0.0  # reward -= this * completion tokens / max_new_tokens
    workers: int = 2


@dataclasses.dataclass(frozen=True)
class Rollout:
    """One batch of rewarded completions, ready for updates (numpy; N = problems * G)."""

    tokens_NxL: np.ndarray
    mask_NxT: np.ndarray  # 1 on the completion's targets
    rewards_N: np.ndarray
    advantages_N: np.ndarray
    texts: list[str]
    metrics: dict
    passed_N: np.ndarray | None = None  # 1.0 where the completion passed its tests


def _completion_ids(tokenizer, new_ids: list[int], eos_id, stop) -> tuple[list[int], str]:
    """The completion's ids (through EOS, or the fewest whose text covers the stop-cut text) and its text."""
    if eos_id is not None and eos_id in new_ids:
        ids = new_ids[: new_ids.index(eos_id) + 1]
        return ids, truncate_at_stop(tokenizer.decode(ids[:-1]), stop)
    text = truncate_at_stop(tokenizer.decode(new_ids), stop)
    for k in range(len(new_ids) + 1):
        if len(tokenizer.decode(new_ids[:k])) >= len(text):
            return new_ids[:k], text
    return new_ids, text


def _policy_rows(prompts: list[list[int]], completions: list[list[int]], L: int):
    """``(tokens [B, L], mask [B, L-1], completion lengths [B])``: each prompt then its completion,
    right-padded, the mask on the targets that are completion tokens."""
    tokens = np.zeros((len(prompts), L), np.int32)
    mask = np.zeros((len(prompts), L - 1), np.float32)
    lengths = np.zeros(len(prompts), np.float32)
    for i, (ids, completion) in enumerate(zip(prompts, completions, strict=True)):
        tokens[i, : len(ids) + len(completion)] = ids + completion
        mask[i, len(ids) - 1 : len(ids) - 1 + len(completion)] = 1.0
        lengths[i] = len(completion)
    return tokens, mask, lengths


def rollout(
    model,
    variables,
    tokenizer,
    problems: Sequence[Problem],
    sampling: Sampling,
    sandbox: Sandbox | None,
    rng,
    grpo: GRPO,
    prompt_width: int = 0,
    reward_fns: Sequence = (),
    run_tests: Callable = run_tests_many,
) -> Rollout:
    """Samples ``sampling.group`` completions of each problem, judges and rewards them. ``prompt_width``:
    the prompt columns (at least the longest prompt; a run keeps it fixed so that nothing recompiles).
    ``reward_fns``: ``fn(prompt, completion, passed) -> float`` each added to every reward (one that
    raises or returns no finite number adds 0, counted in ``metrics['reward_errors']``). ``run_tests``:
    what judges the completions (``(sandbox, attempts, workers) -> outcomes``; ``sandbox`` may be None
    when it needs none)."""
    start = time.perf_counter()
    G, N = sampling.group, sampling.max_new_tokens
    prompts = [list(tokenizer.encode(p.prompt)) for p in problems]
    rows = [p for p in prompts for _ in range(G)]
    completions, T = _sample(model, variables, tokenizer, rows, sampling, rng, prompt_width)
    sampled = time.perf_counter()
    jobs = [
        Attempt(problems[i // G].prompt, text, problems[i // G].test, problems[i // G].entry_point)
        for i, (_, text) in enumerate(completions)
    ]
    outcomes = run_tests(sandbox, jobs, sampling.workers)
    executed = time.perf_counter()
    tokens, mask, lengths = _policy_rows(rows, [c for c, _ in completions], T + N)
    passed = np.array([o.passed for o in outcomes], np.float32)
    rewards = passed - sampling.length_penalty * lengths / N
    extra, errors = _extra_rewards(
        reward_fns, [problems[i // G].prompt for i in range(len(rows))], completions, passed
    )
    rewards = (rewards + extra).astype(np.float32)
    metrics = {
        "reward": float(rewards.mean()),
        "reward_std": float(rewards.reshape(-1, G).std(axis=1, ddof=1).mean()) if G > 1 else 0.0,
        "pass_rate": float(passed.mean()),
        "completion_length": float(lengths.mean()),
        "timeouts": sum(o.timed_out for o in outcomes),
        "reward_errors": errors,
        "seconds_sampling": sampled - start,
        "seconds_execution": executed - sampled,
    }
    advantages = _advantages(rewards, G, grpo)
    return Rollout(tokens, mask, rewards, advantages, [t for _, t in completions], metrics, passed)


def _sample(model, variables, tokenizer, rows, sampling: Sampling, rng, prompt_width: int):
    """Each row's completion ``(ids, text)`` drawn by the KV-cache generator, and the prompt columns."""
    left, row_lengths = left_pad(rows, width=prompt_width)
    eos_id = tokenizer.eos_id if tokenizer.eos_id is not None and tokenizer.eos_id >= 0 else None
    new_BxN = generate(
        model,
        variables,
        left,
        sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        eos_id=eos_id,
        rng=rng,
        prompt_lengths=row_lengths,
    )
    new_BxN = np.asarray(new_BxN)
    completions = [
        _completion_ids(tokenizer, new_BxN[i].tolist(), eos_id, sampling.stop) for i in range(len(rows))
    ]
    return completions, left.shape[1]


def _advantages(rewards_N: np.ndarray, G: int, grpo: GRPO) -> np.ndarray:
    """Each completion's advantage within its group of G; zeros for groups of one (a greedy evaluation:
    nothing to compare)."""
    if G == 1:
        return np.zeros_like(rewards_N)
    return np.asarray(group_advantages(jnp.asarray(rewards_N.reshape(-1, G)), grpo.scale_rewards)).reshape(-1)


def _extra_rewards(reward_fns: Sequence, prompts: list[str], completions, passed) -> tuple[np.ndarray, int]:
    """The sum of ``reward_fns`` for each completion, and how many calls raised or gave no finite number
    (those add 0)."""
    extra, errors = np.zeros(len(prompts), np.float32), 0
    for fn in reward_fns:
        for i, (prompt, (_, text)) in enumerate(zip(prompts, completions, strict=True)):
            try:
                value = float(fn(prompt, text, bool(passed[i])))
                if not np.isfinite(value):
                    raise ValueError(f"not finite: {value}")
            except Exception:  # noqa: BLE001 - a user's reward never stops the run: it counts as an error
                errors += 1
                continue
            extra[i] += value
    return extra, errors


def make_update(model, tx: optax.GradientTransformation, grpo: GRPO, frozen=None):
    """A jitted ``(params, opt_state, tokens, mask, advantages, old_logps, ref_logps) -> (params, opt_state,
    metrics)``: one optimizer step on the GRPO loss (``frozen``: a LoRA policy's base)."""

    def variables(params):
        return {"params": params} if frozen is None else {"params": frozen, "lora": params}

    def loss_fn(params, tokens, mask, advantages, old, ref):
        return grpo_loss(token_logps(model, variables(params), tokens), old, ref, advantages, mask, grpo)

    @jax.jit
    def update(params, opt_state, tokens, mask, advantages, old, ref):
        """One optimizer step; ``update.logps`` is the jitted forward that gives ``old`` and ``ref``."""
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, tokens, mask, advantages, old, ref
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **metrics}

    update.logps = jax.jit(lambda variables, tokens: token_logps(model, variables, tokens))  # type: ignore[attr-defined]
    return update


def grpo_step(model, params, opt_state, reference, update, batch: Rollout, iterations: int, frozen=None):
    """``iterations`` updates on one rollout (the first at ratio 1); returns params, opt_state and metrics
    (the updates' means, ``seconds_updates``). ``reference``: the reference's params (the base, for LoRA)."""
    start = time.perf_counter()
    tokens, mask = jnp.asarray(batch.tokens_NxL), jnp.asarray(batch.mask_NxT)
    advantages = jnp.asarray(batch.advantages_N)
    policy = {"params": params} if frozen is None else {"params": frozen, "lora": params}
    old, ref = update.logps(policy, tokens), update.logps({"params": reference}, tokens)
    history = []
    for _ in range(iterations):
        params, opt_state, metrics = update(params, opt_state, tokens, mask, advantages, old, ref)
        history.append(jax.device_get(metrics))
    means = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
    means["kl_first"] = float(history[0]["kl"])
    means["seconds_updates"] = time.perf_counter() - start
    return params, opt_state, means


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
