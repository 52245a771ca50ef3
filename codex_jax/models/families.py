"""Model families as data: each family is a table entry of architecture features, read by one Transformer.

A :class:`~codex_jax.models.config.ModelConfig` field left at ``None`` takes its family's value from
:data:`FAMILIES` (so ``ModelConfig(family='gemma2')`` is a Gemma 2 block); any field can still be set on its
own. The features, and what reads them (``models/transformer.py`` unless said otherwise):

===================  =====================================================================================
``norm``             ``'rmsnorm'`` or ``'layernorm'`` (with a bias)
``norm_offset``      RMSNorm multiplies by ``norm_offset + scale`` (Gemma stores ``scale - 1``: offset 1.0)
``post_norms``       norms on the attention and MLP outputs before each residual add (Gemma 2/3's four
                     norms per block)
``qk_norm``          an RMSNorm over each head's queries and keys before RoPE (Qwen3, Gemma 3)
``positions``        ``'rope'`` or ``'learned'`` (GPT-2's position embedding)
``mlp``              ``'gated'`` (gate/up/down projections) or ``'plain'`` (fc_in, activation, fc_out)
``activation``       ``'silu'``, ``'gelu_tanh'`` or ``'gelu'`` (exact)
``attention_bias``   biases on the q/k/v projections
``out_bias``         a bias on the attention output projection
``mlp_bias``         biases on the MLP projections
``embed_scale``      embeddings multiplied by ``sqrt(d_model)`` (Gemma)
===================  =====================================================================================

Per-model numbers that no family fixes are plain fields with "off" defaults: ``attn_softcap`` and
``final_softcap`` (``cap * tanh(x / cap)`` on attention scores and on the output logits), ``query_scale_dim``
(scores scaled by ``query_scale_dim ** -0.5`` instead of ``head_dim ** -0.5``), ``layer_types`` (a
``'sliding'``/``'full'`` attention pattern over the layers, with ``rope_local_theta`` for the sliding ones)
and ``rope_fraction`` (partial rotary embeddings). Adding a family is one entry here and one in
``interop/hf_types.py`` (its Hugging Face names and config.json fields).
"""

from __future__ import annotations

from typing import Any

# Every feature with the value a family gets when its entry does not name it (Llama's block).
FEATURE_DEFAULTS: dict[str, Any] = dict(
    norm="rmsnorm",
    norm_offset=0.0,
    post_norms=False,
    qk_norm=False,
    positions="rope",
    mlp="gated",
    activation="silu",
    attention_bias=False,
    out_bias=False,
    mlp_bias=False,
    embed_scale=False,
)

FEATURE_CHOICES: dict[str, tuple[str, ...]] = dict(
    norm=("rmsnorm", "layernorm"),
    positions=("rope", "learned"),
    mlp=("gated", "plain"),
    activation=("silu", "gelu_tanh", "gelu"),
)

_GEMMA = dict(norm_offset=1.0, activation="gelu_tanh", embed_scale=True)

# family -> (one line for `codex-jax models`, the features it changes from FEATURE_DEFAULTS)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": (
        "GPT-2: learned positions, LayerNorm, GELU MLP, biases everywhere",
        dict(
            norm="layernorm",
            positions="learned",
            mlp="plain",
            activation="gelu_tanh",
            attention_bias=True,
            out_bias=True,
            mlp_bias=True,
        ),
    ),
    "llama": ("Llama, Mistral, Qwen2: RoPE, RMSNorm, SwiGLU (q/k/v biases for Qwen2)", {}),
    "qwen3": ("Qwen3: Llama's block with an RMSNorm on each head's q and k", dict(qk_norm=True)),
    "gemma": ("Gemma, CodeGemma: GELU-tanh gated MLP, (1 + w) RMSNorm, scaled embeddings", _GEMMA),
    "gemma2": (
        "Gemma 2: Gemma with four norms per block, soft-caps, alternating sliding/full layers",
        dict(_GEMMA, post_norms=True),
    ),
    "gemma3": (
        "Gemma 3 (text): Gemma 2's block with q/k norms, local:global layers with their own RoPE bases",
        dict(_GEMMA, post_norms=True, qk_norm=True),
    ),
    "starcoder2": (
        "StarCoder2: LayerNorm with biases, plain GELU MLP, biases, GQA, sliding window",
        dict(
            norm="layernorm",
            mlp="plain",
            activation="gelu_tanh",
            attention_bias=True,
            out_bias=True,
            mlp_bias=True,
        ),
    ),
    "phi3": ("Phi-3/4: Llama's block (Hugging Face fuses qkv and gate_up; split on import)", {}),
    # Mixtures of experts: the MoE fields (num_experts, ...) are per-model numbers, models/moe.py the MLP.
    "mixtral": ("Mixtral: Llama's block with a sparse mixture-of-experts MLP (top-k renormalised)", {}),
    "qwen3_moe": (
        "Qwen3-MoE (Qwen3-Coder): Qwen3's block with a sparse mixture-of-experts MLP, dense layers mixed in",
        dict(qk_norm=True),
    ),
}

LAYER_TYPES = ("full", "sliding")


def features(family: str) -> dict[str, Any]:
    """Every feature's value for ``family`` (a key of :data:`FAMILIES`)."""
    return {**FEATURE_DEFAULTS, **FAMILIES[family][1]}


def pattern(num_layers: int, period: int) -> tuple[str, ...]:
    """``layer_types`` with every ``period``-th layer full and the others sliding (Gemma 2: 2, Gemma 3: 6)."""
    return tuple("full" if (i + 1) % period == 0 else "sliding" for i in range(num_layers))
