"""Our GRPO and DPO steps against TRL's ``GRPOTrainer`` and ``DPOTrainer``, side by side in one run on this
machine's CPU, with the same tiny Llama-shaped model (the same weights: ours exported with
``--mode=export --config.export.format=hf`` and loaded by ``transformers.LlamaForCausalLM``), the same
problems (``codex_jax.codeeval.synthetic``), G, lengths and sandbox. Our side is the ``train`` command
(``train.objective='grpo'`` / ``'dpo'``, a full fine-tune from the model by ``model.init_from``), timed by
its own step timer (``train/step_time``, every step logged, so every step blocks) and its GRPO metrics
(``train/seconds_sampling``, ``seconds_execution``, ``seconds_logps``) in ``metrics.ndjson``; TRL's trainers
run in this process, timed per step by a callback. Prints one JSON object.

    .venv/bin/python tools/bench_posttrain.py --out=runs/bench-posttrain [--steps=10]

Needs ``trl`` (``pip install 'codex-jax[trl]'``). Also checks DPO's loss against TRL's: one ``DPOTrainer``
step at learning rate 0 on the same pairs, with a reference model that differs from the policy (an earlier
checkpoint), for each loss type, against :func:`codex_jax.compute.preference.dpo_objective`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL_KEYS = {  # the shared model: configs/tiny.py, Llama-shaped, SFT'd briefly on the problems' solutions
    "model.family": "llama",
    "model.vocab_size": 320,
    "model.d_model": 128,
    "model.d_ff": 256,
    "model.num_layers": 2,
    "model.num_heads": 4,
    "model.num_kv_heads": 2,
    "data.format": "prompt_completion",
    "data.packing": "segments",
    "data.train_on": "completion",
    "data.seq_len": 128,
    "data.batch_size": 16,
    "data.eval_fraction": 0.05,
    "data.max_files": 0,
    "train.learning_rate": 3e-3,
    "train.warmup_steps": 10,
    "train.steps": 80,
    "train.eval_every": 80,
    "checkpoint.every_steps": 40,
    "logging.progress": False,
}
STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
WORKERS = 4  # sandbox workers, both sides


def _sandbox():
    """The same sandbox for both sides: stdlib-only programs (-S), every program judged (no memo)."""
    from codex_jax.sandbox import Limits, make_sandbox

    return make_sandbox(Limits(timeout_s=5.0, site_packages=False))


def _main(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "codex_jax.main", *args], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"error: codex_jax.main {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def prepare(out: Path) -> dict:
    """Problems, pairs, a trained run (steps 40 and 80) and both steps exported for transformers."""
    from codex_jax.codeeval.synthetic import family, write_family

    paths = write_family(out / "data")
    train, _ = family()
    by_op = {p.task_id: p for p in train}
    pairs = []
    for p in train[:32]:
        _, op, k = p.task_id.split("/")
        wrong = next(o for o in by_op.values() if o.task_id.split("/")[1] == op and o.task_id != p.task_id)
        pairs.append(
            {"prompt": p.prompt, "chosen": p.canonical_solution, "rejected": wrong.canonical_solution}
        )
    (out / "data" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    run = out / "model"
    if not (run / "checkpoints" / "80").is_dir():
        flags = [
            f"--config.{k}={v}" for k, v in {**MODEL_KEYS, "data.source": f"jsonl:{paths['sft']}"}.items()
        ]
        _main("--config=configs/tiny.py", f"--workdir={run}", *flags)
    for step in (40, 80):
        if not (out / f"hf{step}" / "config.json").is_file():
            _main(
                f"--config={run / 'config.json'}",
                f"--workdir={run}",
                "--mode=export",
                "--config.export.format=hf",
                f"--config.export.dir={out / f'hf{step}'}",
                f"--config.eval.step={step}",
            )
    return {"train": paths["train"], "pairs": out / "data" / "pairs.jsonl", "run": run}


def ours_model(run: Path, step: int):
    from codex_jax import api
    from codex_jax.data.pipeline import load_run_tokenizer
    from codex_jax.setup.weights import load_checkpoint

    cfg = api.workdir_config(run)
    restored = load_checkpoint(cfg, run, step=step)
    return restored.model, restored.params, load_run_tokenizer(cfg, run)[0]


WARMUP = 2  # steps left out of the means: our step 1 compiles (step 2 may too), TRL warms up at 1


def _split(seconds: list[dict]) -> dict:
    """Mean seconds per step of each part, the first :data:`WARMUP` steps (compiles, warm-up) left out."""
    rest = seconds[WARMUP:]
    out = {k: round(statistics.mean(s[k] for s in rest), 4) for k in rest[0]}
    out["steps_per_second"] = round(1.0 / out["step"], 3)
    out["warmup_seconds"] = [round(s["step"], 2) for s in seconds[:WARMUP]]
    return out


def _train_records(workdir: Path) -> dict[int, dict]:
    """``{step: train metrics}`` of a run's metrics.ndjson (the last record of a step wins)."""
    records = {}
    for line in (workdir / "metrics.ndjson").read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and "loss" in record:
            records[record["step"]] = record
    return records


