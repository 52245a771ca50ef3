"""Throughput benchmark: prints ONE JSON line on stdout (everything else goes to stderr).

    python tools/bench.py --config=configs/gpt2_small.py [--config.data.batch_size=64] [--steps 20]
    python tools/bench.py --config=configs/tiny.py --what=data [--workdir=DIR]

``--what=train`` builds the model, optimizer and runner exactly as the trainer does and times
optimizer steps (each ``train.grad_accum_steps`` micro-steps) on random tokens: tokens/s, median
step time, model TFLOP/s, MFU, peak device memory (GiB) and compile time; the step compiled ahead of
time through an empty persistent cache (``compile_cold_s``) and again from it (``compile_warm_s``), its
per-device memory from ``compiled.memory_analysis()`` (``step_temp_gb``: XLA's temporary buffers) and
FLOPs; the process's peak RSS (``peak_rss_gb``), kernel CPU time and minor page faults per timed step.
``compile_s`` is the cold compile (else the first step's time, compile included: the pmap runner).
``--compare_bare`` (default on CPU) also times a bare jitted value_and_grad + AdamW step of the same
model on the same batches, interleaved step by step with the trainer's, and reports ``overhead_ratio``
= step_ms / bare_step_ms.
``--what=data`` times the data pipeline: batches drawn to host numpy from ``make_train_iterator``
(the token cache path, with ``data.num_workers`` and ``data.prefetch``), and the on-the-fly
tokenizing path: ``encode_batch`` over ``--tokenize_mb`` MB of the source's documents
(``tokenize_tokens_per_second``), and a token cache build of the source from its files
(:func:`codex_jax.data.cache_build.build_files`) in ``data.cache_workers`` processes: tokens/s, tokens per
CPU-second of the workers (``cache_build_tokens_per_core_second``: per core) and the peak RSS of this
process (``prepare_data`` before it included) and of its largest worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from absl import app, flags

from codex_jax import main as cli  # defines --config and --workdir (its --mode is ignored here)
from codex_jax.corpus.listing import lazy_source_files
from codex_jax.corpus.sources import source_files
from codex_jax.data import cache, cache_build
from codex_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_enum("what", "train", ["train", "data"], "Time the train step or the data pipeline.")
flags.DEFINE_integer("steps", 10, "Timed optimizer steps (--what=data: timed batches).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after the first (compiling) one.")
flags.DEFINE_bool("compare_bare", None, "Also time a bare jitted step (default: on CPU only).")
flags.DEFINE_float("tokenize_mb", 8.0, "--what=data: MB of text timed through encode_batch.")
flags.DEFINE_float("cache_task_mb", 8.0, "--what=data: MB of files per cache build task.")
flags.DEFINE_string("label", "", "Free text copied into the JSON line (to tell variants apart).")

GIB = 2**30


def _essentials(cfg) -> dict:
    """The config keys that decide throughput, flat."""
    m, d = cfg.model, cfg.data
    return {
        "family": m.family,
        "num_layers": m.num_layers,
        "d_model": m.d_model,
        "num_heads": m.num_heads,
        "num_kv_heads": m.num_kv_heads,
        "d_ff": m.d_ff,
        "vocab_size": m.vocab_size,
        "tie_embeddings": m.tie_embeddings,
        "batch_size": d.batch_size,
        "seq_len": d.seq_len,
        "grad_accum_steps": cfg.train.grad_accum_steps,
        "accum_impl": cfg.train.accum_impl,
        "dtype": m.dtype,
        "param_dtype": m.param_dtype,
        "attention_impl": m.attention_impl,
        "remat": m.remat,
        "parallel_mode": cfg.parallel.mode,
        "mesh": {"data": cfg.parallel.mesh.data, "fsdp": cfg.parallel.mesh.fsdp},
        "lora_rank": _lora_rank(cfg),
    }


def _lora_rank(cfg) -> int:
    lora = cfg.get("lora")
    return int(lora.get("rank", 0) or 0) if lora is not None else 0


def peak_memory_gib() -> float | None:
    """Largest ``peak_bytes_in_use`` of the local devices in GiB; None when not reported (CPU)."""
    import jax

    peaks = []
    for device in jax.local_devices():
        try:
            stats = device.memory_stats()
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"])
    return round(max(peaks) / GIB, 3) if peaks else None


def random_batches(cfg, count: int, per_process_batch: int) -> list[np.ndarray]:
    """``count`` host int32 batches ``[per_process_batch, seq_len + 1]`` of random tokens."""
    rng = np.random.default_rng(cfg.seed)
    shape = (per_process_batch, cfg.data.seq_len + 1)
    return [rng.integers(0, cfg.model.vocab_size, shape, dtype=np.int32) for _ in range(count)]


def make_bare_step(model, train_cfg):
    """The step to compare against: value_and_grad + optax.adamw, jit with donation, no mesh."""
    import jax
    import jax.numpy as jnp
    import optax

    tx = optax.adamw(
        train_cfg.learning_rate,
        b1=train_cfg.beta1,
        b2=train_cfg.beta2,
        weight_decay=train_cfg.weight_decay,
    )

    def step(params, opt_state, batch_BxL):
        def loss_fn(p):
            logits_BxTxV = model.apply({"params": p}, batch_BxL[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(
                logits_BxTxV.astype(jnp.float32), batch_BxL[:, 1:]
            ).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, jax.jit(step, donate_argnums=(0, 1))


class _Timed:
    """Runs one optimizer step (``accum`` micro-steps) of a step function, blocking on its loss."""

    def __init__(self, micro_step, carry, batches, accum):
        self.micro_step, self.carry, self.batches, self.accum = micro_step, carry, batches, accum
        self.count, self.times, self.loss = 0, [], None

    def __call__(self, record: bool = True) -> float:
        start = time.perf_counter()
        for _ in range(self.accum):
            batch = self.batches[self.count % len(self.batches)]
            self.carry, loss = self.micro_step(self.carry, batch)
            self.count += 1
        loss.block_until_ready()
        elapsed = time.perf_counter() - start
        self.loss = loss
        if record:
            self.times.append(elapsed)
        return elapsed


def bench_train(cfg, steps: int, warmup: int, compare_bare: bool | None) -> dict:
    """Times the trainer's step (and optionally the bare one) on random batches (module doc)."""
    import jax

    from codex_jax.metrics import perf
    from codex_jax.models.sizes import count_params, flops_per_token
    from codex_jax.models.transformer import Transformer, init_params
    from codex_jax.setup.model import model_config
    from codex_jax.setup.runners import fresh_state_fn, train_runner

    num_devices = jax.local_device_count() if cfg.parallel.mode == "pmap" else jax.device_count()
    model = Transformer(model_config(cfg))
    runner, tx = train_runner(cfg, model)  # as the trainer builds it
    per_call = runner.scan_steps  # micro-batches per jitted call: K under train.accum_impl='scan'
    lora_info = None
    if _lora_rank(cfg):
        # ---- LoRA (issue 6) ----------------------------------------------------------------------
        # As the trainer builds it: the frozen base (model.init_from, else a random init) in the
        # runner, in lora.base_dtype; the state (optimizer included) over the adapter tree only.
        state, lora_info = _lora_state(cfg, model, runner, tx)
        num_params = lora_info["frozen_params"]
    else:
        make_state = fresh_state_fn(cfg, model.cfg, tx)
        state = runner.init_state(make_state)
        num_params = count_params(jax.eval_shape(make_state).params)
    accum = cfg.train.grad_accum_steps
    batches = random_batches(
        cfg, max(per_call, min(8, (steps + warmup + 1) * accum)), cfg.data.batch_size // jax.process_count()
    )

    def trainer_micro(state, batch):
        state, metrics = runner.train_step(state, runner.put_batch(batch))
        return state, metrics["loss"]

    stacked = [np.stack(batches[i : i + per_call]) for i in range(0, len(batches) - per_call + 1, per_call)]
    compiled = compile_fields(runner, state, (batches if per_call == 1 else stacked)[0])
    trainer = _Timed(trainer_micro, state, batches if per_call == 1 else stacked, accum // per_call)
    compile_s = trainer(record=False)
    for _ in range(warmup):
        trainer(record=False)
    peak = peak_memory_gib()  # before the bare step exists

    bare, bare_note = None, None
    if compare_bare is None:
        compare_bare = jax.default_backend() == "cpu"
    if compare_bare and lora_info is not None:
        bare_note = "skipped: LoRA (the bare step is a full fine-tune)"
    elif compare_bare and (jax.device_count() != 1 or cfg.parallel.mode == "pmap"):
        bare_note = "skipped: the bare step runs on one device without a mesh"
    elif compare_bare:
        try:
            bare_tx, bare_step = make_bare_step(model, cfg.train)
            key = jax.random.key(cfg.seed)
            params = jax.jit(lambda: init_params(model.cfg, key))()

            def bare_micro(carry, batch):
                params, opt_state, loss = bare_step(*carry, jax.device_put(batch))
                return (params, opt_state), loss

            bare = _Timed(bare_micro, (params, bare_tx.init(params)), batches, accum)
            for _ in range(warmup + 1):
                bare(record=False)
        except Exception as e:  # noqa: BLE001 - the comparison must not cost the main measurement
            bare, bare_note = None, f"failed: {type(e).__name__}: {' '.join(str(e).split())[:500]}"

    usage = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):  # interleaved, so both see the same machine load
        trainer()
        if bare is not None:
            bare()
    timed = _usage_since(usage, steps)

    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len * accum
    tps = tokens_per_step * len(trainer.times) / sum(trainer.times)
    fpt = flops_per_token(model.cfg, num_params, cfg.data.seq_len)
    device_kind = jax.devices()[0].device_kind
    step_ms = statistics.median(trainer.times) * 1e3
    result = {
        "what": "train",
        "tokens_per_second": round(tps, 1),
        "step_ms": round(step_ms, 3),
        "step_ms_min": round(min(trainer.times) * 1e3, 3),
        "step_ms_max": round(max(trainer.times) * 1e3, 3),
        "model_tflops_per_second": round(fpt * tps / 1e12, 4),
        "mfu": _round(perf.mfu(fpt, tps, num_devices, device_kind), 4),
        "peak_memory_gb": peak,
        "compile_s": compiled.get("compile_cold_s", round(compile_s, 2)),
        "first_step_s": round(compile_s, 2),
        **compiled,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3),
        **timed,
        "num_params": num_params,
        "flops_per_token": fpt,
        "tokens_per_step": tokens_per_step,
        "loss": _round(float(np.mean(trainer.loss)), 4),
        "bare_step_ms": None,
        "overhead_ratio": None,
    }
    if bare is not None:
        bare_ms = statistics.median(bare.times) * 1e3
        result.update(
            bare_step_ms=round(bare_ms, 3),
            overhead_ratio=round(step_ms / bare_ms, 4),
            bare_loss=_round(float(bare.loss), 4),
        )
    if bare_note:
        result["bare_note"] = bare_note
    if lora_info is not None:
        result.update(_lora_fields(model.cfg, lora_info, fpt, tps, cfg.data.seq_len))
    result.update(
        device_kind=device_kind,
        num_devices=num_devices,
        backend=jax.default_backend(),
        jax_version=jax.__version__,
        steps=steps,
        warmup=warmup,
    )
    return result


