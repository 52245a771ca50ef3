"""The end-to-end CPU GRPO demo (issue 28): SFT a tiny model on a seeded family of small programming problems,
then GRPO with rewards from running its programs in the sandbox, and see held-out pass@1 rise.

    .venv/bin/python tools/grpo_demo.py --out=runs/grpo-demo [--plot=docs/images/grpo_demo.png]

1. ``codex_jax.codeeval.synthetic.write_family``: train and held-out problems (HumanEval format) and the
   SFT records (four a train problem: its reference solution or its operation's typical bug, the reference
   in 25% of them for half the operations and 75% for the others) in ``OUT/data``.
2. SFT with the ``train`` command (``configs/tiny.py`` shape, a BPE tokenizer of 320 pieces trained on the
   noisy SFT records, ``data.format='prompt_completion'``) in ``OUT/sft``, ``--sft-steps`` steps.
3. Held-out greedy pass@1 of that checkpoint with the ``eval-code`` command.
4. GRPO with the ``train`` command (:func:`grpo_run`: ``train.objective='grpo'``, a full fine-tune from
   the SFT run by ``model.init_from``) on the train problems; the held-out greedy pass@1
   (``train.grpo.eval_temperature=0``: ``eval/grpo/pass@1``) at step 0 and every ``--eval-every`` steps.
   The curves come from the run's ``OUT/grpo/metrics.ndjson``; ``OUT/curve.json`` and the plot ``--plot``.

Prints one JSON line: held-out pass@1 after SFT, after GRPO, the gain, and the seconds of each phase.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from codex_jax.codeeval.synthetic import write_family  # noqa: E402

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


def grpo_run(out: Path, data: dict, args) -> None:
    """The ``train`` command with ``train.objective='grpo'``: a full fine-tune of the SFT run
    (``model.init_from``) on the train problems, held-out greedy pass@1 (``eval/grpo/pass@1``) at step 0,
    every ``args.eval_every`` steps and the end; its metrics in ``OUT/grpo/metrics.ndjson``."""
    keys = {
        "model.init_from": f"workdir:{out / 'sft'}",
        "train.objective": "grpo",
        "train.grpo.problems": data["train"],
        "train.grpo.eval_problems": data["heldout"],
        "train.grpo.eval_temperature": 0.0,  # greedy: one completion a held-out problem
        "train.grpo.prompts_per_step": args.prompts,
        "train.grpo.group": args.group,
        "train.grpo.temperature": args.temperature,
        "train.grpo.iterations": args.iterations,
        "train.grpo.max_new_tokens": EVAL_KEYS["codeeval.max_new_tokens"],
        "train.grpo.beta": args.beta,
        "train.grpo.epsilon": 0.2,
        "train.grpo.aggregation": "grpo",
        "train.grpo.remember_verdicts": True,  # each distinct program is judged once
        "codeeval.workers": EVAL_KEYS["codeeval.workers"],
        "codeeval.site_packages": False,  # the problems need only the standard library: start with -S
        "codeeval.timeout": 3.0,
        # plain Adam at a constant rate: adamw without decay, clipping or warmup, Adam's beta2
        "train.optimizer": "adamw",
        "train.learning_rate": args.lr,
        "train.weight_decay": 0.0,
        "train.beta1": 0.9,
        "train.beta2": 0.999,
        "train.grad_clip": 0.0,
        "train.schedule": "constant",
        "train.warmup_steps": 0,
        "train.steps": args.steps,
        "train.eval_every": args.eval_every,
        "train.log_every": 1,
        "checkpoint.every_steps": args.steps,
        "logging.writers": "ndjson",
        "logging.progress": False,
        "generate.max_new_tokens": 0,
        "seed": args.seed,
    }
    flags = [f"--config.{k}={v}" for k, v in keys.items()]
    run_command(out, f"--config={out / 'sft' / 'config.json'}", f"--workdir={out / 'grpo'}", *flags)


def read_run(workdir: Path) -> tuple[list[dict], list[dict]]:
    """``(held-out curve [{step, pass@1}], train metrics of each step)`` from the run's metrics.ndjson
    (the last record of a step wins)."""
    train: dict[int, dict] = {}
    heldout: dict[int, float] = {}
    for line in (workdir / "metrics.ndjson").read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and "reward" in record:
            train[record["step"]] = record
        elif "grpo/pass@1" in record:
            heldout[record["step"]] = record["grpo/pass@1"]
    curve = [{"step": s, "pass@1": v} for s, v in sorted(heldout.items())]
    return curve, [{**train[s], "step": s} for s in sorted(train)]


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
    right.set_title("held-out greedy pass@1 (eval/grpo/pass@1)")
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

    grpo_start = time.perf_counter()
    if not (out / "grpo" / "checkpoints" / str(args.steps)).is_dir():  # a rerun reads the finished run
        grpo_run(out, data, args)
    curve, history = read_run(out / "grpo")
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
            k: round(sum(h[f"seconds_{k}"] for h in history), 1) for k in ("sampling", "execution", "logps")
        }
        | {"steps": round(sum(h.get("step_time", h.get("compile_seconds", 0.0)) for h in history), 1)},
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
