"""Shared helpers of the SFT tests (issue 14): a tiny local chat tokenizer and the example fixtures."""

from __future__ import annotations

import json
from pathlib import Path

SFT = Path(__file__).resolve().parent.parent / "fixtures" / "sft"

# A Qwen2-style template; the assistant answer and its end-of-turn token are a {% generation %} block.
CHATML_GENERATION = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}{%- else %}{{ message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
# The same template without the generation markers (what most chat templates look like).
CHATML = CHATML_GENERATION.replace("{% generation %}", "").replace("{% endgeneration %}", "")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def fixture_texts() -> list[str]:
    """Every text of the example fixtures (to train a small tokenizer on)."""
    texts = []
    for line in (SFT / "chat.jsonl").read_text().splitlines():
        texts += [m["content"] for m in json.loads(line)["messages"]]
    return texts + ["system user assistant hi hello no answer"]


def chat_tokenizer_folder(folder: Path, template: str = CHATML_GENERATION, vocab_size: int = 320) -> Path:
    """A byte-level BPE Hugging Face tokenizer folder with ChatML special tokens and ``template``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(fixture_texts(), trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = template
    fast.save_pretrained(str(folder))
    return folder
