"""QLoRA memory and loss: one LoRA run built as the trainer builds it, on real text; prints ONE JSON line.

    python tools/qlora_measure.py --config=configs/llama_1b.py --config.lora.rank=16 \\
        --config.lora.base_dtype=nf4 --config.data.batch_size=1 --config.data.seq_len=256 --steps=50

The frozen base (a random init with ``model.init_from=''``, or ``hf:FOLDER`` / ``workdir:RUN``) is placed
by ``setup/weights.place_base`` in ``lora.base_dtype`` (``lora.quantize_embeddings`` too); batches are
consecutive windows of the Python standard library's source read as bytes (token id = byte value, so any
vocab >= 256 works without a tokenizer). Reports the loss of
every step, the process's peak RSS (GiB: over the whole run, and over the steps alone, reset after
the base is placed through ``/proc/self/clear_refs``) and the frozen base's bytes.
"""

from __future__ import annotations

import json
import resource
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
flags.DEFINE_integer("steps", 50, "Optimizer steps (0: only the compiled step's memory, no weights).")
FLAGS = flags.FLAGS


def text_batches(batch: int, seq_len: int, steps: int) -> list[np.ndarray]:
    """``steps`` batches ``[batch, seq_len + 1]`` of stdlib source bytes, in file order."""
    need = steps * batch * (seq_len + 1)
    chunks, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        data = path.read_bytes()
        chunks.append(np.frombuffer(data, np.uint8))
        total += len(data)
        if total >= need:
            break
    tokens = np.concatenate(chunks)[:need].astype(np.int32)
    return list(tokens.reshape(steps, batch, seq_len + 1))


def _status_gib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since start or the last reset) of this process, GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024 / 2**30
    raise KeyError(field)


def step_memory(cfg, model, runner, tx) -> dict:
    """Per-device bytes (GB) of the train step compiled for abstract arguments (no arrays allocated)."""
    import jax
    import jax.numpy as jnp

    from codex_jax.compute import aot
    from codex_jax.models import quant
    from codex_jax.setup.runners import fresh_state_fn
    from codex_jax.setup.weights import held_base_shapes

    shapes = held_base_shapes(cfg, model.cfg)
    runner.frozen_sharding = runner.shardings_for(shapes)
    frozen = runner.frozen_target(shapes)
    state = runner.abstract_state(jax.eval_shape(fresh_state_fn(cfg, model.cfg, tx)))
    batch = jax.ShapeDtypeStruct((cfg.data.batch_size, cfg.data.seq_len + 1), jnp.int32)
    start = time.perf_counter()
    compiled = runner.lower_train_step(state, batch, frozen).compile()
    return {
        "base_dtype": cfg.lora.base_dtype,
        "quantize_embeddings": cfg.lora.quantize_embeddings,
        "base_gib": round(quant.nbytes(shapes) / 2**30, 3),
        **{f"step_{k}": v for k, v in aot.memory_report(compiled).items()},
        "compile_s": round(time.perf_counter() - start, 1),
    }


def main(_):

    from codex_jax.models import quant
    from codex_jax.models.transformer import Transformer
    from codex_jax.setup import weights
    from codex_jax.setup.model import model_config
    from codex_jax.setup.runners import fresh_state_fn, train_runner

    cfg = FLAGS.config
    model = Transformer(model_config(cfg))
    runner, tx = train_runner(cfg, model)
    if FLAGS.steps == 0:  # no weights: the compiled step's memory from XLA's buffer assignment
        print(json.dumps(step_memory(cfg, model, runner, tx)))
        return
    start = time.perf_counter()
    record = weights.place_base(cfg, model.cfg, runner)
    state = runner.init_state(fresh_state_fn(cfg, model.cfg, tx))
    rss_after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    rss_before_steps = _status_gib("VmRSS")
    # Peak RSS from here on (VmHWM, and ru_maxrss with it): the steps, their compile included.
    Path("/proc/self/clear_refs").write_text("5")
    losses = []
    for batch in text_batches(cfg.data.batch_size, cfg.data.seq_len, FLAGS.steps):
        state, metrics = runner.train_step(state, runner.put_batch(batch))
        losses.append(round(float(metrics["loss"]), 4))
        print(f"step {len(losses)} loss {losses[-1]}", file=sys.stderr, flush=True)
    out = {
        "base_dtype": record["dtype"],
        "quant_block_size": record.get("quant_block_size"),
        "quantize_embeddings": record.get("quantize_embeddings", False),
        "base_gib": round(quant.nbytes(runner.frozen) / 2**30, 3),
        "peak_rss_gib": round(max(rss_after_load, _status_gib("VmHWM")), 3),
        "peak_rss_load_gib": round(rss_after_load, 3),
        "rss_before_steps_gib": round(rss_before_steps, 3),
        "peak_rss_steps_gib": round(_status_gib("VmHWM"), 3),
        "batch": cfg.data.batch_size,
        "seq_len": cfg.data.seq_len,
        "steps": FLAGS.steps,
        "seconds": round(time.perf_counter() - start, 1),
        "losses": losses,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
