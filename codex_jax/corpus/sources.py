"""Documents from a ``data.source``: the stdlib, a glob of text files, or JSONL/CSV records.

    'stdlib'                          the running interpreter's standard library (*.py)
    '/src/**/*.py'                    one document per text file
    'jsonl:/d/*.jsonl:text'           one per line: a field, or a template of fields:
    'jsonl:/d/*.jsonl:{title}\\n{body}'
    'csv:/d/rows.csv:code'            one per row: a column (or a template of columns)
    'parquet:/d/*.parquet:text'       one per row: a column (template); also 'arrayrecord:PATH[:FIELD]'
    'hf_disk:/d/saved:text'           and datasets save_to_disk folders (codex_jax.corpus.formats)

Files are listed in sorted order, filtered by include/exclude globs relative to the source's
root, checksummed, and read one at a time (:mod:`codex_jax.corpus.records` reads the records and
applies the bad-record policy).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from codex_jax import plugins
from codex_jax.corpus.examples import (
    ExampleFields,
    Turns,
    example_pattern,
    example_text,
    read_csv_examples,
    read_jsonl_examples,
)
from codex_jax.corpus.formats import RECORD_KINDS, hf_disk_files, read_record_file
from codex_jax.corpus.records import (
    BAD_RECORD_POLICIES,
    FileReport,
    Template,
    parse_template,
    read_csv_file,
    read_jsonl_file,
    read_text_file,
)
from codex_jax.errors import UserError
from codex_jax.files import as_path, glob_files, is_remote

# pydoc_data holds one 750 KB generated string of documentation prose, not code.
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "pydoc_data"})


@dataclasses.dataclass(frozen=True)
class Document:
    """One training document. ``key`` is its split unit: a file's path, or ``path:line``."""

    key: str
    file: str
    text: str
    turns: Turns = ()  # an example's (role, content) turns (data.format 'prompt_completion'/'chat')


@dataclasses.dataclass
class Corpus:
    """All documents of a source, in a deterministic order, and one report per file."""

    source: str
    root: str
    files: list[FileReport]
    documents: list[Document]


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
    if spec.kind == "hf_disk":
        return hf_disk_files(spec.pattern)
    pattern = spec.pattern if is_remote(spec.pattern) else os.path.expanduser(spec.pattern)
    files = glob_files(pattern)  # a local glob, or one on a bucket (gs://b/src/**/*.py)
    if not files:
        if not glob.has_magic(pattern):
            raise UserError(f"file not found: {pattern}")
        raise UserError(f"no files match {pattern!r} (for a directory, write 'DIR/**/*.py')")
    return _glob_root(pattern), files


def _glob_root(pattern: str) -> Path:
    """The longest leading directory of ``pattern`` without glob characters."""
    if is_remote(pattern):  # 'gs://b/src/**/*.py' -> gs://b/src (pathlib would fold the '//')
        scheme, rest = pattern.split("://", 1)
        head = []
        for part in rest.split("/")[:-1]:
            if glob.has_magic(part):
                break
            head.append(part)
        return as_path(f"{scheme}://{'/'.join(head)}")
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def glob_regex(pattern: str) -> re.Pattern:
    """A regex for a relative glob: ``**`` spans directories, ``*``, ``?`` and ``[...]`` stay in
    one; a pattern without ``'/'`` matches the file name at any depth (as in .gitignore)."""
    pattern = pattern.strip().removeprefix("./")
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] in "*?":
            out.append("[^/]*" if pattern[i] == "*" else "[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    prefix = "" if "/" in pattern else "(?:.*/)?"
    return re.compile(prefix + "".join(out) + r"\Z")


def select_files(files: list[Path], root: Path, include: str, exclude: str) -> list[Path]:
    """``files`` whose path relative to ``root`` matches an ``include`` glob (all when empty)
    and no ``exclude`` glob; both are comma-separated lists."""
    includes = [glob_regex(p) for p in include.split(",") if p.strip()]
    excludes = [glob_regex(p) for p in exclude.split(",") if p.strip()]
    if not includes and not excludes:
        return files
    kept = []
    for path in files:
        rel = relative(path, root)
        if includes and not any(r.match(rel) for r in includes):
            continue
        if not any(r.match(rel) for r in excludes):
            kept.append(path)
    return kept


def limit_files(files: list[Path], root: Path, max_files: int) -> list[Path]:
    """At most ``max_files`` of ``files`` (0: all), chosen by a hash of the relative path.

    The hash is salted so that the choice is independent of the (unsalted) split hash.
    """
    if not max_files or len(files) <= max_files:
        return files

    def rank(p: Path) -> str:
        return hashlib.sha256(f"max_files:{relative(p, root)}".encode()).hexdigest()

    return sorted(sorted(files, key=rank)[:max_files])


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, with '/' separators."""
    return Path(os.path.relpath(path, root)).as_posix()


def read_file(
    spec: SourceSpec, path: Path, root: Path, on_bad: str = "skip"
) -> tuple[FileReport, Iterator[tuple[int, Any]]]:
    """The report of one file (checksum) and its ``(line, text)`` records (``(line, turns)`` for
    example sources), read lazily."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    report = FileReport(
        relative(path, root),
        len(data),
        hashlib.sha256(data).hexdigest(),
        location=str(path),
        on_bad=on_bad,
    )
    if spec.kind in RECORD_KINDS:
        return report, read_record_file(spec.kind, path, report, spec.template)
    if spec.fields is not None:
        read = read_jsonl_examples if spec.kind == "jsonl" else read_csv_examples
        return report, read(data, report, spec.fields)
    if spec.kind in ("jsonl", "csv"):
        assert spec.template is not None  # parse_source gives every jsonl/csv spec a template
        if spec.kind == "jsonl":
            return report, read_jsonl_file(data, report, spec.template)
        return report, read_csv_file(data, report, spec.template)
    return report, read_text_file(data, report)


