"""Hugging Face mixture-of-experts tensors <-> one MoE layer's parameters (``models/moe.py``).

A sparse layer's experts are stored one of two ways under its prefix (``model.layers.{i}.mlp`` for
Qwen3-MoE, ``model.layers.{i}.block_sparse_moe`` for Mixtral):

- one tensor per expert (what transformers' ``save_pretrained`` writes, and every published checkpoint):
  ``experts.{j}.gate_proj/up_proj/down_proj.weight`` (Qwen3-MoE) or ``experts.{j}.w1/w3/w2.weight``
  (Mixtral), each ``[out, in]``;
- transformers 5's fused 3-D tensors (its in-memory ``state_dict``, under ``model.layers.{i}.mlp`` for
  both families): ``experts.gate_up_proj [E, 2F, D]`` (gate rows first) and ``experts.down_proj [E, D, F]``.
  transformers 5.25's ``save_pretrained`` converts them back to one tensor per expert.

The router is ``gate.weight [E, D]`` in both. :func:`layer_params` reads either layout into
``{'router' [D, E], 'gate_proj' [E, D, F], 'up_proj' [E, D, F], 'down_proj' [E, F, D]}``;
:func:`layer_tensors` writes the per-expert layout, which the installed transformers loads.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from codex_jax.errors import UserError

# Per-expert tensor names: (gate, up, down).
PER_EXPERT_NAMES = {
    "mixtral": ("w1", "w3", "w2"),
    "qwen3_moe": ("gate_proj", "up_proj", "down_proj"),
}


def layer_params(
    get: Callable[[str], np.ndarray], names: set[str], prefix: str, num_experts: int, style: str, where: str
) -> dict[str, np.ndarray]:
    """One MoE layer's parameters from the tensors under ``prefix`` (``get(name)`` reads one; ``names``:
    every tensor name in the checkpoint; ``style``: a key of :data:`PER_EXPERT_NAMES`; ``where``: the
    checkpoint, for errors). Raises UserError naming a missing router or expert tensor."""

    def need(name: str) -> np.ndarray:
        if name not in names:
            raise UserError(
                f"{where}: tensor {name!r} is missing (a mixture-of-experts layer of {num_experts} experts)"
            )
        return np.asarray(get(name))

    router_ExD = need(f"{prefix}.gate.weight")
    if router_ExD.shape[0] != num_experts:
        raise UserError(
            f"{where}: tensor '{prefix}.gate.weight' has shape {router_ExD.shape}, expected {num_experts} "
            "experts"
        )
    fused = f"{prefix}.experts.gate_up_proj"
    if fused in names:
        gate_up_Ex2FxD = need(fused)
        down_ExDxF = need(f"{prefix}.experts.down_proj")
        F = gate_up_Ex2FxD.shape[1] // 2
        gate_ExFxD, up_ExFxD = gate_up_Ex2FxD[:, :F], gate_up_Ex2FxD[:, F:]
    else:
        g, u, d = PER_EXPERT_NAMES[style]

        def stack(part: str) -> np.ndarray:
            return np.stack([need(f"{prefix}.experts.{j}.{part}.weight") for j in range(num_experts)])

        gate_ExFxD, up_ExFxD, down_ExDxF = stack(g), stack(u), stack(d)
    for name, array in (("gate", gate_ExFxD), ("up", up_ExFxD), ("down", down_ExDxF)):
        if array.shape[0] != num_experts:
            raise UserError(f"{where}: {prefix} {name} experts: {array.shape[0]}, expected {num_experts}")
    return {
        "router": router_ExD.T,
        "gate_proj": gate_ExFxD.transpose(0, 2, 1),
        "up_proj": up_ExFxD.transpose(0, 2, 1),
        "down_proj": down_ExDxF.transpose(0, 2, 1),
    }


def layer_tensors(params: dict, prefix: str, style: str) -> dict[str, np.ndarray]:
    """The per-expert Hugging Face tensors of one MoE layer's parameters (inverse of :func:`layer_params`)."""
    g, u, d = PER_EXPERT_NAMES[style]
    out = {f"{prefix}.gate.weight": np.ascontiguousarray(np.asarray(params["router"]).T)}
    for ours, theirs in (("gate_proj", g), ("up_proj", u), ("down_proj", d)):
        stacked = np.asarray(params[ours])
        for j in range(stacked.shape[0]):
            out[f"{prefix}.experts.{j}.{theirs}.weight"] = np.ascontiguousarray(stacked[j].T)
    return out