def _train_command(args, data, workdir: Path, keys: dict) -> dict[int, dict]:
    """The ``train`` command from the bench's model (a full fine-tune of its step 80: ``model.init_from``)
    with plain Adam at ``args.lr``, every step logged; the run's per-step train metrics."""
    common = {
        "model.init_from": f"workdir:{data['run']}",
        "train.steps": args.steps + WARMUP,
        "train.optimizer": "adamw",
        "train.learning_rate": args.lr,
        "train.weight_decay": 0.0,
        "train.beta2": 0.999,
        "train.grad_clip": 0.0,
        "train.schedule": "constant",
        "train.warmup_steps": 0,
        "train.log_every": 1,
        "train.eval_every": args.steps + WARMUP,
        "checkpoint.every_steps": args.steps + WARMUP,
        "logging.writers": "ndjson",
        "generate.max_new_tokens": 0,
    }
    if not (workdir / "checkpoints" / str(args.steps + WARMUP)).is_dir():  # a rerun reads the finished run
        flags = [f"--config.{k}={v}" for k, v in {**common, **keys}.items()]
        _main(f"--config={data['run'] / 'config.json'}", f"--workdir={workdir}", *flags)
    return _train_records(workdir)


def _loop_split(records: dict[int, dict], parts: tuple[str, ...]) -> dict:
    """Mean seconds per step of each part over the steps after :data:`WARMUP` (``train/step_time``: the
    loop's own step timer, which blocks on every logged step); 'update' is the rest of the step."""
    timed = [records[s] for s in sorted(records) if s > WARMUP]
    out = {"step": round(statistics.mean(r["step_time"] for r in timed), 4)}
    for part in parts:
        out[part] = round(statistics.mean(r[f"seconds_{part}"] for r in timed), 4)
    if parts:
        out["update"] = round(out["step"] - sum(out[p] for p in parts), 4)
    out["steps_per_second"] = round(1.0 / out["step"], 3)
    out["first_step_seconds"] = round(records[1]["compile_seconds"], 2)  # compiles
    return out


def bench_grpo_ours(args, data) -> dict:
    """GRPO through ``train.objective='grpo'`` (the same sandbox settings: stdlib-only programs, WORKERS
    workers, every program judged)."""
    keys = {
        "train.objective": "grpo",
        "train.grpo.problems": data["train"],
        "train.grpo.prompts_per_step": args.prompts,
        "train.grpo.group": args.group,
        "train.grpo.max_new_tokens": args.max_new_tokens,
        "train.grpo.temperature": 1.0,
        "train.grpo.stop": json.dumps(STOP),
        "train.grpo.iterations": 1,
        "train.grpo.beta": 0.0,
        "train.grpo.aggregation": "dapo",
        "codeeval.workers": WORKERS,
        "codeeval.site_packages": False,
        "codeeval.timeout": 5.0,
    }
    records = _train_command(args, data, args.out / "ours_grpo", keys)
    out = _loop_split(records, ("sampling", "execution", "logps"))
    return out | {"pass_rate": round(statistics.mean(r["pass_rate"] for r in records.values()), 3)}


