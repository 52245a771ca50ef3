"""Forward and train-step time of every model family at one small shape on this machine: prints ONE JSON
object on stdout (a row per family, with its ratio to Llama's time).

    python tools/bench_families.py [--layers 4] [--width 256] [--batch 8] [--seq 256] [--steps 10]

Each family is built with the features its real models use at this scale (Gemma 2's soft-caps and
alternating 128-token windows, Gemma 3's 5:1 local/global pattern with q/k norms, StarCoder2's window,
Phi-3's partial rotary), so the ratio to Llama is what those features cost. The train step is
``value_and_grad`` of the chunked next-token loss plus an AdamW update, jitted; compile times are
``lower().compile()`` of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from codex_jax.compute.loss import mean_loss
from codex_jax.models.config import ModelConfig
from codex_jax.models.families import FAMILIES, pattern
from codex_jax.models.sizes import num_params
from codex_jax.models.transformer import Transformer, init_params


def family_config(family: str, layers: int, width: int, seq: int) -> ModelConfig:
    """``family`` at the shape given, with the per-model features its real models use."""
    window = max(seq // 2, 16)
    extra: dict = {
        "gemma2": dict(
            attn_softcap=50.0, final_softcap=30.0, sliding_window=window, layer_types=pattern(layers, 2)
        ),
        "gemma3": dict(sliding_window=window, layer_types=pattern(layers, 6), rope_local_theta=10000.0),
        "starcoder2": dict(sliding_window=window),
        "phi3": dict(rope_fraction=0.75),
    }.get(family, {})
    heads = max(width // 64, 2)
    return ModelConfig(
        family=family,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=heads // 2 if family != "gpt2" else heads,
        d_model=width,
        d_ff=4 * width,
        vocab_size=4096,
        max_seq_len=seq,
        tie_embeddings=True,
        **extra,
    )


def _time(fn, args, steps: int) -> tuple[float, float]:
    """``(compile seconds, median milliseconds per call)``."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return compile_s, 1000 * statistics.median(times)


def bench(family: str, args) -> dict:
    """One family's row."""
    cfg = family_config(family, args.layers, args.width, args.seq)
    model = Transformer(cfg)
    params = init_params(cfg, jax.random.key(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, args.seq + 1)))
    opt = optax.adamw(1e-4)
    opt_state = opt.init(params)

    def forward(p, t):
        return model.apply({"params": p}, t[:, :-1])

    def step(p, s, t):
        loss, grads = jax.value_and_grad(lambda q: mean_loss(model, {"params": q}, t[:, :-1], t[:, 1:]))(p)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    fwd_compile, fwd_ms = _time(forward, (params, tokens), args.steps)
    step_compile, step_ms = _time(step, (params, opt_state, tokens), args.steps)
    return dict(
        params=num_params(cfg),
        forward_ms=round(fwd_ms, 1),
        step_ms=round(step_ms, 1),
        forward_compile_s=round(fwd_compile, 2),
        step_compile_s=round(step_compile, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    rows = {family: bench(family, args) for family in FAMILIES}
    for row in rows.values():
        row["step_vs_llama"] = round(row["step_ms"] / rows["llama"]["step_ms"], 2)
        row["forward_vs_llama"] = round(row["forward_ms"] / rows["llama"]["forward_ms"], 2)
    shape = {k: getattr(args, k) for k in ("layers", "width", "batch", "seq", "steps")}
    print(json.dumps({"backend": jax.default_backend(), "shape": shape, "families": rows}, indent=1))


if __name__ == "__main__":
    main()
