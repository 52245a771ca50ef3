"""The PyTorch training step every torch peer times: random tokens, bf16 autocast (CUDA) or float32,
cross entropy in float32, global-norm clipping at 1.0, AdamW (fused on CUDA), optional torch.compile."""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from tools.peers import common


def pick_device(args) -> str:
    """'cuda' or 'cpu' from ``--device`` (auto: cuda when torch sees a GPU)."""
    if args.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return args.device


def device_kind(device: str) -> str:
    """The device's name as the MFU peak table knows it ('NVIDIA H200'), or 'cpu'."""
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def add_compile_flag(parser) -> None:
    """``--compile`` / ``--no-compile``: wrap the model in torch.compile (default: on CUDA only)."""
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)


def wants_compile(args) -> bool:
    """Whether ``--compile`` (or its default) asks for torch.compile on the chosen device."""
    return pick_device(args) == "cuda" if args.compile is None else args.compile


def train(args, name: str, model: torch.nn.Module, *, num_params: int, compile_model: bool, **extra) -> dict:
    """Times ``model``'s training step (module doc) and prints the peer's JSON line.

    ``model(tokens)`` returns logits or an object with ``.logits``; only parameters with
    ``requires_grad`` get optimizer state (LoRA). ``num_params`` is N of the FLOPs estimate.
    """
    device = pick_device(args)
    dtype = common.compute_dtype(args, device)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    model = model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        trainable, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=device == "cuda"
    )
    forward = torch.compile(model) if compile_model else model
    gen = torch.Generator(device=device).manual_seed(0)
    batches = [
        torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device, generator=gen)
        for _ in range(min(8, args.steps + args.warmup + 1))
    ]

    def step(i: int) -> torch.Tensor:
        tokens = batches[i % len(batches)]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            out = forward(tokens[:, :-1])
        logits = out if torch.is_tensor(out) else out.logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    def sync(loss: torch.Tensor) -> None:
        loss.item()  # waits for the step's kernels

    compile_s, times, loss = common.time_steps(step, sync, args)
    if device == "cuda":
        memory = {
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / common.GIB, 3),
            "memory_kind": "torch.cuda.max_memory_allocated",
        }
    else:
        memory = {"peak_memory_gb": round(common.process_peak_rss_gb(), 3), "memory_kind": "process_peak_rss"}
    return common.report(
        args,
        name,
        times=times,
        compile_s=compile_s,
        num_params=num_params,
        device_kind=device_kind(device),
        **memory,
        loss=round(float(loss), 4),
        dtype=dtype,
        torch_compile=compile_model,
        trainable_params=sum(p.numel() for p in trainable),
        torch_version=torch.__version__,
        **extra,
    )