class _Clock:
    """Seconds spent in wrapped methods, per trainer step (a transformers TrainerCallback)."""

    def __init__(self):
        import transformers

        clock = self

        class Callback(transformers.TrainerCallback):
            def on_step_begin(self, *a, **k):
                clock.current = {"sampling": 0.0, "execution": 0.0, "begin": time.perf_counter()}

            def on_step_end(self, *a, **k):
                c = clock.current
                step = time.perf_counter() - c.pop("begin")
                clock.steps.append({**c, "update": step - c["sampling"] - c["execution"], "step": step})

        self.callback, self.steps, self.current = Callback(), [], {"sampling": 0.0, "execution": 0.0}

    def wrap(self, obj, name: str, part: str) -> None:
        method = getattr(obj, name)

        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                self.current[part] = self.current.get(part, 0.0) + time.perf_counter() - start

        setattr(obj, name, timed)


def _hf(out: Path, step: int):
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM.from_pretrained(out / f"hf{step}", torch_dtype=torch.float32)
    return model, transformers.AutoTokenizer.from_pretrained(out / f"hf{step}")


def bench_grpo_trl(args, data) -> dict:
    import datasets
    import trl

    from codex_jax.codeeval.generation import truncate_at_stop
    from codex_jax.codeeval.problems import read_problems
    from codex_jax.sandbox import Attempt, run_tests_many

    model, tokenizer = _hf(args.out, 80)
    problems = {p.task_id: p for p in read_problems(str(data["train"])).problems}
    sandbox = _sandbox()
    passed: list[float] = []

    def tests_passed(prompts, completions, task_id, **_):
        jobs = [
            Attempt(problems[t].prompt, truncate_at_stop(c, STOP), problems[t].test, problems[t].entry_point)
            for t, c in zip(task_id, completions, strict=True)
        ]
        rewards = [float(o.passed) for o in run_tests_many(sandbox, jobs, WORKERS)]
        passed.extend(rewards)
        return rewards

    dataset = datasets.Dataset.from_list([{"prompt": p.prompt, "task_id": t} for t, p in problems.items()])
    config = trl.GRPOConfig(
        output_dir=str(args.out / "trl_grpo"),
        per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        learning_rate=args.lr,
        beta=0.0,
        num_iterations=1,
        loss_type="dapo",
        max_steps=args.steps + WARMUP,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    clock = _Clock()
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[tests_passed],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock.callback],
    )
    clock.wrap(trainer, "_generate", "sampling")
    clock.wrap(trainer, "_calculate_rewards", "execution")
    trainer.train()
    return _split(clock.steps) | {"pass_rate": round(statistics.mean(passed), 3)}


def bench_dpo_ours(args, data) -> dict:
    """DPO through ``train.objective='dpo'``: a full fine-tune (its reference log-probs computed once
    before step 1), ``args.dpo_batch`` pairs a step of 64 tokens."""
    keys = {
        "train.objective": "dpo",
        "train.dpo.data": data["pairs"],
        "train.dpo.loss": "sigmoid",
        "train.dpo.beta": 0.1,
        "data.batch_size": args.dpo_batch,
        "data.seq_len": 64,
    }
    return _loop_split(_train_command(args, data, args.out / "ours_dpo", keys), ())


