"""A source's files listed lazily, in sorted order (a million-file corpus is never one list).

:class:`SourceFiles` lists the files of a :class:`~codex_jax.corpus.source_spec.SourceSpec` one folder at
a time (over :mod:`codex_jax.corpus.globbing`'s walks) every time it is iterated, keeping those that match
the include/exclude globs (:func:`glob_regex`), at most ``data.max_files`` of them (chosen by a salted
hash of the relative path), less those left to another source (:func:`path_hash`).
:func:`lazy_source_files` is its iterator form (``tools/bench.py --what=data``); :func:`list_files` and
:func:`select_files` the list forms.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from codex_jax.corpus.formats import hf_disk_files
from codex_jax.corpus.globbing import iter_glob, iter_stdlib, stdlib_root
from codex_jax.corpus.source_spec import SourceSpec, parse_source
from codex_jax.errors import UserError
from codex_jax.files import as_path, glob_files, is_remote

__all__ = [
    "SourceFiles",
    "glob_regex",
    "iter_glob",
    "lazy_source_files",
    "list_files",
    "path_hash",
    "relative",
    "select_files",
]


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


def lazy_source_files(
    source: str, include: str = "", exclude: str = ""
) -> tuple[SourceSpec, Path, Iterator[Path]]:
    """The parsed spec, root and (lazily listed, include/exclude-filtered) files of ``source``, the same
    files in the same order as :func:`~codex_jax.corpus.sources.source_files`; UserError when none is
    left."""
    files = SourceFiles(parse_source(source), source, include, exclude)
    return files.spec, files.root, iter(files)
