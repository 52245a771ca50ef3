"""Qwen3-30B-A3B's architecture (model.preset='qwen3-30b-a3b'): a mixture of experts, 48 layers, 2048 wide,
32 query / 4 KV heads of 128 dims, q/k norms, 128 experts of width 768 per layer, top-8 renormalised
(norm_topk_prob), 151,936 tokens. 30.5B parameters, 3.35B of them run per token.

The experts are split over the ``expert`` mesh axis (8 ways), everything else is sharded over ``fsdp`` (the
remaining chips); the experts compute by capacity-limited ``dispatch`` with full remat, which fits a v5p
chip (39.4 GB of 95; see docs/moe.md). What one full fine-tuning step costs on 16 TPU v5p chips (per-chip
memory and FLOPs), on any CPU host with libtpu (``pip install 'codex-jax[tpu-compile]'``):
    codex-jax compile --config=configs/qwen3_30b_a3b.py --topology=v5p:2x2x4
Fine-tuning the real weights from a local Hugging Face folder (its config.json sets the architecture):
    codex-jax train --config=configs/qwen3_30b_a3b.py --workdir=runs/qwen3_30b_a3b \\
        --config.model.init_from=hf:/models/Qwen3-30B-A3B --config.data.source='/src/**/*.py'
"""

from codex_jax.config import preset_config


def get_config():
    """Returns the Qwen3-30B-A3B config: 16 x 2048-token batches, experts over an 8-way expert axis."""
    c = preset_config("qwen3-30b-a3b")
    c.parallel.mesh.expert = 8
    c.data.batch_size = 16  # the batch is split over every mesh axis: a multiple of the chips
    # Measured on v5p:2x2x4 (docs/moe.md): 'ragged' (TPU's 'auto') needs 139 GB of temporaries per chip under
    # GSPMD; 'dispatch' (capacity 1.25) with full remat fits in 39.4 GB per chip.
    c.model.moe_impl = "dispatch"
    c.model.remat = "full"
    return c
