"""Peer (b): Hugging Face transformers' GPT2LMHeadModel (SDPA attention, no dropout), built from a
GPT2Config (random weights, no download) and trained by ``torch_loop``; eager unless ``--compile``."""

from __future__ import annotations

import sys

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from tools.peers import common, torch_loop


def main(argv: list[str]) -> dict:
    """Parses the flags, builds the model, times it, prints one JSON line."""
    parser = common.shape_parser(__doc__)
    torch_loop.add_compile_flag(parser)
    args = parser.parse_args(argv)
    args.compile = bool(args.compile)  # eager by default, as a transformers user would run it
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=args.vocab,
        n_positions=args.seq,
        n_embd=args.d_model,
        n_layer=args.layers,
        n_head=args.heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    model = GPT2LMHeadModel(cfg)
    num_params = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return torch_loop.train(
        args,
        "hf_gpt2",
        model,
        num_params=num_params,
        compile_model=args.compile,
        transformers_version=transformers.__version__,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
