"""Prints the pass@k table of docs/evaluate.md: a tiny Llama trained on the five fixture problems'
canonical solutions (tests/fixtures/codeeval/problems.jsonl, as tests/e2e/test_codeeval_run.py trains it),
evaluated by ``eval-code`` at several checkpoints, greedily and with n sampled completions per problem.

``python tools/passk_table.py [--steps 200] [--every 50] [--samples 10]`` (a few minutes on a 2-core CPU)
prints one Markdown table; the sandboxed programs are the fixture problems' own tests.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from codex_jax import api

REPO = Path(__file__).resolve().parent.parent
PROBLEMS = REPO / "tests/fixtures/codeeval/problems.jsonl"


def train(root: Path, steps: int, every: int):
    """``(cfg, workdir)``: the run, with a checkpoint every ``every`` steps (step 0 included)."""
    (root / "train").mkdir(parents=True)
    for i in range(4):
        (root / "train" / f"{i}.jsonl").write_text(PROBLEMS.read_text())
    (root / "held_out.jsonl").write_text(PROBLEMS.read_text() * 6)
    template = "{prompt}{canonical_solution}"
    overrides = {
        "data.source": f"jsonl:{root}/train/*.jsonl:{template}",
        "data.eval_source": f"jsonl:{root}/held_out.jsonl:{template}",
        "data.seq_len": 128,
        "data.batch_size": 8,
        "data.max_files": 0,
        "model.family": "llama",
        "model.vocab_size": 400,
        "train.steps": steps,
        "train.warmup_steps": 5,
        "train.learning_rate": 1e-2,
        "train.eval_every": every,
        "train.log_every": every,
        "eval.num_batches": 1,
        "checkpoint.every_steps": every,
        "checkpoint.max_to_keep": 100,
        "logging.writers": "ndjson",
        "logging.progress": False,
        "generate.max_new_tokens": 0,
        "codeeval.problems": str(PROBLEMS),
        "codeeval.max_new_tokens": 24,
    }
    cfg = api.load_config("tiny", overrides)
    api.train(cfg, root / "run")
    return overrides, root / "run"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    ks = [k for k in (1, 5, 10) if k <= args.samples]
    with tempfile.TemporaryDirectory() as tmp:
        overrides, workdir = train(Path(tmp), args.steps, args.every)
        rows = []
        for step in range(args.every, args.steps + 1, args.every):
            greedy = api.eval_code(api.load_config("tiny", {**overrides, "eval.step": str(step)}), workdir)
            sampled_cfg = {
                **overrides,
                "eval.step": str(step),
                "codeeval.num_samples": args.samples,
                "codeeval.k": ",".join(map(str, ks)),
                "codeeval.temperature": 0.8,
            }
            sampled = api.eval_code(api.load_config("tiny", sampled_cfg), workdir)
            cells = [f"{sampled[f'pass@{k}']:.3f}" for k in ks]
            rows.append(f"| {step} | {greedy['pass@1']:.3f} | " + " | ".join(cells) + " |")
    head = " | ".join(f"pass@{k}, T=0.8" for k in ks)
    print(f"| step | greedy pass@1 | {head} |")
    print("| --- | --- | " + " | ".join("---" for _ in ks) + " |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
