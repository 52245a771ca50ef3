"""Examples to token ids and a loss mask: prompt/completion pairs and chat conversations.

A mask entry is 1 where the token is trained: by default (``train_on='completion'``) the completion
and the EOS after it, or every assistant turn and the end-of-turn token(s) its template puts after it;
``train_on='all'`` trains every token.

Chat conversations are rendered with a Hugging Face tokenizer's own ``chat_template`` (or a template
given as text) through ``transformers``. A template with ``{% generation %}`` blocks gives the mask
that ``apply_chat_template(..., return_assistant_tokens_mask=True)`` gives; any other template is
rendered once per assistant turn to find where each assistant answer starts and ends, and a token is
trained when its first character lies in an answer. A tokenizer without a template (e.g. one trained
here) uses the built-in template :data:`BUILTIN_TEMPLATE`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from codex_jax.tokenizers.base import Tokenizer
from codex_jax.tokenizers.hf import HFTokenizer

_GENERATION = re.compile(r"{%-?\s*generation\s*-?%}")

BUILTIN_TEMPLATE = """\
Built-in chat template (tokenizers without their own): every turn is the marker '<|system|>',
'<|user|>' or '<|assistant|>', a newline and the content; a user or system turn ends with a newline,
an assistant turn with EOS (trained with the answer). A prompt for generation ends with
'<|assistant|>' and a newline; generation stops at EOS. A tokenizer trained here for a chat run has
the markers as single pieces (:data:`CHAT_MARKERS`); any other encodes them as text."""
CHAT_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>")

Turns = Sequence[tuple[str, str]]


class RenderError(ValueError):
    """The chat template failed to render a conversation (a bad record)."""


def encode_example(
    tokenizer: Tokenizer, turns: Turns, train_on: str = "completion", template: str = ""
) -> tuple[list[int], list[int]]:
    """``(ids, mask)`` of one example (prompt/completion turns, or chat turns); RenderError when the
    chat template fails."""
    if turns and turns[0][0] == "prompt":
        (_, prompt), (_, completion) = turns
        head, tail = tokenizer.encode(prompt), tokenizer.encode(completion) + [tokenizer.eos_id]
        ids, mask = head + tail, [0] * len(head) + [1] * len(tail)
    else:
        template = template or hf_template(tokenizer)
        if template and isinstance(tokenizer, HFTokenizer):
            ids, mask = _encode_templated(tokenizer, turns, template)
        else:
            ids, mask = encode_builtin(tokenizer, turns)
    if train_on == "all":
        mask = [1] * len(ids)
    return ids, mask


def hf_template(tokenizer: Tokenizer) -> str:
    """The tokenizer's own chat template ('' when it has none)."""
    if not isinstance(tokenizer, HFTokenizer):
        return ""
    template = getattr(tokenizer.hf, "chat_template", None)
    return template if isinstance(template, str) else ""


def encode_builtin(tokenizer: Tokenizer, turns: Turns) -> tuple[list[int], list[int]]:
    """``(ids, mask)`` of chat turns in the built-in template (:data:`BUILTIN_TEMPLATE`)."""
    ids, mask = [], []
    for role, content in turns:
        if role == "assistant":
            head, tail = tokenizer.encode(f"<|{role}|>\n"), tokenizer.encode(content) + [tokenizer.eos_id]
        else:
            head, tail = tokenizer.encode(f"<|{role}|>\n{content}\n"), []
        ids += head + tail
        mask += [0] * len(head) + [1] * len(tail)
    return ids, mask


def builtin_prompt(tokenizer: Tokenizer, user: str) -> list[int]:
    """The built-in template's generation prompt for one user turn."""
    return tokenizer.encode(f"<|user|>\n{user}\n") + tokenizer.encode("<|assistant|>\n")


def _render(hf, messages, template: str, **kwargs):
    try:
        return hf.apply_chat_template(messages, chat_template=template, **kwargs)
    except Exception as e:  # noqa: BLE001 - jinja errors of a user's template: a bad record
        raise RenderError(f"the chat template failed: {type(e).__name__}: {e}") from None


def _encode_templated(tokenizer: HFTokenizer, turns: Turns, template: str) -> tuple[list[int], list[int]]:
    hf = tokenizer.hf
    messages = [{"role": role, "content": content} for role, content in turns]
    if _GENERATION.search(template):
        out = _render(
            hf, messages, template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        return list(out["input_ids"]), [int(m) for m in out["assistant_masks"]]
    text = _render(hf, messages, template, tokenize=False)
    spans = _assistant_spans(hf, messages, template, text)
    encoded = hf(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    mask = [int(any(a <= start < b for a, b in spans)) for start, _ in encoded["offset_mapping"]]
    return list(encoded["input_ids"]), mask


def _assistant_spans(hf, messages, template: str, text: str) -> list[tuple[int, int]]:
    """Character spans of the assistant answers in ``text`` (with what the template puts right after
    an answer, e.g. its end-of-turn token, up to the next whitespace)."""
    spans, position = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(hf, messages[:i], template, tokenize=False, add_generation_prompt=True)
        through = _render(hf, messages[: i + 1], template, tokenize=False)
        if before and through.startswith(before) and text.startswith(through):
            start, stop = len(before), len(through.rstrip())
        else:  # a template that renders prefixes differently: find the answer itself
            start = text.find(message["content"], position)
            if start < 0:
                raise RenderError(f"assistant turn {i} is not in the rendered conversation")
            stop = start + len(message["content"])
        spans.append((start, stop))
        position = stop
    return spans


def chat_prompt(tokenizer: Tokenizer, user: str, template: str = "") -> list[int]:
    """Token ids of ``user`` as one user turn followed by the assistant's generation prompt."""
    return conversation_prompt(tokenizer, [("user", user)], template)


def conversation_prompt(tokenizer: Tokenizer, turns: Turns, template: str = "") -> list[int]:
    """Token ids of the ``(role, content)`` turns followed by the assistant's generation prompt (the
    tokenizer's own template or ``template``, else the built-in one); RenderError when it fails."""
    template = template or hf_template(tokenizer)
    if template and isinstance(tokenizer, HFTokenizer):
        messages = [{"role": role, "content": content} for role, content in turns]
        text = _render(tokenizer.hf, messages, template, tokenize=False, add_generation_prompt=True)
        return tokenizer.hf(text, add_special_tokens=False, verbose=False)["input_ids"]
    return encode_builtin(tokenizer, turns)[0] + tokenizer.encode("<|assistant|>\n")


def end_of_turn_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids that end an assistant turn: EOS, and a Hugging Face tokenizer's end-of-turn tokens."""
    ids = {tokenizer.eos_id}
    if isinstance(tokenizer, HFTokenizer):
        for piece in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            token_id = tokenizer.hf.convert_tokens_to_ids(piece)
            if isinstance(token_id, int) and token_id != tokenizer.unk_id and token_id >= 0:
                ids.add(token_id)
    return sorted(i for i in ids if i >= 0)
