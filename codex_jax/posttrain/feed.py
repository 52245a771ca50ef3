"""The training loop's GRPO batches: each step samples its prompts' completions from the current policy.

What step s does depends only on the seed, s and the train state: its prompts are entries
``(s-1)*k .. s*k-1`` of an endless sequence of seeded permutations of the problems
(:func:`~codex_jax.data.preference.step_indices`), its sampling key is ``fold_in(key(seed), s)``. So the
feed's checkpointed state is the steps taken, and a resumed run is the uninterrupted one bit for bit.

Every process samples and judges the same rows (the same inputs and key), then puts its share of them on
the devices, as the runner splits any batch. The reference is the LoRA base (adapters off) or the
starting weights (``set_reference``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import grain
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from codex_jax.codeeval.passk import pass_at_k
from codex_jax.codeeval.problems import HUMAN_EVAL, read_problems
from codex_jax.codeeval.settings import settings_from_config
from codex_jax.compute.grpo import GRPO, token_logps
from codex_jax.data.preference import step_indices
from codex_jax.errors import UserError
from codex_jax.files import as_path
from codex_jax.posttrain.grpo import Sampling, rollout, usable_problems
from codex_jax.posttrain.rewards import reward_functions
from codex_jax.sandbox import Outcome, make_sandbox, run_tests_many
from codex_jax.setup.runners import objective_settings


def _stop(text: str) -> tuple[str, ...]:
    try:
        stop = json.loads(text)
    except ValueError:
        stop = None
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise UserError(
            f"config key 'train.grpo.stop': must be a JSON list of non-empty strings (got {text!r})"
        )
    return tuple(stop)


def _problems(key: str, source: str, tokenizer, context: int, max_new_tokens: int):
    """The problems of ``source`` (config key ``key``) that fit the model's context."""
    if source != HUMAN_EVAL and not as_path(source).is_file():
        raise UserError(f"config key '{key}': no such file {source}")
    try:
        problem_set = read_problems(source)
    except UserError as e:
        raise UserError(str(e).replace("codeeval.problems", key)) from None
    for why in problem_set.skipped[:3]:
        print(f"grpo: skipped {why}", file=sys.stderr)
    problems, skipped = usable_problems(problem_set.problems, tokenizer, context, max_new_tokens)
    if skipped:
        print(f"grpo: {len(skipped)} problems too long for the model: {skipped[0]}", file=sys.stderr)
    return problems


def judge_once(sandbox, attempts: list, workers: int) -> list[Outcome]:
    """The sandbox's verdicts, judged by process 0 alone and sent to the others, so that every process
    rewards the same outcomes (and processes sharing a machine never share sandbox uids)."""
    if jax.process_count() == 1:
        return run_tests_many(sandbox, attempts, workers)
    flags_Nx2 = np.zeros((len(attempts), 2), np.int32)
    if jax.process_index() == 0:
        flags_Nx2[:] = [(o.passed, o.timed_out) for o in run_tests_many(sandbox, attempts, workers)]
    flags_Nx2 = np.asarray(multihost_utils.broadcast_one_to_all(flags_Nx2))
    results = ("failed", "timed out", "passed", "passed")
    return [Outcome(bool(p), bool(t), results[2 * p + t], None, "") for p, t in flags_Nx2.tolist()]


