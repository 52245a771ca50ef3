"""Decoder-only transformer in Flax Linen: every family (``models/families.py``) behind one module.

The block is built from the config's features (norm kind and placement, q/k norm, MLP kind and activation,
biases, soft-caps, embedding scale, a per-layer sliding/full pattern with its RoPE bases); no code here
asks which family it is. Parameter names follow the Hugging Face Llama layout (``q_proj``,
``gate_proj``, ...) for every family, so LoRA target regexes and Hugging Face conversion read the same
everywhere:

    embed, pos_embed (learned positions), final_norm, lm_head (untied),
    layers_{i}/{attn_norm, attn/{q,k,v,o}_proj, attn/{q,k}_norm (qk_norm), post_attn_norm (post_norms),
               mlp_norm, mlp/{gate,up,down}_proj | mlp/{fc_in,fc_out}, post_mlp_norm (post_norms)}

Training calls ``model.apply({'params': p}, tokens_BxT)`` and gets float32 logits ``[B, T, V]``.
Generation passes a KV cache (see ``init_cache``), a ``cache_index`` (the cache column of the first
token) and per-row ``positions_BxT``, and gets ``(logits, new_cache)``. Attention is always causal
in cache columns (and limited to its layer's ``sliding_window`` columns on sliding layers); an optional
boolean ``mask_BxTxS`` (True: may attend) restricts it further, e.g. to hide the left padding of prompts.
Packed training rows pass ``segments_BxT`` instead (the example each token belongs to): attention stays
inside each segment, through the kernel ``models/attention.py`` picks.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from codex_jax.models import cpu_remat, grad_barrier, quant
from codex_jax.models.attention import causal_attention, masked_attention
from codex_jax.models.config import ModelConfig
from codex_jax.models.layers import Embed, Norm, dense, head_logits, param_or_quantized
from codex_jax.models.moe import MoeMlp
from codex_jax.models.rope import apply_rope, attention_factor, rope_frequencies


def attention_mask(T: int, S: int, first_column, sliding_window: int = 0, mask_BxTxS=None):
    """Boolean mask ``[B|1, 1, T, S]``: causal in cache columns, maybe windowed, maybe restricted.

    Query ``t`` sits in cache column ``first_column + t``; key ``s`` in column ``s``.
    """
    q_T = first_column + jnp.arange(T, dtype=jnp.int32)
    k_S = jnp.arange(S, dtype=jnp.int32)
    allowed_TxS = k_S[None, :] <= q_T[:, None]
    if sliding_window:
        allowed_TxS &= q_T[:, None] - k_S[None, :] < sliding_window
    allowed_BxTxS = allowed_TxS[None] if mask_BxTxS is None else allowed_TxS[None] & mask_BxTxS
    return allowed_BxTxS[:, None]


class Attention(nn.Module):
    """Multi-head / grouped-query attention: the kernel ``models/attention.py`` picks (XLA's with a mask)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        x_BxTxD,
        positions_BxT,
        deterministic,
        kv_cache=None,
        cache_index=None,
        mask=None,
        segments_BxT=None,
    ):
        cfg = self.cfg
        B, T, _ = x_BxTxD.shape
        H, N, K = cfg.dims_per_head, cfg.num_heads, cfg.num_kv_heads
        out_std = 0.02 / math.sqrt(2 * cfg.num_layers)

        def project(name, heads):
            y = dense(cfg, heads * H, name, bias=cfg.attention_bias)(x_BxTxD, deterministic)
            return y.reshape(B, T, heads, H)

        q_BxTxNxH = project("q_proj", N)
        k_BxTxKxH, v_BxTxKxH = project("k_proj", K), project("v_proj", K)
        if cfg.qk_norm:
            q_BxTxNxH = Norm(cfg, "rmsnorm", name="q_norm")(q_BxTxNxH)
            k_BxTxKxH = Norm(cfg, "rmsnorm", name="k_norm")(k_BxTxKxH)
        if cfg.positions == "rope":
            inv_freq, factor = rope_frequencies(cfg), attention_factor(cfg)
            q_BxTxNxH = apply_rope(q_BxTxNxH, positions_BxT, inv_freq, factor)
            k_BxTxKxH = apply_rope(k_BxTxKxH, positions_BxT, inv_freq, factor)

        new_cache = None
        k_BxSxKxH, v_BxSxKxH = k_BxTxKxH, v_BxTxKxH  # S == T without a cache
        if kv_cache is not None:

            def write(cache, new):
                return jax.lax.dynamic_update_slice_in_dim(cache, new.astype(cache.dtype), cache_index, 1)

            new_cache = {"k": write(kv_cache["k"], k_BxTxKxH), "v": write(kv_cache["v"], v_BxTxKxH)}
            k_BxSxKxH = new_cache["k"].astype(q_BxTxNxH.dtype)
            v_BxSxKxH = new_cache["v"].astype(q_BxTxNxH.dtype)
        if mask is None:
            out_BxTxNxH = causal_attention(cfg, q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, segments_BxT)
        else:
            out_BxTxNxH = masked_attention(cfg, q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask[cfg.sliding_window])
        out_BxTxD = out_BxTxNxH.reshape(B, T, N * H)
        o_proj = dense(cfg, cfg.d_model, "o_proj", bias=cfg.out_bias, std=out_std)
        y = o_proj(out_BxTxD, deterministic)
        y = nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
        return y, new_cache


