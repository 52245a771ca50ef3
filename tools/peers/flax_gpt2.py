"""Peer (c): a bare Flax (linen) + optax GPT-2 training step under one jax.jit, without codex_jax:
pre-LayerNorm blocks, ``jax.nn.dot_product_attention`` (cuDNN on GPU unless ``--attention``),
float32 parameters, compute in ``--dtype``, AdamW with global-norm clipping, donated state."""

from __future__ import annotations

import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tools.peers import common


class Block(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x)); heads and dtype as configured."""

    heads: int
    dtype: jnp.dtype
    attention: str | None

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        d = x_BxTxD.shape[-1]
        h = nn.LayerNorm(dtype=self.dtype, name="ln_1")(x_BxTxD)
        qkv_BxTx3xHxQ = nn.DenseGeneral((3, self.heads, d // self.heads), dtype=self.dtype, name="c_attn")(h)
        q, k, v = (qkv_BxTx3xHxQ[:, :, i] for i in range(3))
        y_BxTxHxQ = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=self.attention)
        x_BxTxD = x_BxTxD + nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype, name="c_proj")(y_BxTxHxQ)
        h = nn.LayerNorm(dtype=self.dtype, name="ln_2")(x_BxTxD)
        h = nn.gelu(nn.Dense(4 * d, dtype=self.dtype, name="c_fc")(h), approximate=True)
        return x_BxTxD + nn.Dense(d, dtype=self.dtype, name="mlp_proj")(h)


class GPT(nn.Module):
    """Token + learned position embeddings, blocks, final LayerNorm, tied output head."""

    layers: int
    d_model: int
    heads: int
    vocab: int
    seq: int
    dtype: jnp.dtype
    attention: str | None

    @nn.compact
    def __call__(self, idx_BxT: jax.Array) -> jax.Array:
        init = nn.initializers.normal(0.02)
        wte = nn.Embed(self.vocab, self.d_model, dtype=self.dtype, embedding_init=init, name="wte")
        wpe = self.param("wpe", init, (self.seq, self.d_model))
        x = wte(idx_BxT) + wpe[: idx_BxT.shape[1]].astype(self.dtype)
        for i in range(self.layers):
            x = Block(self.heads, self.dtype, self.attention, name=f"h_{i}")(x)
        return wte.attend(nn.LayerNorm(dtype=self.dtype, name="ln_f")(x))


def pick_device(args) -> jax.Device:
    """The jax device ``--device`` names (auto: the default backend's first device)."""
    if args.device == "auto":
        return jax.devices()[0]
    return jax.devices("gpu" if args.device == "cuda" else "cpu")[0]


def device_memory_gb(device: jax.Device) -> dict:
    """Peak device memory from ``memory_stats`` when the backend reports it, else the process's peak RSS."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return {
            "peak_memory_gb": round(stats["peak_bytes_in_use"] / common.GIB, 3),
            "memory_kind": "peak_bytes_in_use",
        }
    return {"peak_memory_gb": round(common.process_peak_rss_gb(), 3), "memory_kind": "process_peak_rss"}


def make_step(model: GPT, tx: optax.GradientTransformation):
    """The jitted step (params, opt_state, tokens[B, T+1]) -> (params, opt_state, loss), state donated."""

    def loss_fn(params, tokens_BxT1):
        logits_BxTxV = model.apply({"params": params}, tokens_BxT1[:, :-1]).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, tokens_BxT1[:, 1:]).mean()

    def step(params, opt_state, tokens_BxT1):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens_BxT1)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def main(argv: list[str]) -> dict:
    """Parses the flags, builds the model, times it, prints one JSON line."""
    parser = common.shape_parser(__doc__)
    parser.add_argument(
        "--attention", choices=("auto", "xla", "cudnn"), default="auto", help="auto: cudnn on GPU"
    )
    args = parser.parse_args(argv)
    device = pick_device(args)
    on_gpu = device.platform == "gpu"
    dtype = common.compute_dtype(args, "cuda" if on_gpu else "cpu")
    attention = ("cudnn" if on_gpu else "xla") if args.attention == "auto" else args.attention
    model = GPT(args.layers, args.d_model, args.heads, args.vocab, args.seq, jnp.dtype(dtype), attention)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(args.lr, b1=0.9, b2=0.95, weight_decay=0.1))
    with jax.default_device(device):
        # The parameters depend on neither the attention kernel nor the input length: init traces 8
        # tokens with XLA attention (a full-length cuDNN trace can take minutes to compile).
        init_model = model.clone(attention="xla")
        params = jax.jit(init_model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
        num_params = (
            sum(p.size for p in jax.tree_util.tree_leaves(params)) - args.seq * args.d_model
        )  # no wpe
        state = [params, tx.init(params)]
        keys = jax.random.split(jax.random.key(1), min(8, args.steps + args.warmup + 1))
        batches = [jax.random.randint(k, (args.batch, args.seq + 1), 0, args.vocab) for k in keys]
        step_fn = make_step(model, tx)

        def step(i: int) -> jax.Array:
            state[0], state[1], loss = step_fn(state[0], state[1], batches[i % len(batches)])
            return loss

        compile_s, times, loss = common.time_steps(step, jax.block_until_ready, args)
    return common.report(
        args,
        "flax_gpt2",
        times=times,
        compile_s=compile_s,
        num_params=num_params,
        device_kind=device.device_kind,
        **device_memory_gb(device),
        loss=round(float(loss), 4),
        dtype=dtype,
        attention_impl=attention,
        jax_version=jax.__version__,
        flax_version=flax.__version__,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