class Rollouts(grain.DatasetIterator):
    """GRPO's step batches: :meth:`batch` samples, judges and rewards the next step's completions with
    the current params and returns the device batch (:mod:`codex_jax.compute.objectives`) and the
    rollout's metrics. Checkpointable like a data iterator: its state is the steps taken."""

    def __init__(self, cfg: ml_collections.ConfigDict, model, tokenizer, runner):
        super().__init__()
        g = cfg.train.grpo
        self.cfg, self.model, self.tokenizer, self.runner = cfg, model, tokenizer, runner
        grpo = objective_settings(cfg)
        assert isinstance(grpo, GRPO)  # train.objective='grpo'
        self.grpo = grpo
        context = model.cfg.max_seq_len
        self.problems = _problems("train.grpo.problems", g.problems, tokenizer, context, g.max_new_tokens)
        self.eval_problems = []
        if g.eval_problems:
            self.eval_problems = _problems(
                "train.grpo.eval_problems", g.eval_problems, tokenizer, context, g.max_new_tokens
            )
        settings = settings_from_config(cfg)  # the sandbox: codeeval.timeout, memory_mb, workers, python
        self.sampling = Sampling(
            group=g.group,
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_p=g.top_p,
            stop=_stop(g.stop),
            length_penalty=g.length_penalty,
            workers=settings.workers,
        )
        self.reward_fns = reward_functions(g.rewards)
        # process 0 judges every completion (judge_once): the others never start a sandboxed program
        self.sandbox = (
            make_sandbox(settings.limits, settings.python, remember_verdicts=g.remember_verdicts)
            if jax.process_index() == 0
            else None
        )
        self.width = max(len(tokenizer.encode(p.prompt)) for p in self.problems)  # fixed: one compile
        self.logps = jax.jit(lambda variables, tokens: token_logps(model, variables, tokens))
        self.reference = None  # the starting weights of a full fine-tune (None: the LoRA base)
        self.position = 0

    def set_reference(self, params) -> None:
        """The weights the KL penalty compares with (a full fine-tune's starting weights)."""
        self.reference = params

    def _policy(self, params) -> dict:
        frozen = self.runner.frozen
        return {"params": params} if frozen is None else {"params": frozen, "lora": params}

    def batch(self, state) -> tuple[dict, dict]:
        """``(device batch, metrics)`` of the next step, sampled with ``state.params``."""
        self.position += 1
        cfg, g = self.cfg, self.cfg.train.grpo
        chosen = [
            self.problems[i]
            for i in step_indices(len(self.problems), g.prompts_per_step, cfg.seed, self.position)
        ]
        policy = self._policy(state.params)
        rng = jax.random.fold_in(jax.random.key(cfg.seed), self.position)
        r = rollout(
            self.model,
            policy,
            self.tokenizer,
            chosen,
            self.sampling,
            self.sandbox,
            rng,
            self.grpo,
            self.width,
            self.reward_fns,
            judge_once,
        )
        start = time.perf_counter()
        reference = {"params": self.runner.frozen if self.reference is None else self.reference}
        rows = {
            "tokens": r.tokens_NxL,
            "completion_mask": r.mask_NxT,
            "advantages": r.advantages_N.astype(np.float32),
            "old_logps": np.asarray(self.logps(policy, r.tokens_NxL)),
            "ref_logps": np.asarray(self.logps(reference, r.tokens_NxL)),
        }
        n = len(r.tokens_NxL) // jax.process_count()
        share = slice(jax.process_index() * n, (jax.process_index() + 1) * n)
        metrics = {**r.metrics, "seconds_logps": time.perf_counter() - start}
        return self.runner.put_batch({k: v[share] for k, v in rows.items()}), metrics

    def evaluate(self, params) -> dict[str, float]:
        """``grpo/pass@1`` (and ``grpo/pass@n``) of ``params`` on ``train.grpo.eval_problems``: n =
        ``train.grpo.eval_samples`` completions of each, sampled as in training (at
        ``train.grpo.eval_temperature`` when it is not -1) with a fixed key; at temperature 0 the one
        greedy completion of each (pass@1 only)."""
        if not self.eval_problems:
            return {}
        g = self.cfg.train.grpo
        temperature = g.temperature if g.eval_temperature == -1 else g.eval_temperature
        n = 1 if temperature == 0 else g.eval_samples
        sampling = dataclasses.replace(self.sampling, group=n, temperature=temperature, length_penalty=0.0)
        width = max(len(self.tokenizer.encode(p.prompt)) for p in self.eval_problems)
        rng = jax.random.fold_in(jax.random.key(self.cfg.seed), 0)  # steps count from 1: no step draws this
        r = rollout(
            self.model,
            self._policy(params),
            self.tokenizer,
            self.eval_problems,
            sampling,
            self.sandbox,
            rng,
            self.grpo,
            width,
            run_tests=judge_once,
        )
        assert r.passed_N is not None
        passed = {
            p.task_id: r.passed_N[i * n : (i + 1) * n].astype(bool) for i, p in enumerate(self.eval_problems)
        }
        return {f"grpo/{k}": v for k, v in pass_at_k(passed, {1, n}).items()}

    def __next__(self):
        raise TypeError("GRPO batches come from Rollouts.batch(state)")

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])
