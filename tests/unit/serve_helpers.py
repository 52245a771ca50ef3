"""A tiny Hugging Face folder to serve (issue 29): a random 2-layer Llama over a ChatML tokenizer."""

from __future__ import annotations

from pathlib import Path

from hf_helpers import random_hf_model
from sft_helpers import chat_tokenizer_folder


def tiny_hf_folder(folder: Path, context: int = 128) -> Path:
    """``folder`` holding a random 2-layer, 64-wide Llama (GQA 4/2, ``context`` positions) and a
    byte-level BPE ChatML tokenizer of the same 320 ids (EOS ``<|im_end|>``)."""
    import transformers

    chat_tokenizer_folder(folder)
    eos = transformers.AutoTokenizer.from_pretrained(folder).eos_token_id
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        tie_word_embeddings=False,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    random_hf_model(config, folder)
    return folder