def compile_fields(runner, state, batch) -> dict:
    """The train step compiled ahead of time: cold and warm (persistent cache) compile seconds, and its
    per-device memory (``temp_gb``: XLA's temporary buffers) and FLOPs, from the executable."""
    from codex_jax.compute import aot

    device_batch = runner.put_batch(batch)
    compiled, cold_s, warm_s = aot.compile_cold_and_warm(lambda: runner.lower_train_step(state, device_batch))
    return {
        "compile_cold_s": round(cold_s, 2),
        "compile_warm_s": round(warm_s, 2),
        **{f"step_{k}": v for k, v in aot.memory_report(compiled).items()},
        "step_flops": aot.flops(compiled),
    }


def _usage_since(before, steps: int) -> dict:
    """Kernel CPU seconds and minor page faults per timed step (trainer and bare step together), and
    whether glibc's allocator was tuned (codex_jax/runtime.py)."""
    from codex_jax import runtime

    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "sys_cpu_s_per_step": round((after.ru_stime - before.ru_stime) / steps, 4),
        "minor_faults_per_step": round((after.ru_minflt - before.ru_minflt) / steps, 1),
        "malloc_tuned": runtime.tune_malloc(),
    }


def _lora_state(cfg, model, runner, tx):
    """(state, meta['lora']) of a LoRA run, built as ``train/loop.py`` does."""
    import jax

    from codex_jax.setup import adapters, weights
    from codex_jax.setup.runners import fresh_state_fn

    record = weights.place_base(cfg, model.cfg, runner)
    state = runner.init_state(fresh_state_fn(cfg, model.cfg, tx))
    shapes = jax.eval_shape(lambda: adapters.init_adapters(cfg, model.cfg))
    return state, adapters.meta(cfg, record, shapes, model.cfg)


