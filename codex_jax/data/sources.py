"""Documents from a ``data.source``: the stdlib, a glob of text files, or JSONL/CSV records.

Every file is checksummed; bad records (undecodable bytes, invalid JSON, a missing field, empty
text) are skipped and counted per file with their first ``file:line`` locations. Text is
normalised the same way everywhere: a UTF-8 BOM is dropped and CRLF becomes LF.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import io
import json
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from codex_jax.errors import UserError

MAX_BAD_LOCATIONS = 5
_BOM = b"\xef\xbb\xbf"
# pydoc_data holds one 750 KB generated string of documentation prose, not code.
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "pydoc_data"})


@dataclasses.dataclass(frozen=True)
class Document:
    """One training document. ``key`` is its split unit: a file's path, or ``path:line``."""

    key: str
    file: str
    text: str


@dataclasses.dataclass
class FileReport:
    """What reading one file gave: checksum, records kept and skipped, first bad locations."""

    path: str
    bytes: int
    sha256: str
    records: int = 0
    skipped: int = 0
    bad: list[str] = dataclasses.field(default_factory=list)

    def skip(self, line: int, reason: str) -> None:
        """Counts one skipped record at ``line``."""
        self.skipped += 1
        if len(self.bad) < MAX_BAD_LOCATIONS:
            self.bad.append(f"{self.path}:{line}: {reason}")


@dataclasses.dataclass
class Corpus:
    """All documents of a source, in a deterministic order, and one report per file."""

    source: str
    root: str
    files: list[FileReport]
    documents: list[Document]


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A parsed ``data.source``: kind ('text', 'jsonl', 'csv'), a path pattern, a field."""

    kind: str
    pattern: str
    field: str = ""


def parse_source(source: str) -> SourceSpec:
    """Parses ``'stdlib'``, a glob, ``'jsonl:PATH:FIELD'`` or ``'csv:PATH:COLUMN'``."""
    for kind in ("jsonl", "csv"):
        if source.startswith(kind + ":"):
            pattern, sep, field = source[len(kind) + 1 :].rpartition(":")
            if not sep or not pattern or not field:
                raise UserError(f"data.source {source!r}: expected '{kind}:PATH:FIELD'")
            return SourceSpec(kind, pattern, field)
    if not source:
        raise UserError("data.source is empty")
    return SourceSpec("text", source)


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_files(spec: SourceSpec) -> tuple[Path, list[Path]]:
    """The root directory and the sorted files of ``spec``; UserError when there are none."""
    if spec.kind == "text" and spec.pattern == "stdlib":
        root = stdlib_root()
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_DIRS]
            files += [Path(dirpath, f) for f in filenames if f.endswith(".py")]
        return root, sorted(files)
    pattern = os.path.expanduser(spec.pattern)
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not files:
        if not glob.has_magic(pattern):
            raise UserError(f"data.source: file not found: {pattern}")
        raise UserError(
            f"data.source: no files match {pattern!r} (for a directory, write 'DIR/**/*.py')"
        )
    return _glob_root(pattern), files


def _glob_root(pattern: str) -> Path:
    """The longest leading directory of ``pattern`` without glob characters."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def limit_files(files: list[Path], root: Path, max_files: int) -> list[Path]:
    """At most ``max_files`` of ``files`` (0: all), chosen by a hash of the relative path.

    The hash is salted so that the choice is independent of the (unsalted) split hash.
    """
    if not max_files or len(files) <= max_files:
        return files

    def rank(p: Path) -> str:
        return hashlib.sha256(f"max_files:{_relative(p, root)}".encode()).hexdigest()

    return sorted(sorted(files, key=rank)[:max_files])


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def normalize(text: str) -> str:
    """Text as documents hold it: CRLF -> LF."""
    return text.replace("\r\n", "\n")


def _checked(text: str, report: FileReport, line: int) -> str | None:
    """``text`` normalised, or None (and one skip counted) when it is empty or not valid Unicode."""
    text = normalize(text)
    if not text.strip():
        report.skip(line, "empty")
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        report.skip(line, "undecodable bytes")
        return None
    return text


def read_text_file(data: bytes, report: FileReport) -> Iterator[tuple[int, str]]:
    """The whole file as one document (line 1)."""
    try:
        text = data.removeprefix(_BOM).decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        report.skip(line, "undecodable bytes")
        return
    text = _checked(text, report, 1)
    if text is not None:
        yield 1, text


def read_jsonl_file(data: bytes, report: FileReport, field: str) -> Iterator[tuple[int, str]]:
    """One document per non-blank line: the string at ``field`` of its JSON object."""
    for number, raw in enumerate(data.removeprefix(_BOM).split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            report.skip(number, "undecodable bytes")
            continue
        except json.JSONDecodeError:
            report.skip(number, "invalid JSON")
            continue
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            report.skip(number, f"no string field {field!r}")
            continue
        text = _checked(value, report, number)
        if text is not None:
            yield number, text


def read_csv_file(data: bytes, report: FileReport, column: str) -> Iterator[tuple[int, str]]:
    """One document per row: the value in ``column`` (named by the header row)."""
    text = data.removeprefix(_BOM).decode("utf-8", errors="surrogateescape")
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None) or []
    if column not in header:
        raise UserError(f"{report.path}: no column {column!r} in the CSV header {header}")
    index = header.index(column)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            report.skip(start, f"bad CSV ({e})")
            continue
        if not row:
            continue
        if index >= len(row):
            report.skip(start, f"no column {column!r}")
            continue
        value = _checked(row[index], report, start)
        if value is not None:
            yield start, value


def read_source(source: str, max_files: int = 0) -> Corpus:
    """Reads every document of ``source``; UserError when it yields none."""
    spec = parse_source(source)
    root, files = list_files(spec)
    files = limit_files(files, root, max_files)
    reports, documents = [], []
    for path in files:
        rel = _relative(path, root)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"data.source: cannot read {path}: {e.strerror}") from None
        report = FileReport(rel, len(data), hashlib.sha256(data).hexdigest())
        if spec.kind == "jsonl":
            records = read_jsonl_file(data, report, spec.field)
        elif spec.kind == "csv":
            records = read_csv_file(data, report, spec.field)
        else:
            records = read_text_file(data, report)
        for line, text in records:
            key = rel if spec.kind == "text" else f"{rel}:{line}"
            documents.append(Document(key, rel, text))
            report.records += 1
        reports.append(report)
    if not documents:
        skipped = sum(r.skipped for r in reports)
        first = next((r.bad[0] for r in reports if r.bad), "none")
        raise UserError(
            f"data.source {source!r} yielded no documents ({len(reports)} files read, "
            f"{skipped} records skipped; first: {first})"
        )
    return Corpus(source, str(root), reports, documents)
