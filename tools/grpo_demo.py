"""The end-to-end CPU GRPO demo (issue 28): SFT a tiny model on a seeded family of small programming problems,
then GRPO with rewards from running its programs in the sandbox, and see held-out pass@1 rise.

    .venv/bin/python tools/grpo_demo.py --out=runs/grpo-demo [--plot=docs/images/grpo_demo.png]

1. ``codex_jax.codeeval.synthetic.write_family``: train and held-out problems (HumanEval format) and the
   SFT records (four a train problem: its reference solution or its operation's typical bug, the reference
   in 25% of them for half the operations and 75% for the others) in ``OUT/data``.
2. SFT with the ``train`` command (``configs/tiny.py`` shape, a BPE tokenizer of 320 pieces trained on the
   noisy SFT records, ``data.format='prompt_completion'``) in ``OUT/sft``, ``--sft-steps`` steps.
3. Held-out greedy pass@1 of that checkpoint with the ``eval-code`` command.
4. GRPO on the train problems (:func:`grpo_phase`: the only place that calls the GRPO API), the held-out
   greedy pass@1 measured every ``--eval-every`` steps with eval-code's own ``evaluate_model``; the run's
   metrics in ``OUT/grpo/metrics.ndjson``, the curve in ``OUT/curve.json`` and the plot in ``--plot``.

Prints one JSON line: held-out pass@1 after SFT, after GRPO, the gain, and the seconds of each phase.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import optax  # noqa: E402

from codex_jax import api  # noqa: E402
from codex_jax.codeeval.problems import read_problems  # noqa: E402
from codex_jax.codeeval.run import evaluate_model  # noqa: E402
from codex_jax.codeeval.settings import settings_from_config  # noqa: E402
from codex_jax.codeeval.synthetic import write_family  # noqa: E402
from codex_jax.data.pipeline import load_run_tokenizer  # noqa: E402
from codex_jax.sandbox import Limits  # noqa: E402

SFT_KEYS = {  # the SFT run: --config.KEY=VALUE over configs/tiny.py
    "data.format": "prompt_completion",
    "data.packing": "segments",
    "data.train_on": "completion",
    "data.seq_len": 128,
    "data.batch_size": 16,
    "data.eval_fraction": 0.05,
    "data.max_files": 0,
    "model.vocab_size": 320,
    "model.d_model": 128,
    "model.d_ff": 256,
    "model.num_layers": 2,
    "train.learning_rate": 3e-3,
    "train.warmup_steps": 20,
    "train.log_every": 20,
    "logging.progress": False,
}
EVAL_KEYS = {"codeeval.max_new_tokens": 24, "codeeval.workers": 4}  # held-out greedy pass@1
# the problems need only the standard library: their programs start without site (-S), faster
LIMITS = Limits(timeout_s=3.0, site_packages=False)


def run_command(out: Path, *args: str) -> dict:
    """``python -m codex_jax.main ARGS`` (the ``train``/``eval-code`` commands); its last stdout JSON line."""
    cmd = [sys.executable, "-m", "codex_jax.main", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    with (out / "commands.log").open("a") as log:
        log.write(" ".join(cmd) + "\n" + done.stderr[-4000:] + done.stdout + "\n")
    if done.returncode:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def sft(out: Path, data: dict, steps: int, seed: int) -> None:
    """The ``train`` command on the SFT records, to ``steps``."""
    keys = {**SFT_KEYS, "data.source": f"jsonl:{data['sft']}", "train.steps": steps, "seed": seed}
    keys |= {"train.eval_every": steps, "checkpoint.every_steps": steps}
    flags = [f"--config.{k}={v}" for k, v in keys.items()]
    run_command(out, "--config=configs/tiny.py", f"--workdir={out / 'sft'}", *flags)


def eval_code(out: Path, data: dict) -> dict:
    """The ``eval-code`` command: held-out greedy pass@1 of the SFT checkpoint."""
    flags = [f"--config.{k}={v}" for k, v in {**EVAL_KEYS, "codeeval.problems": data["heldout"]}.items()]
    wd = out / "sft"
    return run_command(out, f"--config={wd / 'config.json'}", f"--workdir={wd}", "--mode=eval-code", *flags)


def grpo_phase(model, params, tokenizer, problems, workdir: Path, args, evaluate) -> list[dict]:
    """``args.steps`` GRPO steps on ``problems`` (the :mod:`codex_jax.posttrain.grpo` building blocks, as
    ``posttrain.grpo_run.train_grpo`` runs them, with ``evaluate(step, params)`` every ``args.eval_every``
    steps); returns the per-step metrics."""
    from codex_jax.compute.grpo import GRPO
    from codex_jax.metrics.ndjson import NdjsonWriter
    from codex_jax.posttrain.grpo import Sampling, grpo_step, make_update, rollout
    from codex_jax.posttrain.grpo_run import usable_problems
    from codex_jax.posttrain.state import step_indices
    from codex_jax.sandbox import make_sandbox

    sampling = Sampling(
        group=args.group,
        max_new_tokens=EVAL_KEYS["codeeval.max_new_tokens"],
        temperature=args.temperature,
        stop=("\ndef", "\nclass", "\nif", "\nprint", "\n#"),
        workers=EVAL_KEYS["codeeval.workers"],
    )
    grpo = GRPO(epsilon=0.2, beta=args.beta, aggregation="grpo")
    tx = optax.adam(args.lr)
    sandbox = make_sandbox(LIMITS, remember_verdicts=True)  # each distinct program is judged once
    problems, _ = usable_problems(problems, tokenizer, model.cfg.max_seq_len, sampling.max_new_tokens)
    width = max(len(tokenizer.encode(p.prompt)) for p in problems)
    update, reference, opt_state = make_update(model, tx, grpo), params, tx.init(params)
    writer, history = NdjsonWriter(workdir / "metrics.ndjson"), []
    evaluate(0, params)
    for step in range(1, args.steps + 1):
        chosen = [problems[i] for i in step_indices(len(problems), args.prompts, args.seed, step)]
        rng = jax.random.fold_in(jax.random.key(args.seed), step)
        batch = rollout(model, {"params": params}, tokenizer, chosen, sampling, sandbox, rng, grpo, width)
        params, opt_state, updated = grpo_step(
            model, params, opt_state, reference, update, batch, args.iterations
        )
        metrics = {**batch.metrics, **updated}
        writer.write_scalars(step, {f"grpo/{k}": v for k, v in metrics.items()})
        history.append({"step": step, **metrics})
        print(f"grpo {step}: " + " ".join(f"{k}={v:.3g}" for k, v in metrics.items()), file=sys.stderr)
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step, params)
    writer.close()
    return history


def plot(curve: list[dict], history: list[dict], path: Path, title: str) -> None:
    """Reward (per step and its moving mean) and held-out pass@1 against the GRPO step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), constrained_layout=True)
    left, right = fig.subplots(1, 2)
    steps, rewards = [h["step"] for h in history], [h["reward"] for h in history]
    window = 10
    smooth = [
        sum(rewards[max(0, i - window + 1) : i + 1]) / len(rewards[max(0, i - window + 1) : i + 1])
        for i in range(len(rewards))
    ]
    left.plot(steps, rewards, ".", alpha=0.35, label="reward (step)")
    left.plot(steps, smooth, "-", label=f"reward ({window}-step mean)")
    left.set_title("train reward (pass rate of G samples)")
    right.plot([c["step"] for c in curve], [c["pass@1"] for c in curve], "o-", label="held-out pass@1")
    right.set_title("held-out greedy pass@1 (eval-code)")
    for ax in (left, right):
        ax.set_xlabel("GRPO step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default OUT/grpo_demo.png)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=150, help="GRPO steps")
    parser.add_argument("--prompts", type=int, default=2, help="problems per GRPO step")
    parser.add_argument("--group", type=int, default=8, help="G: completions per problem")
    parser.add_argument("--iterations", type=int, default=2, help="updates per rollout")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--beta", type=float, default=0.0, help="KL coefficient")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--eval-every", type=int, default=15)
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds = {}
    start = time.perf_counter()
    data = {k: str(v) for k, v in write_family(out / "data", seed=args.seed).items()}
    if not (out / "sft" / "checkpoints" / str(args.sft_steps)).is_dir():  # a rerun keeps its SFT
        sft(out, data, args.sft_steps, args.seed)
    seconds["sft"] = time.perf_counter() - start
    after_sft = eval_code(out, data)
    seconds["eval_code"] = time.perf_counter() - start - seconds["sft"]
    print(f"after SFT: held-out {json.dumps(after_sft)}", file=sys.stderr)

    cfg = api.workdir_config(out / "sft", {**EVAL_KEYS, "codeeval.problems": data["heldout"]})
    from codex_jax.setup.weights import load_checkpoint

    restored = load_checkpoint(cfg, out / "sft")
    tokenizer, _ = load_run_tokenizer(cfg, out / "sft")
    settings = dataclasses.replace(settings_from_config(cfg), limits=LIMITS)
    heldout = read_problems(data["heldout"])
    curve: list[dict] = []

    def evaluate(step, params):
        res = evaluate_model(
            restored.model, params, tokenizer, heldout, settings, out / "grpo" / "heldout" / str(step)
        )
        curve.append({"step": step, "pass@1": res["pass@1"]})
        print(f"grpo {step}: held-out pass@1 {res['pass@1']:.3f}", file=sys.stderr)

    grpo_start = time.perf_counter()
    (out / "grpo").mkdir(exist_ok=True)
    history = grpo_phase(
        restored.model,
        restored.params,
        tokenizer,
        read_problems(data["train"]).problems,
        out / "grpo",
        args,
        evaluate,
    )
    seconds["grpo"] = time.perf_counter() - grpo_start
    (out / "curve.json").write_text(json.dumps({"heldout": curve, "train": history}, indent=1))
    summary = {
        "heldout_pass@1_sft_eval_code": after_sft["pass@1"],
        "heldout_pass@1_before_grpo": curve[0]["pass@1"],
        "heldout_pass@1_after_grpo": curve[-1]["pass@1"],
        "gain": round(curve[-1]["pass@1"] - curve[0]["pass@1"], 4),
        "grpo_steps": args.steps,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "seconds_grpo_split": {
            k: round(sum(h[f"seconds_{k}"] for h in history), 1) for k in ("sampling", "execution", "updates")
        },
    }
    title = (
        f"GRPO demo: held-out pass@1 {summary['heldout_pass@1_before_grpo']:.2f} -> "
        f"{summary['heldout_pass@1_after_grpo']:.2f} in {args.steps} steps"
    )
    plot(curve, history, args.plot or out / "grpo_demo.png", title)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