def _lora_fields(model_cfg, info: dict, fpt: float, tps: float, seq_len: int) -> dict:
    """The LoRA line items: trainable share, and FLOPs per token without the frozen weights'
    gradients (4·N + 6·N_lora + attention) next to the usual 6·N ``flops_per_token``."""
    m = model_cfg
    attention = 12.0 * m.num_layers * m.num_heads * m.dims_per_head * seq_len
    dense = (fpt - attention) / 6.0
    lora_fpt = 4.0 * dense + 6.0 * info["trainable_params"] + attention
    return {
        "trainable_params": info["trainable_params"],
        "trainable_fraction": round(info["trainable_fraction"], 6),
        "base_dtype": info["base"]["dtype"],
        "lora_flops_per_token": lora_fpt,
        "lora_tflops_per_second": round(lora_fpt * tps / 1e12, 4),
    }


def bench_data(cfg, workdir: Path, steps: int, warmup: int) -> dict:
    """Times ``prepare_data`` once and then ``steps`` batches drawn from the train iterator."""
    from codex_jax.data.pipeline import make_train_iterator, prepare_data

    start = time.perf_counter()
    bundle = prepare_data(cfg, workdir)
    prepare_s = time.perf_counter() - start
    it = make_train_iterator(
        bundle.train_windows,
        batch_size=cfg.data.batch_size,
        seed=cfg.seed,
        process_index=0,
        process_count=1,
        num_workers=cfg.data.num_workers,
        prefetch=cfg.data.prefetch,
    )
    start = time.perf_counter()
    first = np.asarray(next(it))
    first_batch_s = time.perf_counter() - start
    for _ in range(warmup):
        np.asarray(next(it))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        batch = np.asarray(next(it))
        times.append(time.perf_counter() - start)
    expected = (cfg.data.batch_size, cfg.data.seq_len + 1)
    if first.shape != expected or batch.shape != expected:
        raise UserError(f"data pipeline gave batches of shape {batch.shape}, expected {expected}")
    tokens = cfg.data.batch_size * cfg.data.seq_len * steps
    return {
        "what": "data",
        "tokens_per_second": round(tokens / sum(times), 1),
        "batches_per_second": round(steps / sum(times), 2),
        "batch_ms": round(statistics.median(times) * 1e3, 4),
        "prepare_s": round(prepare_s, 2),
        "first_batch_s": round(first_batch_s, 4),
        "train_windows": len(bundle.train_windows),
        "num_workers": cfg.data.num_workers,
        "prefetch": cfg.data.prefetch,
        **bench_tokenize(cfg, bundle.tokenizer, FLAGS.tokenize_mb),
        **bench_cache_build(cfg, bundle.tokenizer, workdir / "bench_cache"),
        "batch_dtype": str(batch.dtype),
        "steps": steps,
        "warmup": warmup,
    }


