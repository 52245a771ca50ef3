"""Mixture-of-experts paths at one small shape: prints ONE JSON line on stdout (progress on stderr).

    python tools/moe_bench.py [--experts 8 --top_k 2 --batch 8 --seq 256 --width 256 --expert_ff 512]

For each ``model.moe_impl`` ('blocks': the CPU default, 'dispatch' at capacity factor 1.25, 'dense': every
expert on every token, 'ragged': ``jax.lax.ragged_dot``) a jitted train step (forward, backward, AdamW) of
the same model on the same batch: median step time over rounds interleaved path by path, XLA's temporary
memory and FLOPs of the compiled step (``memory_analysis``/``cost_analysis``), the first step's loss and
its largest difference from 'dense' (results must be equal), and the dropped fraction. Then transformers'
``MixtralForCausalLM`` at the same shape: forward + backward (torch, float32), median time.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import numpy as np

from codex_jax.compute import step as step_lib
from codex_jax.compute.optim import OptimizerSpec, make_optimizer
from codex_jax.compute.state import create_train_state
from codex_jax.config.schema import default_config
from codex_jax.models.config import ModelConfig
from codex_jax.models.transformer import Transformer, init_params

PATHS = ("blocks", "dispatch", "dense", "ragged")


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top_k", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--expert_ff", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True)
    return p.parse_args()


def _cfg(a) -> ModelConfig:
    return ModelConfig(
        family="llama",
        num_layers=a.layers,
        num_heads=4,
        num_kv_heads=4,
        d_model=a.width,
        d_ff=a.expert_ff,
        vocab_size=a.vocab,
        max_seq_len=a.seq,
        tie_embeddings=False,
        num_experts=a.experts,
        experts_per_token=a.top_k,
        router_aux_loss_coef=0.01,
        loss_chunk=0,
    )


def _jax_paths(a) -> dict:
    base = _cfg(a)
    tx = make_optimizer(OptimizerSpec.from_mapping(default_config().train))
    params = init_params(base, jax.random.key(0))
    rows = np.random.default_rng(0).integers(0, a.vocab, (a.batch, a.seq + 1), dtype=np.int32)
    results, steps = {}, {}
    for impl in PATHS:
        model = Transformer(base.replace(moe_impl=impl))
        fn = jax.jit(functools.partial(step_lib.train_step, model=model, tx=tx))
        state = create_train_state(params, tx, 0)
        t0 = time.perf_counter()
        compiled = fn.lower(state, rows).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        _, metrics = compiled(state, rows)
        steps[impl] = (compiled, state)
        results[impl] = {
            "compile_s": round(compile_s, 2),
            "temp_mb": round(mem.temp_size_in_bytes / 2**20, 1),
            "gflops": round(float(cost.get("flops", 0.0)) / 1e9, 2),
            "loss": float(metrics["loss"]),
            "moe_dropped": float(metrics["moe_dropped"]),
            "times": [],
        }
        print(f"{impl}: compiled in {compile_s:.1f}s", file=sys.stderr)
    for _ in range(a.rounds):  # interleaved: every path sees the same machine load
        for impl, (compiled, state) in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(state, rows))
            results[impl]["times"].append(time.perf_counter() - t0)
    for r in results.values():
        r["step_ms"] = round(1e3 * statistics.median(r.pop("times")), 1)
        r["loss_diff_vs_dense"] = abs(r["loss"] - results["dense"]["loss"])
    for impl in PATHS:
        results[impl]["speedup_vs_dense"] = round(results["dense"]["step_ms"] / results[impl]["step_ms"], 2)
    return results


def _torch_mixtral(a) -> dict:
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=a.vocab,
        hidden_size=a.width,
        intermediate_size=a.expert_ff,
        num_hidden_layers=a.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_local_experts=a.experts,
        num_experts_per_tok=a.top_k,
        max_position_embeddings=a.seq,
        output_router_logits=True,
        router_aux_loss_coef=0.01,
    )
    model = MixtralForCausalLM(config).float().train()
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, a.vocab, (a.batch, a.seq + 1)))
    times = []
    for i in range(a.rounds + 1):
        t0 = time.perf_counter()
        out = model(input_ids=tokens[:, :-1], labels=tokens[:, :-1])
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first call warms up
            times.append(time.perf_counter() - t0)
    return {"fwd_bwd_ms": round(1e3 * statistics.median(times), 1), "torch_threads": torch.get_num_threads()}


def main() -> None:
    a = _args()
    out = {
        "shape": {
            k: getattr(a, k) for k in ("experts", "top_k", "layers", "width", "expert_ff", "batch", "seq")
        },
        "backend": jax.default_backend(),
        "jax": _jax_paths(a),
    }
    if a.torch:
        out["transformers_mixtral"] = _torch_mixtral(a)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
