"""``codex-jax compile``: a config's train step compiled for a TPU topology on this CPU host (libtpu from
PyPI, ``pip install 'codex-jax[tpu-compile]'``; skipped without it), the Pallas attention kernel inside."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None and not os.environ.get("TPU_LIBRARY_PATH"),
    reason="libtpu not installed (pip install 'codex-jax[tpu-compile]')",
)


def _compile(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "codex_jax.cli", "compile", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_compile_tiny_for_v5e_with_the_pallas_kernel():
    proc = _compile("--config=configs/tiny.py", "--config.data.seq_len=128", "--topology=v5e:2x2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = proc.stdout.splitlines()
    out = json.loads(line)
    assert (out["topology"], out["chips"], out["attention_impl"]) == ("v5e:2x2", 4, "pallas")
    assert out["pallas_attention_in_step"] is True  # the TPU kernel is in the compiled step
    assert out["fits"] is True and 0 < out["per_chip_total_gb"] < out["hbm_per_chip_gb"] == 16.0
    assert out["flops_per_chip_per_step"] > 0 and out["roofline_step_ms"] > 0


def test_compile_packed_rows_with_segment_ids_in_the_pallas_kernel():
    """data.packing='segments': the masked batch (tokens, mask, segments, step_scale) and the Pallas kernel
    with the rows' segment ids."""
    args = ("--config=configs/tiny.py", "--config.data.seq_len=128", "--config.data.packing=segments")
    proc = _compile(*args, "--topology=v5e:2x2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["attention_impl"] == "pallas" and out["pallas_attention_in_step"] is True
    assert out["fits"] is True and out["flops_per_chip_per_step"] > 0


def test_compile_falls_back_and_refuses_bad_topology():
    out = json.loads(_compile("--config=configs/tiny.py", "--topology=v5e:2x2").stdout)  # seq_len 64
    assert out["attention_impl"] == "xla" and out["pallas_attention_in_step"] is False
    proc = _compile("--config=configs/tiny.py", "--topology=v9:2x2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --topology='v9:2x2'")


def test_compile_a_qlora_step_sizes_the_nf4_base():
    """lora.base_dtype=nf4: the step's frozen base is the quantized tree, smaller than bfloat16's."""
    args = ("--config=configs/tiny.py", "--config.lora.rank=4", "--topology=v5e:1x1")
    outs = {}
    for dtype in ("nf4", "bfloat16"):
        proc = _compile(*args, f"--config.lora.base_dtype={dtype}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[dtype] = json.loads(proc.stdout)
    assert outs["nf4"]["lora_base_dtype"] == "nf4" and outs["nf4"]["fits"] is True
    assert outs["nf4"]["per_chip_argument_gb"] < outs["bfloat16"]["per_chip_argument_gb"]


def test_compile_a_mixture_of_experts_with_an_expert_axis_and_expert_adapters():
    """A MoE step for TPU: 'auto' resolves to TPU's 'ragged' path (not this CPU host's 'blocks'), the experts
    sit on a 2-way expert axis, and expert LoRA adapters compile too."""
    moe = ("--config.model.num_experts=4", "--config.model.moe_d_ff=64", "--config.parallel.mesh.expert=2")
    proc = _compile(
        "--config=configs/tiny.py",
        *moe,
        "--config.lora.rank=4",
        "--config.lora.experts=true",
        "--topology=v5e:2x2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["moe_impl"] == "ragged" and out["mesh"]["expert"] == 2 and out["chips"] == 4
    assert out["fits"] is True and out["flops_per_chip_per_step"] > 0
