"""Peer (a): a nanoGPT-style GPT-2 in plain PyTorch (SDPA attention, tied embeddings, pre-LayerNorm,
tanh GELU), trained by ``torch_loop`` with torch.compile on CUDA unless ``--no-compile``."""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from tools.peers import common, torch_loop


class SelfAttention(nn.Module):
    """Causal multi-head attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x_BxTxD: torch.Tensor) -> torch.Tensor:
        b, t, d = x_BxTxD.shape
        qkv = self.c_attn(x_BxTxD).view(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, Q]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads)
        self.c_fc = nn.Linear(d_model, 4 * d_model)
        self.mlp_proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    """Token + learned position embeddings, ``layers`` blocks, final LayerNorm, tied output head."""

    def __init__(self, layers: int, d_model: int, heads: int, vocab: int, seq: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d_model), nn.Embedding(seq, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        for name, w in self.named_parameters():
            if w.dim() == 2:  # nanoGPT's init: N(0, 0.02), residual projections scaled by 1/sqrt(2L)
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(w, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(w)

    def forward(self, idx_BxT: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx_BxT.shape[1], device=idx_BxT.device)
        x = self.wte(idx_BxT) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)


def main(argv: list[str]) -> dict:
    """Parses the flags, builds the model, times it, prints one JSON line."""
    parser = common.shape_parser(__doc__)
    torch_loop.add_compile_flag(parser)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = GPT(args.layers, args.d_model, args.heads, args.vocab, args.seq)
    num_params = sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()
    return torch_loop.train(
        args, "nanogpt", model, num_params=num_params, compile_model=torch_loop.wants_compile(args)
    )


if __name__ == "__main__":
    main(sys.argv[1:])
