"""The ``model.*`` keys of the config schema (:data:`codex_jax.config.schema.SCHEMA` holds them in order):
the architecture (family, preset, shape, experts, init_from) and the run-time model settings."""

from __future__ import annotations

from typing import Any

# key -> (default, meaning), as in schema.SCHEMA
MODEL_SCHEMA: dict[str, tuple[Any, str]] = {
    "model.family": (
        "gpt2",
        "The block's features (models/families.py; `codex-jax models` lists them): 'gpt2' (learned "
        "positions, LayerNorm, GELU), 'llama' (RoPE, RMSNorm, SwiGLU), 'qwen3' (llama + q/k norms), "
        "'gemma', 'gemma2', 'gemma3', 'starcoder2' or 'phi3'.",
    ),
    "model.preset": (
        "",
        "A named architecture (`codex-jax models`: 'qwen3-0.6b', 'gemma-3-1b', 'starcoder2-3b', ...): it "
        "sets every architecture field (the model.* shape keys are ignored, and the log says which "
        "differ); the run-time keys (dtype, param_dtype, dropout, attention_impl, remat, grad_barriers, "
        "loss_chunk, moe_impl, capacity_factor) still apply. '': the model.* keys. With model.init_from, "
        "its config.json or run sets the architecture instead (the log says so).",
    ),
    "model.num_layers": (4, "Transformer blocks."),
    "model.num_heads": (4, "Query heads."),
    "model.num_kv_heads": (4, "Key/value heads (grouped-query attention when < num_heads)."),
    "model.d_model": (256, "Residual stream width."),
    "model.d_ff": (1024, "MLP hidden width."),
    "model.vocab_size": (
        4096,
        "Vocabulary size (the trained tokenizer gets exactly this many pieces).",
    ),
    "model.dropout": (0.0, "Dropout rate on embeddings, attention and MLP outputs."),
    "model.dtype": (
        "float32",
        "Compute dtype ('float32' or 'bfloat16'); logits and loss stay float32.",
    ),
    "model.param_dtype": ("float32", "Parameter (and optimizer state) dtype."),
    "model.attention_impl": (
        "auto",
        "Attention kernel: 'auto' (cuDNN flash attention on GPU with bfloat16/float16 compute, the Pallas "
        "flash attention kernel on TPU when data.seq_len is a multiple of 128, 'blocked' on CPU, XLA "
        "wherever the fast kernel does not apply; the choice and any fallback's reason are logged), 'xla', "
        "'cudnn', 'pallas' (TPU) or 'blocked' (up to 512 positions: causal blocks of seq_len/8 queries, at "
        "least 32, each against only the keys before it, about half of XLA's work; beyond: blocks of 256 "
        "queries in a loop, probabilities recomputed in backward, far less memory than 'xla').",
    ),
    "model.remat": (
        "none",
        "Rematerialisation per block: 'none', 'full' or 'dots_saveable'. Where model.grad_barriers is on "
        "(CPU by default) 'full' recomputes each block inside a conditional on its gradient "
        "(models/cpu_remat.py), which XLA's CPU pipeline cannot merge with the forward pass; elsewhere it "
        "is Flax's nn.remat.",
    ),
    "model.grad_barriers": (
        "auto",
        "'on': backward computes the residual stream's gradient once at each residual add, where XLA's CPU "
        "fusion would recompute it in every consumer (a 4-layer CPU step: 49 -> 40 ms); 'off'; 'auto' (the "
        "default): on for CPU only. Same values within float32 rounding.",
    ),
    "model.loss_chunk": (
        256,
        "The loss (and eval's loss/accuracy) computes the float32 logits this many sequence positions at "
        "a time, never all [batch, seq_len, vocab] at once (its gradients in the same pass: no extra "
        "FLOPs); 0 or >= data.seq_len: all at once. Same result within float32 rounding.",
    ),
    "model.num_experts": (
        0,
        "Mixture of experts (llama family): experts per sparse layer; 0: every layer has a dense MLP.",
    ),
    "model.experts_per_token": (2, "Mixture of experts: the top-k experts each token is routed to."),
    "model.moe_d_ff": (0, "Mixture of experts: each expert's hidden width (0: model.d_ff)."),
    "model.norm_topk_prob": (True, "Mixture of experts: renormalise the top-k routing weights to sum to 1."),
    "model.router_aux_loss_coef": (
        0.0,
        "Weight of the load-balancing loss (Switch Transformer's, as transformers computes it) in the "
        "training objective; logged as train/moe_balance.",
    ),
    "model.router_z_loss_coef": (
        0.0,
        "Weight of the router z-loss (mean squared logsumexp of the router logits) in the training "
        "objective; logged as train/router_z.",
    ),
    "model.decoder_sparse_step": (
        1,
        "Mixture of experts: layer i is sparse when (i + 1) % decoder_sparse_step == 0 (a Hugging Face "
        "checkpoint's mlp_only_layers also keep a dense MLP).",
    ),
    "model.moe_impl": (
        "auto",
        "Expert computation: 'auto' ('ragged' on TPU/GPU, 'blocks' on CPU; the choice is logged), 'ragged' "
        "(dropless, jax.lax.ragged_dot), 'blocks' (dropless, each expert's tokens padded to blocks, one "
        "batched matmul), 'dispatch' (at most model.capacity_factor * tokens * k / experts tokens per "
        "expert; the dropped fraction is logged as train/moe_dropped) or 'dense' (every expert on every "
        "token: the reference).",
    ),
    "model.capacity_factor": (1.25, "moe_impl='dispatch': expert capacity as a multiple of the mean load."),
    "model.rope_theta": (10000.0, "RoPE base (llama)."),
    "model.norm_eps": (1e-5, "Epsilon of LayerNorm / RMSNorm."),
    "model.tie_embeddings": (True, "Share the input embedding with the output projection."),
    "model.init_from": (
        "",
        "'hf:/path/to/folder': start from a local Hugging Face checkpoint (config.json + "
        "safetensors); its config.json sets the architecture (the model.* shape keys are ignored) "
        "and its tokenizer is used. 'workdir:/path/to/run': start from the params of another "
        "run's latest checkpoint (its architecture and tokenizer likewise). '': random init.",
    ),
}
