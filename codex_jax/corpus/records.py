"""Records of one file: a whole text file, JSONL lines or CSV rows, and the bad-record policy.

Text is normalised the same way everywhere: a UTF-8 BOM is dropped and CRLF becomes LF. A bad
record (undecodable bytes, invalid JSON, a missing field, empty text, a malformed CSV row) is
skipped and counted in the file's :class:`FileReport` (policy ``'skip'``), or stops the read with
a UserError naming ``file:line`` (policy ``'error'``). Empty files are not bad: they hold nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import string
from collections.abc import Iterator
from typing import Any

from codex_jax.errors import UserError

MAX_BAD_LOCATIONS = 5
BAD_RECORD_POLICIES = ("skip", "error")
BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass
class FileReport:
    """What reading one file gave: checksum, records kept and skipped, first bad locations.

    ``path`` is relative to the source's root (what the manifest records); ``location`` is the
    path as found on disk (what error messages name).
    """

    path: str
    bytes: int
    sha256: str
    records: int = 0
    skipped: int = 0
    bad: list[str] = dataclasses.field(default_factory=list)
    location: str = ""
    on_bad: str = "skip"

    def skip(self, line: int, reason: str) -> None:
        """Counts one bad record at ``line``; UserError instead under the 'error' policy."""
        if self.on_bad == "error":
            raise UserError(
                f"bad record at {self.location or self.path}:{line}: {reason} "
                "(data.on_bad_record='error'; 'skip' skips and counts bad records)"
            )
        self.skipped += 1
        if len(self.bad) < MAX_BAD_LOCATIONS:
            self.bad.append(f"{self.path}:{line}: {reason}")


@dataclasses.dataclass(frozen=True)
class Template:
    """A record's text: literal parts and ``{field}`` values, e.g. ``'{title}\\n{body}'``.

    A single field (``'text'``) is the template ``'{text}'`` and must hold a string; fields of a
    longer template may also be numbers.
    """

    parts: tuple[tuple[str, str | None], ...]

    @property
    def fields(self) -> list[str]:
        """The field names, in order of first use."""
        return list(dict.fromkeys(f for _, f in self.parts if f is not None))

    @property
    def single(self) -> bool:
        return len(self.parts) == 1 and not self.parts[0][0]

    def render(self, record: dict) -> tuple[str | None, str]:
        """``(text, '')``, or ``(None, reason)`` when a field is missing or of the wrong type."""
        out = []
        for literal, name in self.parts:
            out.append(literal)
            if name is None:
                continue
            if name not in record:
                return None, f"no field {name!r}"
            value = record[name]
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not isinstance(value, str) and (self.single or not number):
                return None, f"field {name!r} is not a string"
            out.append(str(value))
        return "".join(out), ""


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def parse_template(text: str) -> Template:
    """``'text'`` (one field) or a template with ``{field}`` parts and ``\\n``/``\\t`` escapes."""
    if "{" not in text and "}" not in text:
        return Template((("", text),))
    text = re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)
    parts = []
    try:
        for literal, name, spec, conversion in string.Formatter().parse(text):
            if name is not None and (spec or conversion or not name.isidentifier()):
                raise ValueError(f"write plain {{field}} names, not {{{name}...}}")
            parts.append((literal, name))
    except ValueError as e:
        raise UserError(f"bad record template {text!r}: {e}") from None
    if not any(name for _, name in parts):
        raise UserError(f"record template {text!r} names no {{field}}")
    return Template(tuple(parts))


def normalize(text: str) -> str:
    """Text as documents hold it: CRLF -> LF."""
    return text.replace("\r\n", "\n")


def _checked(text: str, report: FileReport, line: int) -> str | None:
    """``text`` normalised, or None (one bad record) when it is blank or not valid Unicode."""
    text = normalize(text)
    if not text.strip():
        report.skip(line, "empty text")
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        report.skip(line, "invalid Unicode (a lone surrogate or undecodable bytes)")
        return None
    return text


def render_record(template: Template, record: Any, report: FileReport, line: int) -> str | None:
    """The text of one structured record (a dict) per ``template``, or None (one bad record counted in
    ``report``) when it is not an object, a field is missing or of the wrong type, or the text is blank."""
    if not isinstance(record, dict):
        report.skip(line, "not an object")
        return None
    value, reason = template.render(record)
    if value is None:
        report.skip(line, reason)
        return None
    return _checked(value, report, line)


def decode_text(data: bytes, report: FileReport, line: int) -> str | None:
    """One UTF-8 text record (BOM dropped, CRLF -> LF), or None (a bad record counted in ``report``) when
    it is undecodable or blank."""
    try:
        text = data.removeprefix(BOM).decode("utf-8")
    except UnicodeDecodeError:
        report.skip(line, "undecodable bytes (not UTF-8)")
        return None
    return _checked(text, report, line)


def read_text_file(data: bytes, report: FileReport) -> Iterator[tuple[int, str]]:
    """The whole file as one document (line 1); nothing for an empty or blank file."""
    try:
        text = data.removeprefix(BOM).decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        report.skip(line, "undecodable bytes (not UTF-8)")
        return
    text = normalize(text)
    if text.strip():
        yield 1, text


def jsonl_records(data: bytes, report: FileReport) -> Iterator[tuple[int, Any]]:
    """``(line, value)`` of every non-blank JSONL line that parses; undecodable or invalid lines go to
    ``report``."""
    for number, raw in enumerate(data.removeprefix(BOM).split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            report.skip(number, "undecodable bytes (not UTF-8)")
        except json.JSONDecodeError as e:
            report.skip(number, f"invalid JSON ({e.msg})")


def read_jsonl_file(data: bytes, report: FileReport, template: Template) -> Iterator[tuple[int, str]]:
    """One document per non-blank line: ``template`` rendered from its JSON object."""
    for number, record in jsonl_records(data, report):
        if not isinstance(record, dict):
            report.skip(number, "not a JSON object")
            continue
        value, reason = template.render(record)
        if value is None:
            report.skip(number, reason)
            continue
        text = _checked(value, report, number)
        if text is not None:
            yield number, text


def csv_rows(text: str, report: FileReport) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The CSV header, and ``(line, {column: value})`` of every non-empty row after it; rows the csv module
    cannot parse go to ``report``, a header it cannot parse is a UserError naming the file."""
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None) or []
    except csv.Error as e:
        raise UserError(f"{report.location or report.path}: bad CSV header ({e})") from None

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        while header:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                report.skip(start, f"bad CSV row ({e})")
                continue
            if row:
                yield start, dict(zip(header, row, strict=False))

    return header, rows()


def read_csv_file(data: bytes, report: FileReport, template: Template) -> Iterator[tuple[int, str]]:
    """One document per row: ``template`` rendered from the row (columns named by the header)."""
    text = data.removeprefix(BOM).decode("utf-8", errors="surrogateescape")
    header, rows = csv_rows(text, report)
    missing = [f for f in template.fields if f not in header]
    if header and missing:
        raise UserError(
            f"{report.location or report.path}: no column {missing[0]!r} in the CSV header {header}"
        )
    for start, values in rows:
        absent = [f for f in template.fields if f not in values]
        if absent:
            report.skip(start, f"no column {absent[0]!r} in this row")
            continue
        value, reason = template.render(values)
        if value is None:
            report.skip(start, reason)
            continue
        value = _checked(value, report, start)
        if value is not None:
            yield start, value
