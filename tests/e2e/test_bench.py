"""tools/bench.py run for real on CPU (one JSON line on stdout), and the GPU benchmark configs."""

import importlib
import json
import os
import subprocess
from pathlib import Path

import jax
import pytest
from conftest import run_python, xla_flags

from codex_jax.config.validation import validate
from codex_jax.models.sizes import count_params
from codex_jax.models.transformer import init_params
from codex_jax.setup.model import model_config

ROOT = Path(__file__).resolve().parents[2]
BENCH = (  # python tools/bench.py, as a -c program (the zygote forks -m modules and -c programs)
    f"import runpy, sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tools')!r}]; "
    f"sys.argv[0] = 'tools/bench.py'; runpy.run_path({str(ROOT / 'tools/bench.py')!r}, run_name='__main__')"
)


def _bench(*args: str) -> subprocess.CompletedProcess:
    """``python tools/bench.py ARGS`` in a process of its own (forked from the test's zygote)."""
    # One CPU device, so the bare step runs too; the tests' cheap compile flags (timings are not checked).
    env = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
    return run_python(["-c", BENCH, *args], env=env, cwd=ROOT)


def _json_line(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # stdout carries only the JSON line
    return json.loads(lines[0])


def test_train_bench_tiny():
    out = _json_line(_bench("--config=configs/tiny.py", "--steps=2", "--warmup=0", "--label=t"))
    assert out["what"] == "train" and out["label"] == "t"
    assert out["config"].endswith("configs/tiny.py")
    for key in (
        "tokens_per_second",
        "step_ms",
        "model_tflops_per_second",
        "compile_s",
        "bare_step_ms",
        "overhead_ratio",
        "loss",
        "compile_cold_s",
        "compile_warm_s",
        "step_temp_gb",
        "step_flops",
        "peak_rss_gb",
    ):
        assert isinstance(out[key], float) and out[key] > 0, key
    assert out["compile_s"] == out["compile_cold_s"] and out["malloc_tuned"] is True
    assert out["mfu"] is None and out["peak_memory_gb"] is None  # unknown on CPU
    assert out["num_params"] == 95616 and out["tokens_per_step"] == 8 * 64
    assert out["device_kind"] == "cpu" and out["num_devices"] == 1 and out["backend"] == "cpu"
    assert (out["num_layers"], out["d_model"], out["batch_size"], out["seq_len"]) == (2, 64, 8, 64)
    essentials = (out["dtype"], out["attention_impl"], out["remat"], out["lora_rank"])
    assert essentials == ("float32", "auto", "none", 0)


def test_train_bench_times_scan_accumulation():
    """With train.accum_impl='scan' one timed call is a whole optimizer step of K micro-batches."""
    flags = ("--config.train.grad_accum_steps=2", "--config.train.accum_impl=scan", "--compare_bare=false")
    out = _json_line(_bench("--config=configs/tiny.py", "--steps=1", "--warmup=0", *flags))
    assert (out["grad_accum_steps"], out["accum_impl"], out["tokens_per_step"]) == (2, "scan", 2 * 8 * 64)
    assert out["loss"] > 0 and out["bare_step_ms"] is None


def test_data_bench_tiny(tmp_path):
    out = _json_line(
        _bench("--config=configs/tiny.py", "--what=data", "--steps", "5", f"--workdir={tmp_path}")
    )
    assert out["what"] == "data" and out["tokens_per_second"] > 0 and out["train_windows"] > 0
    assert out["batch_dtype"] == "int32" and (tmp_path / "data_manifest.json").exists()
    assert out["tokenize_tokens_per_second"] > 0 and out["tokenize_documents"] > 0
    assert (out["num_workers"], out["prefetch"]) == (0, 0)


def test_bad_flag_is_one_error_line():
    proc = _bench("--config=configs/tiny.py", "--what=nope")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith("error:")


@pytest.mark.parametrize(
    "name, params, layers, seq",
    [
        ("gpt2_small", 124_475_904, 12, 1024),
        ("llama_1b", 1_100_048_384, 22, 2048),
    ],
)
def test_gpu_configs(name, params, layers, seq):
    cfg = importlib.import_module(f"codex_jax.configs.{name}").get_config()
    validate(cfg)
    assert (cfg.model.num_layers, cfg.data.seq_len, cfg.model.dtype) == (layers, seq, "bfloat16")
    assert cfg.model.attention_impl == "auto"  # cuDNN on a GPU (bfloat16), Pallas on a TPU
    mcfg = model_config(cfg)
    assert count_params(jax.eval_shape(lambda: init_params(mcfg, jax.random.key(0)))) == params
