"""Peer implementations of the training step, for the performance comparison in tools/gpu_check.sh.

Each module is a reference a user might pick instead of codex_jax, written here from scratch, and
prints ONE JSON line (tokens_per_second, step_ms, model_tflops_per_second, mfu, peak_memory_gb,
compile_s, ...) for the same shape flags (``common.shape_parser``); run from the repository root:

    python -m tools.peers.nanogpt   [--layers 12 --d-model 768 --heads 12 --seq 1024 --batch 32 ...]
    python -m tools.peers.hf_gpt2   [same flags]
    python -m tools.peers.flax_gpt2 [same flags] [--attention auto|xla|cudnn]
    python -m tools.peers.hf_llama  [same flags] [--kv-heads K --ffn F] [--lora-rank 16]

``common`` holds the flags, the timing loop and the JSON line; ``torch_loop`` the PyTorch step that
the three torch peers share. Random tokens, models built from configs: nothing is downloaded.
"""
