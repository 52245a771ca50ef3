"""GPT-2 small (124M) for one GPU: 12 layers, 768 wide, seq 1024, batch 32, bf16, attention 'auto'.

For benchmarking (``tools/bench.py``) and for training with a pretrained tokenizer
(``data.tokenizer``): left at ``''``, the trainer would train a 50,304-piece tokenizer on the
standard library, too small a corpus for a vocabulary that size. ``attention_impl='auto'`` is cuDNN
flash attention on a GPU, the Pallas kernel on a TPU and XLA's attention on CPU.
    python tools/bench.py --config=configs/gpt2_small.py --steps 20
"""

from codex_jax.config import default_config


def get_config():
    """Returns the GPT-2 small config."""
    c = default_config()
    c.data.seq_len = 1024
    c.data.batch_size = 32
    c.model.family = "gpt2"
    c.model.num_layers = 12
    c.model.d_model = 768
    c.model.num_heads = 12
    c.model.num_kv_heads = 12
    c.model.d_ff = 3072
    c.model.vocab_size = 50304  # GPT-2's 50,257 padded to a multiple of 128
    c.model.dropout = 0.0
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.attention_impl = "auto"
    c.model.remat = "none"
    c.model.tie_embeddings = True
    c.train.steps = 5000
    c.train.warmup_steps = 100
    c.train.learning_rate = 6e-4
    c.train.log_every = 20
    c.train.eval_every = 500
    c.checkpoint.every_steps = 1000
    return c
