"""Documents from a ``data.source``: the stdlib, a glob of text files, or JSONL/CSV records.

    'stdlib'                          the running interpreter's standard library (*.py)
    '/src/**/*.py'                    one document per text file
    'jsonl:/d/*.jsonl:text'           one per line: a field, or a template of fields:
    'jsonl:/d/*.jsonl:{title}\\n{body}'
    'csv:/d/rows.csv:code'            one per row: a column (or a template of columns)
    'parquet:/d/*.parquet:text'       one per row: a column (template); also 'arrayrecord:PATH[:FIELD]'
    'hf_disk:/d/saved:text'           and datasets save_to_disk folders (codex_jax.corpus.formats)

Files are listed in sorted order (lazily, one folder at a time: :class:`SourceFiles`), filtered by
include/exclude globs relative to the source's root, checksummed, and read one at a time
(:mod:`codex_jax.corpus.records` reads the records and applies the bad-record policy).
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import hashlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

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
from codex_jax.corpus.globbing import iter_glob, iter_stdlib, stdlib_root
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


def list_files(spec: SourceSpec) -> tuple[Path, list[Path]]:
    """The root directory and the sorted files of ``spec``; UserError when there are none."""
    root, listed = _listing(spec)
    return root, list(listed())


def _listing(spec: SourceSpec) -> tuple[Path, Callable[[], Iterator[Path]]]:
    """The root directory of ``spec`` and a function listing its files in sorted order (lazily, one
    folder at a time, for the stdlib and local globs); UserError when there are none."""
    if spec.kind == "text" and spec.pattern == "stdlib":
        root = stdlib_root()
        return root, lambda: iter_stdlib(root)
    if spec.kind == "hf_disk":
        root, shards = hf_disk_files(spec.pattern)
        return root, lambda: iter(shards)
    pattern = spec.pattern if is_remote(spec.pattern) else os.path.expanduser(spec.pattern)
    if is_remote(pattern):  # gcsfs lists the objects under the fixed prefix at once
        objects = glob_files(pattern)
        listed: Callable[[], Iterator[Path]] = lambda: iter(objects)  # noqa: E731
    else:
        listed = lambda: iter_glob(pattern)  # noqa: E731
    if next(listed(), None) is None:
        if not glob.has_magic(pattern):
            raise UserError(f"file not found: {pattern}")
        raise UserError(f"no files match {pattern!r} (for a directory, write 'DIR/**/*.py')")
    return _glob_root(pattern), listed


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
    selected = _selector(include, exclude)
    return [p for p in files if selected(relative(p, root))]


def _selector(include: str, exclude: str) -> Callable[[str], bool]:
    """Whether a relative path matches an ``include`` glob (any, when there are none) and no ``exclude``
    glob (comma-separated lists)."""
    includes = [glob_regex(p) for p in include.split(",") if p.strip()]
    excludes = [glob_regex(p) for p in exclude.split(",") if p.strip()]

    def selected(rel: str) -> bool:
        if includes and not any(r.match(rel) for r in includes):
            return False
        return not any(r.match(rel) for r in excludes)

    return selected


def _rank(rel: str) -> str:
    """The ``data.max_files`` rank of a relative path: salted, so that the choice is independent of the
    (unsalted) split hash."""
    return hashlib.sha256(f"max_files:{rel}".encode()).hexdigest()


def path_hash(path: Path) -> int:
    """A 64-bit hash of the real path of ``path`` (the same file reached by two sources has one)."""
    return int(hashlib.sha256(os.path.realpath(os.fspath(path)).encode()).hexdigest()[:16], 16)


class SourceFiles:
    """The selected files of a source, listed lazily in sorted order every time they are iterated (never
    held as one list): those matching ``include`` and not ``exclude`` (globs relative to :attr:`root`),
    at most ``max_files`` of them (0: all; the lowest by a hash of the relative path, chosen with one
    listing pass that keeps an 8-byte rank per file), less those whose :func:`path_hash` is in ``skip``.

    UserError (naming ``what`` and ``source``) when nothing is listed or everything is filtered out.
    """

    def __init__(
        self,
        spec: SourceSpec,
        source: str,
        include: str = "",
        exclude: str = "",
        max_files: int = 0,
        what: str = "data source",
    ):
        self.spec = spec
        try:
            self.root, self._listed = _listing(spec)
        except UserError as e:
            raise UserError(f"{what} {source!r}: {e}") from None
        self._selected = _selector(include, exclude)
        self._cut: int | None = None  # max_files: files ranked below the cut (ties: those in _ties)
        self._ties: set[str] | None = None
        self.skip = np.zeros(0, np.uint64)  # sorted path hashes of files left out
        listed = 0
        for listed, path in enumerate(self._listed(), start=1):  # noqa: B007 - the count is reported
            if self._selected(relative(path, self.root)):
                break
        else:
            raise UserError(
                f"{what} {source!r}: all {listed} files are filtered out by "
                f"data.include={include!r} / data.exclude={exclude!r} (globs relative to {self.root})"
            )
        if max_files:
            self._limit(max_files)

    def _limit(self, max_files: int) -> None:
        """Keeps the ``max_files`` files of the lowest rank."""
        ranks = np.fromiter((int(_rank(rel)[:16], 16) for rel in self._relative()), np.uint64)
        if len(ranks) <= max_files:
            return
        cut = ranks[np.argpartition(ranks, max_files - 1)[max_files - 1]]
        below, tied = int((ranks < cut).sum()), int((ranks == cut).sum())
        self._cut = int(cut)
        if below + tied > max_files:  # 64-bit ties: the full ranks decide
            full = sorted(r for r in map(_rank, self._relative()) if int(r[:16], 16) == self._cut)
            self._ties = set(full[: max_files - below])

    def _relative(self) -> Iterator[str]:
        """The relative paths of the included files, in order."""
        for path in self._listed():
            rel = relative(path, self.root)
            if self._selected(rel):
                yield rel

    def without(self, skip: np.ndarray) -> SourceFiles:
        """These files less those whose :func:`path_hash` is in ``skip``."""
        other = copy.copy(self)
        other.skip = np.unique(np.asarray(skip, np.uint64))
        return other

    def skipped(self, path: Path) -> bool:
        """Whether ``path`` is one of the files left out by :meth:`without`."""
        if not len(self.skip):
            return False
        key = np.uint64(path_hash(path))
        index = int(np.searchsorted(self.skip, key))
        return index < len(self.skip) and self.skip[index] == key

    def __iter__(self) -> Iterator[Path]:
        return (path for path in self.unskipped() if not self.skipped(path))

    def unskipped(self) -> Iterator[Path]:
        """The files, those left out by :meth:`without` included."""
        for path in self._listed():
            rel = relative(path, self.root)
            if not self._selected(rel):
                continue
            if self._cut is not None:
                rank = _rank(rel)
                value = int(rank[:16], 16)
                if value > self._cut or (
                    value == self._cut and self._ties is not None and rank not in self._ties
                ):
                    continue
            yield path


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, with '/' separators."""
    full, base = os.fspath(path), os.fspath(root).rstrip("/")
    if os.sep == "/" and full.startswith(base + "/") and base not in ("", "."):  # the common case, fast
        rest = full[len(base) + 1 :]
        if all(part not in ("", ".", "..") for part in rest.split("/")):
            return rest
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