def _trl_dpo(args, data, loss_type: str, lr: float, steps: int, batch: int, ref_step: int | None):
    import datasets
    import trl

    model, tokenizer = _hf(args.out, 80)
    ref = _hf(args.out, ref_step)[0] if ref_step else None
    rows = [json.loads(line) for line in Path(data["pairs"]).read_text().splitlines()]
    config = trl.DPOConfig(
        output_dir=str(args.out / "trl_dpo"),
        per_device_train_batch_size=batch,
        learning_rate=lr,
        beta=0.1,
        loss_type=[loss_type],
        max_steps=steps,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        max_length=65,
    )
    clock = _Clock()
    trainer = trl.DPOTrainer(
        model=model,
        ref_model=ref,
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[clock.callback],
    )
    trainer.train()
    return trainer, clock


def bench_dpo_trl(args, data) -> dict:
    _, clock = _trl_dpo(args, data, "sigmoid", args.lr, args.steps + WARMUP, args.dpo_batch, None)
    parts = _split(clock.steps)
    return {
        "step": parts["step"],
        "steps_per_second": parts["steps_per_second"],
        "warmup_seconds": parts["warmup_seconds"],
    }


def dpo_loss_vs_trl(args, data) -> dict:
    """Our loss and TRL's logged loss on all the pairs at once, policy = step 80, reference = step 40."""
    import jax.numpy as jnp

    from codex_jax.compute.preference import DPO, completion_logps, dpo_objective
    from codex_jax.data.preference import read_pairs

    model, params, tokenizer = ours_model(data["run"], 80)
    _, ref_params, _ = ours_model(data["run"], 40)
    pairs = read_pairs(str(data["pairs"]), tokenizer, seq_len=64)
    batch = {k: jnp.asarray(v) for k, v in pairs.arrays.items()}
    for side in ("chosen", "rejected"):
        logps, _ = completion_logps(model, {"params": ref_params}, batch[side], batch[f"{side}_weights"])
        batch[f"ref_{side}"] = logps
    out = {}
    for loss_type in ("sigmoid", "ipo", "hinge"):
        ours, _ = dpo_objective(params, None, batch, model=model, dpo=DPO(loss_type, beta=0.1))
        trainer, _ = _trl_dpo(args, data, loss_type, 0.0, 1, len(pairs), 40)
        theirs = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
        out[loss_type] = {
            "ours": float(ours),
            "trl": float(theirs),
            "abs_diff": abs(float(ours) - float(theirs)),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after the warm-up steps)")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--dpo-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--only", default="grpo,dpo,loss", help="which parts: grpo, dpo, loss")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch's intra-op threads for TRL (0: torch's default). On a shared 2-core machine, 2 OpenMP "
        "threads wait on each other whenever another process holds a core: TRL's steps then vary 10-100x",
    )
    args = parser.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    data = prepare(args.out)
    only = set(args.only.split(","))
    result: dict = {
        "setting": {
            "model": "llama d_model=128 d_ff=256 layers=2 heads=4 kv_heads=2 vocab=320 (fp32)",
            "grpo": {
                "prompts_per_step": args.prompts,
                "G": args.group,
                "max_new_tokens": args.max_new_tokens,
                "updates_per_step": 1,
                "beta": 0.0,
                "loss": "dapo",
                "sandbox_workers": WORKERS,
            },
            "dpo": {"batch": args.dpo_batch, "seq_len": 64, "loss": "sigmoid", "beta": 0.1},
            "torch_threads": args.torch_threads or "default",
            "timed_steps": args.steps,
        }
    }
    parts = {  # (--only name, result key, what it runs)
        ("grpo", "grpo"): lambda: {
            "codex_jax": bench_grpo_ours(args, data),
            "trl": bench_grpo_trl(args, data),
        },
        ("dpo", "dpo"): lambda: {"codex_jax": bench_dpo_ours(args, data), "trl": bench_dpo_trl(args, data)},
        ("loss", "dpo_loss_vs_trl"): lambda: dpo_loss_vs_trl(args, data),
    }
    for (part, name), run in parts.items():
        if part in only:
            result[name] = run()
            (args.out / "bench.json").write_text(json.dumps(result, indent=1))  # each part as it ends
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
