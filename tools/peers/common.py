"""What every peer shares: the shape flags, the timing loop, the FLOPs estimate and the JSON line."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable

from codex_jax.metrics.perf import peak_flops_per_device

GIB = 2**30


def shape_parser(description: str) -> argparse.ArgumentParser:
    """The flags every peer takes; defaults are GPT-2 small at seq 1024, batch 32."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (compiling) one")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda if present")
    p.add_argument(
        "--dtype",
        choices=("auto", "bfloat16", "float32"),
        default="auto",
        help="compute dtype; auto: bfloat16 on cuda, float32 on cpu",
    )
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak for MFU (default: known devices)"
    )
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--label", default="", help="free text copied into the JSON line")
    return p


def compute_dtype(args: argparse.Namespace, device: str) -> str:
    """The compute dtype name the flags ask for on ``device`` ('cuda' or 'cpu')."""
    if args.dtype != "auto":
        return args.dtype
    return "bfloat16" if device == "cuda" else "float32"


def flops_per_token(num_params: int, layers: int, heads: int, head_dim: int, seq: int) -> float:
    """nanoGPT's training FLOPs per token, 6·N + 12·L·H·Q·T (N without position embeddings)."""
    return 6.0 * num_params + 12.0 * layers * heads * head_dim * seq


def process_peak_rss_gb() -> float:
    """This process's peak resident set size in GiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def time_steps(
    step: Callable[[int], object], sync: Callable[[object], None], args
) -> tuple[float, list, object]:
    """Runs step(i): one first (compiling) step, ``args.warmup`` untimed, ``args.steps`` timed, each
    waited for with ``sync(result)``. Returns (first step's seconds, timed seconds, last result)."""
    start = time.perf_counter()
    out = step(0)
    sync(out)
    compile_s = time.perf_counter() - start
    for i in range(args.warmup):
        sync(step(1 + i))
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        out = step(1 + args.warmup + i)
        sync(out)
        times.append(time.perf_counter() - start)
    return compile_s, times, out


def report(
    args, name: str, *, times: list, compile_s: float, num_params: int, device_kind: str, **extra
) -> dict:
    """Prints (and returns) the peer's one JSON line; ``extra`` adds fields (memory, loss, versions)."""
    tokens_per_step = args.batch * args.seq
    tps = tokens_per_step * len(times) / sum(times)
    fpt = flops_per_token(num_params, args.layers, args.heads, args.d_model // args.heads, args.seq)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops_per_device(device_kind)
    line = {
        "name": name,
        "label": args.label,
        "tokens_per_second": round(tps, 1),
        "step_ms": round(statistics.median(times) * 1e3, 3),
        "model_tflops_per_second": round(fpt * tps / 1e12, 6),
        "mfu": round(fpt * tps / peak, 6) if peak else None,
        "peak_tflops": peak / 1e12 if peak else None,
        "compile_s": round(compile_s, 2),
        "num_params": num_params,
        "flops_per_token": fpt,
        "tokens_per_step": tokens_per_step,
        "device_kind": device_kind,
        **extra,
        "num_layers": args.layers,
        "d_model": args.d_model,
        "num_heads": args.heads,
        "seq_len": args.seq,
        "batch_size": args.batch,
        "vocab_size": args.vocab,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    print(json.dumps(line), flush=True)
    return line
