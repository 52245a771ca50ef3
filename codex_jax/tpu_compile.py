"""``codex-jax compile``: the exact train step of a config compiled ahead of time for a TPU topology, on a
machine without a TPU (libtpu from PyPI: ``pip install 'codex-jax[tpu-compile]'``).

The step is the trainer's (same model, optimizer, LoRA split, accumulation and ``(data, fsdp)`` mesh from
``parallel.mesh``), with ``model.attention_impl`` resolved for TPU (the Pallas kernel where it applies) and
abstract inputs, so nothing is allocated. The report: per-chip memory from ``memory_analysis()`` and
whether it fits the chip's HBM, XLA's FLOPs and bytes per step per chip, and the roofline step time
(the larger of FLOPs / peak and bytes / HBM bandwidth).
"""

from __future__ import annotations

import os
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import topologies
from jax.sharding import AxisType, Mesh

from codex_jax.compute import aot
from codex_jax.compute.batch import MASK, SEGMENTS, STEP_SCALE, TOKENS
from codex_jax.compute.optim import make_optimizer
from codex_jax.compute.parallel import BATCH_AXES, JitRunner
from codex_jax.data.pipeline import masked_rows
from codex_jax.errors import UserError
from codex_jax.metrics.perf import peak_flops_per_device
from codex_jax.models import attention, grad_barrier, moe
from codex_jax.models.transformer import Transformer
from codex_jax.setup import adapters
from codex_jax.setup.model import model_config
from codex_jax.setup.runners import fresh_state_fn, optimizer_spec
from codex_jax.setup.weights import held_base_shapes

# Per chip: HBM bytes and bandwidth (bytes/s), public figures of each generation.
TPU_HBM = {"v4": (32e9, 1.2e12), "v5e": (16e9, 8.19e11), "v5p": (95e9, 2.765e12), "v6e": (32e9, 1.64e12)}
_KIND = {"v4": "tpu v4", "v5e": "tpu v5e", "v5p": "tpu v5p", "v6e": "tpu v6e"}


def topology_devices(topology: str) -> list:
    """The compile-only devices of ``'v5e:2x2'``-style topologies (one host up to 8 chips)."""
    match = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+)x(\d+)(?:x(\d+))?", topology)
    if match is None:
        raise UserError(
            f"--topology={topology!r}: expected GENERATION:AxB[xC], GENERATION one of {list(TPU_HBM)}"
        )
    bounds = tuple(int(d) for d in match.groups()[1:] if d) + (1,) * (
        4 - len([d for d in match.groups() if d])
    )
    # libtpu guards a host's TPU chips with a lockfile that a second process fails on; compiling needs no
    # chip, so two compiles (or a compile beside a TPU run) may load it side by side.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        desc = topologies.get_topology_desc(
            platform="tpu",
            topology_name=topology,
            chip_config_name="default",
            chips_per_host_bounds=bounds,
            num_slices=1,
        )
    except RuntimeError as e:
        raise UserError(f"--topology={topology}: {e} (pip install 'codex-jax[tpu-compile]')") from e
    return list(desc.devices)