def bench_tokenize(cfg, tokenizer, megabytes: float) -> dict:
    """Times ``tokenizer.encode_batch`` (all cores) on the first ``megabytes`` of the source."""
    from codex_jax.corpus.sources import read_source

    d = cfg.data
    texts, size = [], 0
    for doc in read_source(d.source, d.max_files, d.include, d.exclude, d.on_bad_record).documents:
        if size >= megabytes * 1e6:
            break
        texts.append(doc.text)
        size += len(doc.text.encode("utf-8"))
    tokenizer.encode_batch(texts[:4])  # warm up
    start = time.perf_counter()
    tokens = sum(len(ids) for ids in tokenizer.encode_batch(texts))
    seconds = time.perf_counter() - start
    return {
        "tokenize_tokens_per_second": round(tokens / seconds, 1),
        "tokenize_mb_per_second": round(size / 1e6 / seconds, 3),
        "tokenize_mb": round(size / 1e6, 3),
        "tokenize_documents": len(texts),
    }


def bench_cache_build(cfg, tokenizer, directory: Path) -> dict:
    """Times a token cache build of the source's files (tasks of ``--cache_task_mb`` MB) in
    ``data.cache_workers`` processes, into ``directory`` (removed afterwards)."""
    d = cfg.data
    if d.max_files:  # a hashed subset: listed at once
        spec, root, listed = source_files(d.source, d.max_files, d.include, d.exclude)
        files: Iterator[Path] = iter(listed)
    else:  # listed lazily, one folder at a time
        spec, root, files = lazy_source_files(d.source, d.include, d.exclude)
    key = {**cache.cache_key("bench", tokenizer), "eval_fraction": d.eval_fraction}
    tasks = cache_build.file_tasks(
        spec, root, files, int(FLAGS.cache_task_mb * 1e6), "", d.eval_fraction, d.on_bad_record
    )
    shutil.rmtree(directory, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    stats = cache_build.build_files(directory, key, tokenizer, tasks, d.cache_workers, progress=False)
    seconds = time.perf_counter() - start
    cpu_seconds = stats.cpu_seconds if d.cache_workers > 1 else time.process_time() - cpu
    tokens = sum(json.loads((directory / cache.KEY_FILENAME).read_text())["tokens"].values())
    shutil.rmtree(directory)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return {
        "cache_build_workers": d.cache_workers,
        "cache_build_tasks": stats.tasks,
        "cache_build_mb": round(stats.chars / 1e6, 3),
        "cache_build_s": round(seconds, 2),
        "cache_build_tokens_per_second": round(tokens / seconds, 1),
        "cache_build_tokens_per_core_second": round(tokens / max(cpu_seconds, 1e-9), 1),
        "cache_build_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "cache_build_worker_peak_rss_gb": round(children, 3),
    }


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def run(argv: list[str]) -> None:
    """Loads and validates the config, runs the benchmark, prints its JSON line."""
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.steps < 1 or FLAGS.warmup < 0:
        cli.fail(f"--steps must be >= 1 and --warmup >= 0 (got {FLAGS.steps}, {FLAGS.warmup})")
    cfg = cli.load_config()
    config_path = cli.config_filename()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON line
            from codex_jax.api import prepare

            prepare(cfg)  # multi-host start-up (dist.*) and validation, as a training run
            if FLAGS.what == "data":
                with contextlib.ExitStack() as stack:
                    workdir = FLAGS.workdir or stack.enter_context(
                        tempfile.TemporaryDirectory(prefix="bench-")
                    )
                    result = bench_data(cfg, Path(workdir), FLAGS.steps, FLAGS.warmup)
            else:
                result = bench_train(cfg, FLAGS.steps, FLAGS.warmup, FLAGS.compare_bare)
    except UserError as e:
        cli.fail(str(e))
    out = {"label": FLAGS.label, "config": config_path, **result, **_essentials(cfg)}
    print(json.dumps(out), flush=True)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(run, flags_parser=cli.parse_flags)


if __name__ == "__main__":
    main()
