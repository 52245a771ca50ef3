"""Shared test setup: 8 emulated CPU devices for in-process tests, and helpers that run the CLI for real."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def tiny_llama(**fields):
    """A 2-layer, 32-wide Llama ModelConfig (GQA 4/2, vocab 97, 16 positions) for in-process step tests."""
    from codex_jax.models.config import ModelConfig

    base = dict(
        family="llama",
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        d_model=32,
        d_ff=64,
        vocab_size=97,
        max_seq_len=16,
        tie_embeddings=False,
    )
    return ModelConfig(**{**base, **fields})


def run_cli(
    workdir,
    *overrides,
    mode="train",
    devices=1,
    config="tiny.py",
    check=True,
    timeout=300,
    env_extra=None,
):
    """Runs ``python -m codex_jax.main`` in a fresh process with ``devices`` emulated CPU devices."""
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        **(env_extra or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "codex_jax.main",
        f"--config={CONFIGS / config}",
        f"--workdir={workdir}",
        f"--mode={mode}",
        *overrides,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def read_metrics(workdir, split="train"):
    """{step: metrics} of one split in workdir/metrics.ndjson (the last line for a step wins)."""
    out = {}
    for line in (Path(workdir) / "metrics.ndjson").read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == split and "loss" in record:
            out[record["step"]] = record
    return out


def restore_params(workdir, step):
    """The params saved at ``step`` as a dict of numpy arrays."""
    import jax
    import orbax.checkpoint as ocp

    params = ocp.StandardCheckpointer().restore(
        Path(workdir).absolute() / "checkpoints" / str(step) / "params"
    )
    return jax.tree.map(lambda x: jax.device_get(x), params)


def read_tb_events(logdir: Path) -> list:
    """Events from TFRecord-framed event files (u64 length, u32 crc, data, u32 crc)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length]))
            pos += 12 + length + 4
    return events
