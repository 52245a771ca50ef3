"""A source's files listed lazily (a million-file corpus is never one list): :func:`lazy_source_files`,
the include/exclude-filtered files of a source as an iterator (``tools/bench.py --what=data``).

The listing itself is :class:`~codex_jax.corpus.sources.SourceFiles` (over
:mod:`codex_jax.corpus.globbing`'s walks); this module only names its iterator form.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from codex_jax.corpus.globbing import iter_glob
from codex_jax.corpus.sources import SourceFiles, SourceSpec, parse_source

__all__ = ["iter_glob", "lazy_source_files"]


def lazy_source_files(
    source: str, include: str = "", exclude: str = ""
) -> tuple[SourceSpec, Path, Iterator[Path]]:
    """The parsed spec, root and (lazily listed, include/exclude-filtered) files of ``source``, the same
    files in the same order as :func:`~codex_jax.corpus.sources.source_files`; UserError when none is
    left."""
    files = SourceFiles(parse_source(source), source, include, exclude)
    return files.spec, files.root, iter(files)
