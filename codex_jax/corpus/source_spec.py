"""A parsed ``data.source``: :func:`parse_source` turns ``'stdlib'``, a glob, ``'jsonl:PATH:FIELD'``,
``'csv:PATH:COLUMN'`` (or another record kind of :mod:`codex_jax.corpus.formats`) into a
:class:`SourceSpec`, what the listing (:mod:`codex_jax.corpus.listing`) and the readers
(:mod:`codex_jax.corpus.sources`) work from.
"""

from __future__ import annotations

import dataclasses

from codex_jax.corpus.examples import ExampleFields, example_pattern
from codex_jax.corpus.formats import RECORD_KINDS
from codex_jax.corpus.records import Template, parse_template
from codex_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A parsed ``data.source``: kind ('text', 'jsonl', 'csv', or one of
    :data:`~codex_jax.corpus.formats.RECORD_KINDS`), a path pattern, a template."""

    kind: str
    pattern: str
    template: Template | None = None
    fields: ExampleFields | None = None  # set for example sources (data.format other than 'text')


def parse_source(source: str, fields: ExampleFields | None = None) -> SourceSpec:
    """Parses ``'stdlib'``, a glob, ``'jsonl:PATH:FIELD'`` or ``'csv:PATH:COLUMN'`` (FIELD and
    COLUMN may be templates such as ``'{title}\\n{body}'``); with example ``fields``, ``'jsonl:PATH'`` or
    ``'csv:PATH'``."""
    if fields is not None and fields.format != "text":
        kind, pattern = example_pattern(source)
        return SourceSpec(kind, pattern, fields=fields)
    for kind in ("jsonl", "csv", *RECORD_KINDS):
        if source.startswith(kind + ":"):
            rest = source[len(kind) + 1 :]
            head = rest[: rest.index("{")] if "{" in rest else rest
            pattern, sep, _ = head.rpartition(":")
            field = rest[len(pattern) + 1 :]
            if kind == "arrayrecord" and not (field.isidentifier() or "{" in field):
                return SourceSpec(kind, rest)  # records are UTF-8 text, not JSON objects
            if not sep or not pattern or not field:
                raise UserError(f"data.source {source!r}: expected '{kind}:PATH:FIELD'")
            return SourceSpec(kind, pattern, parse_template(field))
    if not source:
        raise UserError("data.source is empty")
    return SourceSpec("text", source)
