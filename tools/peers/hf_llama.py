"""Peer (b) for the Llama comparison: transformers' LlamaForCausalLM (SDPA attention) built from a
LlamaConfig (random weights, no download), trained by ``torch_loop``: a full fine-tune (float32
weights, bf16 autocast on CUDA), or with ``--lora-rank R`` PEFT LoRA on every attention and MLP
projection over frozen base weights in the compute dtype (bfloat16 on CUDA)."""

from __future__ import annotations

import sys

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from tools.peers import common, torch_loop

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(args) -> LlamaForCausalLM:
    """A randomly initialised Llama of the flags' shape (untied embeddings, as TinyLlama)."""
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        intermediate_size=args.ffn or 4 * args.d_model,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads or args.heads,
        max_position_embeddings=args.seq,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


def with_lora(model: LlamaForCausalLM, rank: int, dtype: str):
    """``model`` in ``dtype`` with PEFT LoRA adapters (alpha 2·rank, no dropout) on PROJECTIONS."""
    from peft import LoraConfig, get_peft_model  # only this mode needs peft

    base = model.to(getattr(torch, dtype))
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=PROJECTIONS)
    return get_peft_model(base, lora)


def main(argv: list[str]) -> dict:
    """Parses the flags, builds the model, times it, prints one JSON line."""
    parser = common.shape_parser(__doc__)
    parser.add_argument("--kv-heads", type=int, default=0, help="0: as many as --heads")
    parser.add_argument("--ffn", type=int, default=0, help="MLP width; 0: 4 * --d-model")
    parser.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tune")
    torch_loop.add_compile_flag(parser)
    args = parser.parse_args(argv)
    args.compile = bool(args.compile)  # eager by default, as a transformers user would run it
    torch.manual_seed(0)
    model = build(args)
    num_params = sum(p.numel() for p in model.parameters())  # the base model's N (no position table)
    name = "hf_llama_full"
    if args.lora_rank:
        dtype = common.compute_dtype(args, torch_loop.pick_device(args))
        model, name = with_lora(model, args.lora_rank, dtype), f"hf_llama_lora_r{args.lora_rank}"
    return torch_loop.train(
        args,
        name,
        model,
        num_params=num_params,
        compile_model=args.compile,
        num_kv_heads=args.kv_heads or args.heads,
        d_ff=args.ffn or 4 * args.d_model,
        lora_rank=args.lora_rank,
        transformers_version=transformers.__version__,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
