"""Supervised fine-tuning records: prompt/completion pairs (JSONL or CSV) and chat conversations (JSONL).

Every example is a tuple of ``(role, content)`` turns. A prompt/completion record becomes
``(('prompt', P), ('completion', C))``; a chat record keeps its ``messages`` as
``(('system'|'user'|'assistant', content), ...)``. The tokenizer layer renders the turns into token
ids and a loss mask (:mod:`codex_jax.tokenizers.chat`).

Bad records (a missing field, a non-string content, an unknown role, an empty completion, a
conversation without an assistant turn) are skipped and counted in the file's
:class:`~codex_jax.corpus.records.FileReport`, or stop the read under ``data.on_bad_record='error'``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from codex_jax.corpus.records import BOM, FileReport, csv_rows, jsonl_records, normalize
from codex_jax.errors import UserError

FORMATS = ("text", "prompt_completion", "chat")  # data.format
PACKINGS = ("concat", "segments", "pad")  # data.packing (codex_jax.data.packing)
OVERLONG = ("truncate", "drop")  # data.overlong
TRAIN_ON = ("completion", "all")  # data.train_on (codex_jax.tokenizers.chat)
ROLES = ("system", "user", "assistant")

Turns = tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class ExampleFields:
    """Where a record keeps its parts: the prompt and completion fields, or the messages list."""

    format: str
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"


def example_text(turns: Turns) -> str:
    """The contents of ``turns`` joined by newlines (what tokenizer training and the safety filter read)."""
    return "\n".join(content for _, content in turns)


def prompt_completion_turns(record: dict, fields: ExampleFields) -> tuple[Turns | None, str]:
    """``(turns, '')`` of one prompt/completion record, or ``(None, reason)``."""
    for name in (fields.prompt, fields.completion):
        if name not in record:
            return None, f"no field {name!r}"
        if not isinstance(record[name], str):
            return None, f"field {name!r} is not a string"
    prompt, completion = normalize(record[fields.prompt]), normalize(record[fields.completion])
    if not completion.strip():
        return None, f"empty completion (field {fields.completion!r})"
    return (("prompt", prompt), ("completion", completion)), ""


def chat_turns(record: dict, fields: ExampleFields) -> tuple[Turns | None, str]:
    """``(turns, '')`` of one chat record (``{messages: [{role, content}, ...]}``), or ``(None, reason)``."""
    messages = record.get(fields.messages)
    if messages is None:
        names = ", ".join(map(repr, record)) if isinstance(record, dict) else "none"
        return None, f"no field {fields.messages!r} (its fields: {names}; data.messages_field names the list)"
    if not isinstance(messages, list) or not messages:
        return None, f"field {fields.messages!r} is not a non-empty list of messages"
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return None, f"message {i} is not an object"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return None, f"message {i}: unknown role {role!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(content, str):
            return None, f"message {i}: content is not a string"
        turns.append((role, normalize(content)))
    if not any(role == "assistant" and content.strip() for role, content in turns):
        return None, "no assistant turn with content"
    return tuple(turns), ""


def record_turns(record, fields: ExampleFields) -> tuple[Turns | None, str]:
    """The turns of one decoded record in ``fields.format``, or ``(None, reason)``."""
    if not isinstance(record, dict):
        return None, "not a JSON object"
    if fields.format == "chat":
        return chat_turns(record, fields)
    return prompt_completion_turns(record, fields)


def read_jsonl_examples(
    data: bytes, report: FileReport, fields: ExampleFields
) -> Iterator[tuple[int, Turns]]:
    """``(line, turns)`` of every good JSONL record; bad ones go to ``report``."""
    for number, record in jsonl_records(data, report):
        turns, reason = record_turns(record, fields)
        if turns is None:
            report.skip(number, reason)
            continue
        yield number, turns


def read_csv_examples(data: bytes, report: FileReport, fields: ExampleFields) -> Iterator[tuple[int, Turns]]:
    """``(line, turns)`` of every good CSV row (prompt/completion columns named by the header)."""
    if fields.format == "chat":
        raise UserError(f"{report.location or report.path}: data.format='chat' reads JSONL only, not CSV")
    _, rows = csv_rows(data.removeprefix(BOM).decode("utf-8", errors="replace"), report)
    for start, values in rows:
        turns, reason = prompt_completion_turns(values, fields)
        if turns is None:
            report.skip(start, reason)
            continue
        yield start, turns


def example_pattern(source: str) -> tuple[str, str]:
    """``(kind, path pattern)`` of an example source: ``'jsonl:PATH'``, ``'csv:PATH'`` or a path ending
    in ``.jsonl``/``.csv``."""
    for kind in ("jsonl", "csv"):
        if source.startswith(kind + ":"):
            return kind, source[len(kind) + 1 :]
    if source.endswith(".csv"):
        return "csv", source
    if source.endswith((".jsonl", ".json")):
        return "jsonl", source
    raise UserError(
        f"data.source {source!r}: examples (data.format='prompt_completion'/'chat') come from "
        "'jsonl:PATH' or 'csv:PATH' (or a path ending in .jsonl/.csv)"
    )