def source_files(
    source: str,
    max_files: int = 0,
    include: str = "",
    exclude: str = "",
    what="data source",
    fields: ExampleFields | None = None,
) -> tuple[SourceSpec, Path, list[Path]]:
    """The parsed spec, root and selected files of ``source``; UserError (naming ``what``) when
    none is left."""
    spec = parse_source(source, fields)
    try:
        root, files = list_files(spec)
    except UserError as e:
        raise UserError(f"{what} {source!r}: {e}") from None
    selected = select_files(files, root, include, exclude)
    if not selected:
        raise UserError(
            f"{what} {source!r}: all {len(files)} files are filtered out by "
            f"data.include={include!r} / data.exclude={exclude!r} (globs relative to {root})"
        )
    return spec, root, limit_files(selected, root, max_files)


def read_source(
    source: str,
    max_files: int = 0,
    include: str = "",
    exclude: str = "",
    on_bad_record="skip",
    fields: ExampleFields | None = None,
) -> Corpus:
    """Reads every document of ``source`` (examples, when ``fields`` names a format other than
    'text'); UserError when it yields none."""
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise UserError(f"data.on_bad_record must be 'skip' or 'error', got {on_bad_record!r}")
    plugin_corpus = read_plugin_source(source)
    if plugin_corpus is not None:
        return plugin_corpus
    spec, root, files = source_files(source, max_files, include, exclude, fields=fields)
    reports, documents = [], []
    for path in files:
        report, records = read_file(spec, path, root, on_bad_record)
        for line, record in records:
            key = report.path if spec.kind == "text" else f"{report.path}:{line}"
            if spec.fields is None:
                documents.append(Document(key, report.path, record))
            else:
                documents.append(Document(key, report.path, example_text(record), record))
            report.records += 1
        reports.append(report)
    warn_bad_records(source, reports)
    if not documents:
        skipped = sum(r.skipped for r in reports)
        first = next((r.bad[0] for r in reports if r.bad), "none")
        raise UserError(
            f"data source {source!r} yielded no documents ({len(reports)} files read, "
            f"{skipped} bad records skipped; first: {first})"
        )
    return Corpus(source, str(root), reports, documents)


def read_plugin_source(source: str) -> Corpus | None:
    """The Corpus of ``data.source='NAME:ARG'`` when NAME is a ``codex_jax.data_sources`` plugin, else None.

    The plugin's ``read(ARG)`` yields ``(key, text)`` pairs; each is one document and one
    manifest entry (``data.max_files``/``include``/``exclude`` do not apply).
    """
    found = plugins.split_spec(source, plugins.DATA_SOURCES)
    if found is None:
        return None
    read, arg = found
    reports, documents = [], []
    try:
        for key, text in read(arg):
            data = str(text).replace("\r\n", "\n").encode("utf-8")
            digest = hashlib.sha256(data).hexdigest()
            reports.append(FileReport(str(key), len(data), digest, records=1))
            documents.append(Document(str(key), str(key), data.decode("utf-8")))
    except Exception as e:  # noqa: BLE001 - the plugin's own failure, reported as the user's
        raise UserError(f"data.source {source!r}: the plugin failed: {type(e).__name__}: {e}") from e
    if not documents:
        raise UserError(f"data.source {source!r}: the plugin yielded no documents")
    return Corpus(source, f"plugin:{source.partition(':')[0]}", reports, documents)


def warn_bad_records(source: str, reports: list[FileReport], max_lines: int = 5) -> None:
    """One warning line on stderr per file with skipped records (the first ``max_lines``)."""
    bad = [r for r in reports if r.skipped]
    for r in bad[:max_lines]:
        print(
            f"data: warning: {source}: skipped {r.skipped} bad record(s) in {r.path} (first: {r.bad[0]})",
            file=sys.stderr,
            flush=True,
        )
    if len(bad) > max_lines:
        total = sum(r.skipped for r in bad[max_lines:])
        print(
            f"data: warning: {source}: ... and {total} more in {len(bad) - max_lines} more "
            "files (data_manifest.json lists them)",
            file=sys.stderr,
            flush=True,
        )
