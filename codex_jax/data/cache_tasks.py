"""The tasks of a token cache build (:mod:`codex_jax.data.cache_build`): what one task tokenizes.

:class:`TextsTask` holds documents already in memory, one split (the cache of a mixture's source or of a
plugin source); :class:`FilesTask` names files that the worker reads itself, each file's records passed
through the safety filter and split by the hash of each document's key, so no process holds the corpus's
texts or tokens. Both give their documents as ``(split, text, split hash, eval order key)``
(:mod:`codex_jax.data.cache_workers` tokenizes them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from codex_jax.corpus.records import FileReport
from codex_jax.corpus.source_spec import SourceSpec
from codex_jax.corpus.sources import file_documents
from codex_jax.corpus.splits import hash_fraction
from codex_jax.data.cache_combine import SPLITS
from codex_jax.files import as_path
from codex_jax.safety.data import CorpusFilter


@dataclasses.dataclass(frozen=True)
class TextsTask:
    """Documents already in memory, all of ``split``, in stream order."""

    split: str
    texts: tuple[str, ...]

    def documents(self) -> Iterator[tuple[str, str, float, float]]:
        """``(split, text, split hash, eval order key)`` of every document (both 0: already ordered)."""
        for text in self.texts:
            yield self.split, text, 0.0, 0.0

    def splits(self) -> tuple[str, ...]:
        """The splits this task writes shards of."""
        return (self.split,)


@dataclasses.dataclass(frozen=True)
class FilesTask:
    """Files of a source read by the worker: every document goes to ``split``, or (``split=''``) to
    eval when ``hash_fraction(key) < eval_fraction``, as :func:`~codex_jax.corpus.splits.split_documents`
    decides; ``safety`` is the (resolved) ``data.safety_policy`` applied to each file's records."""

    spec: SourceSpec
    root: str
    files: tuple[str, ...]
    split: str = ""
    eval_fraction: float = 0.0
    on_bad_record: str = "skip"
    safety: str = ""
    reports: list[FileReport] = dataclasses.field(default_factory=list, compare=False)
    eval_records: dict[str, int] = dataclasses.field(default_factory=dict, compare=False)

    def documents(self) -> Iterator[tuple[str, str, float, float]]:
        """``(split, text, split hash, eval order key)`` of every good record; one report per file in
        ``reports``."""
        keep = _safety_filter(self.safety)
        for name in self.files:
            report, records = file_documents(self.spec, as_path(name), as_path(self.root), self.on_bad_record)
            self.reports.append(report)
            for key, text in keep.filter_file(report, records):
                fraction = hash_fraction(key)
                split = self.split or ("eval" if fraction < self.eval_fraction else "train")
                if split == "eval":
                    self.eval_records[report.path] = self.eval_records.get(report.path, 0) + 1
                yield split, text, fraction, hash_fraction("eval-order:" + key)

    def splits(self) -> tuple[str, ...]:
        """The splits this task writes shards of."""
        return SPLITS


_SAFETY_FILTERS: dict[str, CorpusFilter] = {}


def _safety_filter(spec: str) -> CorpusFilter:
    """The safety filter of the resolved policy ``spec`` ('' : off), one per process (its counts unused:
    the corpus manifest has them)."""
    if spec not in _SAFETY_FILTERS:
        _SAFETY_FILTERS[spec] = CorpusFilter(spec, "")
    return _SAFETY_FILTERS[spec]


Task = TextsTask | FilesTask