ACTIVATIONS = {
    "silu": nn.silu,
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu": functools.partial(nn.gelu, approximate=False),
}


class Mlp(nn.Module):
    """``cfg.mlp``: a gated MLP (``act(gate) * up`` then down; SwiGLU, GeGLU) or a plain one (fc_in, act,
    fc_out), with ``cfg.activation``."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, deterministic):
        cfg = self.cfg
        act = ACTIVATIONS[cfg.activation]
        out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
        if cfg.mlp == "plain":
            h = dense(cfg, cfg.d_ff, "fc_in", bias=cfg.mlp_bias)(x_BxTxD, deterministic)
            y = dense(cfg, cfg.d_model, "fc_out", bias=cfg.mlp_bias, std=out_std)(act(h), deterministic)
        else:
            gate = dense(cfg, cfg.d_ff, "gate_proj", bias=cfg.mlp_bias)(x_BxTxD, deterministic)
            up = dense(cfg, cfg.d_ff, "up_proj", bias=cfg.mlp_bias)(x_BxTxD, deterministic)
            down = dense(cfg, cfg.d_model, "down_proj", bias=cfg.mlp_bias, std=out_std)
            y = down(act(gate) * up, deterministic)
        return nn.Dropout(cfg.dropout)(y, deterministic=deterministic)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)), with a norm on each output before
    its add where ``cfg.post_norms`` says so; the residual stream's gradient is materialised at both adds
    where ``models/grad_barrier.py`` says so. ``cfg`` is the layer's own (``ModelConfig.layer``); layer
    ``layer`` has a mixture-of-experts MLP (``models/moe.py``) where ``cfg.sparse_layer(layer)``."""

    cfg: ModelConfig
    layer: int = 0

    @nn.compact
    def __call__(
        self, x, positions_BxT, deterministic, kv_cache=None, cache_index=None, mask=None, segments_BxT=None
    ):
        cfg = self.cfg
        barrier = grad_barrier.enabled(cfg, jax.default_backend())
        if barrier:
            x = grad_barrier.residual_barrier(x)
        attn_out, new_cache = Attention(cfg, name="attn")(
            Norm(cfg, name="attn_norm")(x),
            positions_BxT,
            deterministic,
            kv_cache,
            cache_index,
            mask,
            segments_BxT,
        )
        if cfg.post_norms:
            attn_out = Norm(cfg, name="post_attn_norm")(attn_out)
        x = x + attn_out
        if barrier:
            x = grad_barrier.residual_barrier(x)
        mlp_cls = MoeMlp if cfg.sparse_layer(self.layer) else Mlp
        mlp_out = mlp_cls(cfg, name="mlp")(Norm(cfg, name="mlp_norm")(x), deterministic)
        if cfg.post_norms:
            mlp_out = Norm(cfg, name="post_mlp_norm")(mlp_out)
        return x + mlp_out, new_cache


_REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nn.Module):
    """The language model. See the module docstring for the call conventions."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens_BxT,
        *,
        positions_BxT=None,
        deterministic: bool = True,
        kv_cache=None,
        cache_index=None,
        mask_BxTxS=None,
        segments_BxT=None,
        hidden: bool = False,
    ):
        """Logits ``[B, T, V]`` (float32), and the updated cache when ``kv_cache`` is given.

        With ``hidden=True`` (no cache): ``(final hidden states [B, T, D], output head [V, D])`` in the
        compute dtype instead of the logits, for a loss that computes the logits chunk by chunk
        (``compute/loss.py``); ``logits == softcap(hidden @ head.T, cfg.final_softcap)`` in float32.
        """
        B, T = tokens_BxT.shape
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        embed, x = self._embed(tokens_BxT, positions_BxT, deterministic)
        x, new_cache = self._blocks(
            x, positions_BxT, deterministic, kv_cache, cache_index, mask_BxTxS, segments_BxT
        )
        x_BxTxD = Norm(self.cfg, name="final_norm")(x)
        head = self._head(embed)
        if hidden:  # the chunked loss multiplies by the head itself: a quantized one is dequantized first
            is_q = quant.is_quantized(head)
            head_VxD = quant.dequantize(head, self.cfg.compute_dtype).T if is_q else head
            return x_BxTxD, head_VxD
        logits_BxTxV = head_logits(self.cfg, x_BxTxD, head)
        if kv_cache is None:
            return logits_BxTxV
        return logits_BxTxV, new_cache

    def _embed(self, tokens_BxT, positions_BxT, deterministic):
        """``(the token embedding module, embedded tokens [B, T, D])``: scaled by ``sqrt(d_model)`` with
        ``embed_scale`` (in the compute dtype, as Gemma), plus learned positions (``positions='learned'``)."""
        cfg = self.cfg
        embed = Embed(cfg, cfg.vocab_size, name="embed")
        x = embed(tokens_BxT)
        if cfg.embed_scale:
            x = x * jnp.asarray(math.sqrt(cfg.d_model), cfg.compute_dtype)
        if cfg.positions == "learned":
            x = x + Embed(cfg, cfg.max_seq_len, 0.01, name="pos_embed")(positions_BxT)
        return embed, nn.Dropout(cfg.dropout)(x, deterministic=deterministic)

    def _blocks(self, x, positions_BxT, deterministic, kv_cache, cache_index, mask_BxTxS, segments_BxT):
        """The residual stream after every block, and each layer's updated cache."""
        cfg = self.cfg
        T = x.shape[1]
        block_cls = Block
        if cfg.remat == "full" and kv_cache is None and grad_barrier.enabled(cfg, jax.default_backend()):
            block_cls = cpu_remat.lifted(Block, static_argnums=(3,))  # nn.remat's does not hold on CPU
        elif cfg.remat != "none" and kv_cache is None:
            block_cls = nn.remat(Block, static_argnums=(3,), policy=_REMAT_POLICIES[cfg.remat])
        masks = None  # one per distinct window (a dict keeps remat's arguments hashable-free)
        if kv_cache is not None or mask_BxTxS is not None:
            cache_index = 0 if cache_index is None else cache_index
            S = T if kv_cache is None else kv_cache["layers_0"]["k"].shape[1]
            masks = {w: attention_mask(T, S, cache_index, w, mask_BxTxS) for w in cfg.windows}
        if masks is not None and segments_BxT is not None:
            raise ValueError("segments_BxT is for training rows: not with a KV cache or mask_BxTxS")
        new_cache = {}
        for i in range(cfg.num_layers):
            layer_cache = None if kv_cache is None else kv_cache[f"layers_{i}"]
            x, layer_new = block_cls(cfg.layer(i), i, name=f"layers_{i}")(
                x, positions_BxT, deterministic, layer_cache, cache_index, masks, segments_BxT
            )
            new_cache[f"layers_{i}"] = layer_new
        return x, new_cache

    def _head(self, embed: Embed):
        """The output projection ``[V, D]`` in the compute dtype (the token embedding when tied, else
        ``lm_head``), or its quantized form (models/quant.py, as the kernel ``[D, V]``)."""
        cfg = self.cfg
        if cfg.tie_embeddings:
            head = embed.table
        else:
            head = param_or_quantized(self, "lm_head", 0.02, (cfg.vocab_size, cfg.d_model))
        return head if quant.is_quantized(head) else head.astype(cfg.compute_dtype)


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=None):
    """A zeroed KV cache: ``{'layers_i': {'k': [B, S, K, H], 'v': [B, S, K, H]}}``."""
    dtype = dtype or cfg.compute_dtype
    shape = (batch_size, max_len, cfg.num_kv_heads, cfg.dims_per_head)
    return {
        f"layers_{i}": {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
        for i in range(cfg.num_layers)
    }


def init_params(cfg: ModelConfig, rng: jax.Array):
    """Randomly initialised parameters for ``cfg`` (jitted: one compiled call, not op-by-op).

    The parameters do not depend on the sequence length or the attention kernel, so the forward pass that
    Flax traces for init runs on 8 tokens with XLA attention and no remat: a full-length cuDNN forward here
    once cost minutes of GPU compile time.
    """
    init_cfg = dataclasses.replace(cfg, attention_impl="xla", remat="none", dropout=0.0)
    return _init_params(init_cfg, rng)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _init_params(cfg: ModelConfig, rng: jax.Array):
    tokens = jnp.zeros((1, min(8, cfg.max_seq_len)), jnp.int32)
    return Transformer(cfg).init({"params": rng}, tokens)["params"]