def _mesh(cfg: ml_collections.ConfigDict, devices: list) -> Mesh:
    """``parallel.mesh`` (one axis may be -1) over the topology's devices."""
    n, data, fsdp = len(devices), cfg.parallel.mesh.data, cfg.parallel.mesh.fsdp
    expert = cfg.parallel.mesh.get("expert", 1)
    rest = n // expert
    data, fsdp = (rest // fsdp if data == -1 else data), (rest // data if fsdp == -1 and data != -1 else fsdp)
    if data * fsdp * expert != n:
        raise UserError(
            f"config key 'parallel.mesh': data={data} x fsdp={fsdp} x expert={expert} does not cover "
            f"{n} chips"
        )
    grid = np.array(devices).reshape(data, fsdp, expert)
    return Mesh(grid, BATCH_AXES, axis_types=(AxisType.Auto,) * 3)


def _abstract_step_args(cfg, runner: JitRunner, model_cfg, tx):
    """ShapeDtypeStructs (with shardings) of the state, the batch and the frozen base (LoRA) of one step."""
    frozen = None
    if adapters.enabled(cfg):  # the base as place_base holds it: cast, or quantized (QLoRA)
        shapes = held_base_shapes(cfg, model_cfg)
        runner.frozen_sharding = runner.shardings_for(shapes)  # as set_frozen does, without the arrays
        frozen = runner.frozen_target(shapes)
    state = runner.abstract_state(jax.eval_shape(fresh_state_fn(cfg, model_cfg, tx)))
    return state, _abstract_batch(cfg, runner), frozen


def _abstract_batch(cfg, runner: JitRunner):
    """The train step's batch: token rows, or the masked batch (``compute/batch.py``) of a run whose rows
    carry a loss mask (:func:`codex_jax.data.pipeline.masked_rows`)."""
    rows = (cfg.data.batch_size, cfg.data.seq_len + 1)
    shape = (runner.scan_steps, *rows) if runner.scan_steps > 1 else rows

    def spec(dims, dtype):
        return jax.ShapeDtypeStruct(dims, dtype, sharding=runner.train_batch_sharding)

    if not masked_rows(cfg):
        return spec(shape, jnp.int32)
    batch = {
        TOKENS: spec(shape, jnp.int32),
        MASK: spec(shape, jnp.int32),
        STEP_SCALE: spec(shape[:-1], jnp.float32),
    }
    if cfg.data.packing == "segments":
        batch[SEGMENTS] = spec(shape, jnp.int32)
    return batch


def compile_train_step(cfg: ml_collections.ConfigDict, topology: str) -> dict:
    """Compiles ``cfg``'s train step for ``topology``; the report (module docstring) as a dict."""
    devices = topology_devices(topology)
    generation = topology.split(":")[0]
    packed = cfg.data.packing == "segments"
    model_cfg = attention.resolve(model_config(cfg), "tpu", cfg.data.seq_len, packed)
    model_cfg = grad_barrier.resolve(model_cfg, "tpu")  # this host is a CPU: 'auto' must mean TPU's
    model_cfg = moe.resolve(model_cfg, "tpu")
    spec = optimizer_spec(cfg)
    tx = make_optimizer(spec)
    mesh = _mesh(cfg, devices)
    runner = JitRunner(
        Transformer(model_cfg),
        tx,
        mesh,
        fsdp_min_size=cfg.parallel.fsdp_min_size,
        scan_steps=spec.scan_steps,
        z_loss=cfg.train.z_loss,
    )
    args = _abstract_step_args(cfg, runner, model_cfg, tx)
    start = time.perf_counter()
    try:
        with jax.set_mesh(mesh):  # the Pallas kernel runs per batch shard (models/attention.py)
            compiled = runner.lower_train_step(*args).compile()  # the trainer's jitted step
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return _does_not_fit(str(e), generation, topology, len(devices), time.perf_counter() - start)
    compile_s = time.perf_counter() - start
    out = report(compiled, generation, topology, len(devices), model_cfg.attention_impl, compile_s)
    if model_cfg.num_experts:
        out["moe_impl"] = model_cfg.moe_impl
        out["mesh"] = dict(mesh.shape)
    if adapters.enabled(cfg):
        out["lora_base_dtype"] = cfg.lora.base_dtype or model_cfg.param_dtype
    return out


def _does_not_fit(message: str, generation: str, topology: str, chips: int, compile_s: float) -> dict:
    """The report of a step the TPU compiler refused for memory: ``fits: false`` and the compiler's reason
    (how much it needed), instead of a traceback."""
    reason = next(
        (line for line in message.splitlines() if "memory" in line.lower()), message.splitlines()[0]
    )
    return {
        "topology": topology,
        "chips": chips,
        "hbm_per_chip_gb": TPU_HBM[generation][0] / aot.GB,
        "fits": False,
        "why": reason.strip(),
        "compile_s": round(compile_s, 2),
    }


def report(
    compiled, generation: str, topology: str, chips: int, attention_impl: str, compile_s: float
) -> dict:
    """The JSON line of ``codex-jax compile``: memory, fit, FLOPs and roofline time per chip."""
    hbm, bandwidth = TPU_HBM[generation]
    memory = aot.memory_report(compiled)
    flops = aot.flops(compiled)
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, list) else costs
    moved = float(costs.get("bytes accessed", 0.0)) if costs else 0.0
    peak = peak_flops_per_device(_KIND[generation])
    times = [t for t in ((flops or 0) / peak if peak else 0.0, moved / bandwidth) if t]
    text = compiled.as_text()
    return {
        "topology": topology,
        "chips": chips,
        "attention_impl": attention_impl,
        "pallas_attention_in_step": "flash_attention" in text,
        **{f"per_chip_{k}": v for k, v in memory.items()},
        "hbm_per_chip_gb": hbm / aot.GB,
        "fits": memory["total_gb"] is not None and memory["total_gb"] * aot.GB <= hbm,
        "flops_per_chip_per_step": flops,
        "bytes_per_chip_per_step": moved,
        "peak_tflops_per_chip": peak / 1e12 if peak else None,
        "roofline_step_ms": round(max(times) * 1e3, 3) if times else None,
        "compile_s": round(compile_s, 2),
    }
