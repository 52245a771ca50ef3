"""Documents from a ``data.source``: the stdlib, a glob of text files, or JSONL/CSV records.

    'stdlib'                          the running interpreter's standard library (*.py)
    '/src/**/*.py'                    one document per text file
    'jsonl:/d/*.jsonl:text'           one per line: a field, or a template of fields:
    'jsonl:/d/*.jsonl:{title}\\n{body}'
    'csv:/d/rows.csv:code'            one per row: a column (or a template of columns)
    'parquet:/d/*.parquet:text'       one per row: a column (template); also 'arrayrecord:PATH[:FIELD]'
    'hf_disk:/d/saved:text'           and datasets save_to_disk folders (codex_jax.corpus.formats)

The source is parsed by :func:`~codex_jax.corpus.source_spec.parse_source`; its files are listed in
sorted order (lazily, one folder at a time: :class:`~codex_jax.corpus.listing.SourceFiles`), filtered by
include/exclude globs relative to the source's root, checksummed, and read one at a time
(:mod:`codex_jax.corpus.records` reads the records and applies the bad-record policy).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from codex_jax import plugins
from codex_jax.corpus.examples import (
    ExampleFields,
    Turns,
    example_text,
    read_csv_examples,
    read_jsonl_examples,
)
from codex_jax.corpus.formats import RECORD_KINDS, read_record_file
from codex_jax.corpus.listing import SourceFiles, relative
from codex_jax.corpus.records import (
    BAD_RECORD_POLICIES,
    FileReport,
    read_csv_file,
    read_jsonl_file,
    read_text_file,
)
from codex_jax.corpus.source_spec import SourceSpec, parse_source
from codex_jax.errors import UserError


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
    """The parsed spec, root and selected files (:class:`SourceFiles`, as a list) of ``source``;
    UserError (naming ``what``) when none is left."""
    spec = parse_source(source, fields)
    files = SourceFiles(spec, source, include, exclude, max_files, what)
    return spec, files.root, list(files)


def file_documents(
    spec: SourceSpec, path: Path, root: Path, on_bad: str = "skip"
) -> tuple[FileReport, list[tuple[str, Any]]]:
    """The report of one file and its ``(key, record)`` documents, counted in the report: ``key`` is the
    relative path of a text file, ``path:line`` of a record; ``record`` is the text (an example's turns for
    example sources)."""
    report, records = read_file(spec, path, root, on_bad)
    documents = []
    for line, record in records:
        documents.append((report.path if spec.kind == "text" else f"{report.path}:{line}", record))
        report.records += 1
    return report, documents


class BadRecords:
    """A source's files as they are read, one at a time: a warning line on stderr for each of the first
    ``max_lines`` files with bad records, the rest summed up by :meth:`finish`, which also raises when
    the source yielded no document."""

    def __init__(self, source: str, max_lines: int = 5):
        self.source, self.max_lines = source, max_lines
        self.files = self.documents = self.skipped = 0
        self.bad_files = self.more_files = self.more_skipped = 0
        self.first = ""

    def note(self, report: FileReport, documents: int) -> None:
        """Counts one file read (``documents`` good records), warning when it had bad ones."""
        self.files += 1
        self.documents += documents
        self.skipped += report.skipped
        if not report.skipped:
            return
        self.first = self.first or report.bad[0]
        self.bad_files += 1
        if self.bad_files > self.max_lines:
            self.more_files += 1
            self.more_skipped += report.skipped
            return
        print(
            f"data: warning: {self.source}: skipped {report.skipped} bad record(s) in {report.path} "
            f"(first: {report.bad[0]})",
            file=sys.stderr,
            flush=True,
        )

    def finish(self, require_documents: bool = True) -> None:
        """The summary line of the files not warned about; UserError when ``require_documents`` and no
        file gave a document."""
        if self.more_files:
            print(
                f"data: warning: {self.source}: ... and {self.more_skipped} more in {self.more_files} more "
                "files (data_manifest.json lists them)",
                file=sys.stderr,
                flush=True,
            )
        if require_documents and not self.documents:
            raise UserError(
                f"data source {self.source!r} yielded no documents ({self.files} files read, "
                f"{self.skipped} bad records skipped; first: {self.first or 'none'})"
            )


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
    check_bad_record_policy(on_bad_record)
    plugin_corpus = read_plugin_source(source)
    if plugin_corpus is not None:
        return plugin_corpus
    spec, root, files = source_files(source, max_files, include, exclude, fields=fields)
    reports, documents, bad = [], [], BadRecords(source)
    for path in files:
        report, records = file_documents(spec, path, root, on_bad_record)
        for key, record in records:
            if spec.fields is None:
                documents.append(Document(key, report.path, record))
            else:
                documents.append(Document(key, report.path, example_text(record), record))
        reports.append(report)
        bad.note(report, len(records))
    bad.finish()
    return Corpus(source, str(root), reports, documents)


def check_bad_record_policy(on_bad_record: str) -> None:
    """UserError unless ``on_bad_record`` is one of :data:`BAD_RECORD_POLICIES`."""
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise UserError(f"data.on_bad_record must be 'skip' or 'error', got {on_bad_record!r}")


def is_plugin_source(source: str) -> bool:
    """Whether ``source`` names a ``codex_jax.data_sources`` plugin (``'NAME:ARG'``)."""
    return plugins.split_spec(source, plugins.DATA_SOURCES) is not None


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
    bad = BadRecords(source, max_lines)
    for report in reports:
        bad.note(report, report.records)
    bad.finish(require_documents=False)
