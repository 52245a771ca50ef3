"""A 1.1B Llama in TinyLlama's shape: 22 layers, 2048 wide, 32 query / 4 KV heads, seq 2048.

For benchmarking (``tools/bench.py``) and for fine-tuning with a pretrained tokenizer
(``data.tokenizer``, e.g. TinyLlama's 32,000-piece SentencePiece model) and imported weights: left
at ``''``, the trainer would train a 32,000-piece tokenizer on the standard library, too small a
corpus for that. Parameters stay float32 (a full fine-tune, like the transformers reference with
bf16 autocast); ``attention_impl='auto'``: cuDNN on a GPU, Pallas on a TPU, XLA on CPU.
    python tools/bench.py --config=configs/llama_1b.py --steps 10
"""

from codex_jax.config import default_config


def get_config():
    """Returns the Llama 1.1B config."""
    c = default_config()
    c.data.seq_len = 2048
    c.data.batch_size = 4
    c.model.family = "llama"
    c.model.num_layers = 22
    c.model.d_model = 2048
    c.model.num_heads = 32
    c.model.num_kv_heads = 4
    c.model.d_ff = 5632
    c.model.vocab_size = 32000
    c.model.dropout = 0.0
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.attention_impl = "auto"
    c.model.remat = "none"
    c.model.tie_embeddings = False
    c.model.rope_theta = 10000.0
    c.model.norm_eps = 1e-5
    c.train.steps = 1000
    c.train.warmup_steps = 20
    c.train.learning_rate = 1e-4
    c.train.log_every = 10
    c.train.eval_every = 200
    c.eval.num_batches = 4
    c.checkpoint.every_steps = 200
    return c
