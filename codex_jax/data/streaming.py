"""A file source prepared by streaming: no process holds the corpus's texts, its tokens or its file list.

Three passes over the files, each reading one file at a time:

1. :func:`~codex_jax.corpus.scan.scan_corpus`: the corpus manifest (its rows written to disk as they
   are made; the checksum keys the token cache) and the tokenizer's sample (positions only);
2. only when a tokenizer must be trained: the sampled documents, read again (about
   ``data.tokenizer_train_bytes`` of text);
3. only when the token cache must be built: :func:`codex_jax.data.cache_build.build_files`, in
   ``data.cache_workers`` processes. In a multi-host run (``jax.process_count() > 1``) each host tokenizes
   its own share of the tasks, and no task is tokenized twice: with a shared local workdir into the shared
   build folder, after a barrier process 0 combines the shares and the others wait and read; with the
   cache on a bucket each host uploads its share to the bucket's build folder, process 0 downloads the
   others after a barrier, combines them locally and uploads the streams and the key, and after a second
   barrier every host reads them.

A one-process build that cannot go into the cache folder itself (the folder is on a bucket, or this
process does not write) goes into a local temporary folder: then the writer uploads it, and the others
use it where it is until they exit.

Streamed: ``data.format='text'`` sources of files (globs, ``'stdlib'``, ``jsonl:``/``csv:``, Parquet,
ArrayRecord, ``hf_disk:``, on disk or ``gs://``) outside a mixture. Plugin sources, example formats
and mixtures are read into memory (:func:`codex_jax.data.pipeline.prepare_data`).
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from codex_jax import files
from codex_jax.corpus.scan import ScannedCorpus, scan_corpus
from codex_jax.corpus.sources import is_plugin_source
from codex_jax.data import cache, cache_build, cache_shards
from codex_jax.data.cache_combine import SPLITS, build_folder, finish_files
from codex_jax.data.cache_tasks import FilesTask
from codex_jax.errors import UserError
from codex_jax.safety.data import CorpusFilter
from codex_jax.tokenizers.base import Tokenizer

TASK_BYTES = 16_000_000  # bytes of files per build task


@dataclasses.dataclass(frozen=True)
class Hosts:
    """This process's place in a multi-host run, and a barrier over all of its processes."""

    index: int
    count: int
    barrier: Callable[[str], None]

    @classmethod
    def of_jax(cls) -> Hosts:
        """The processes of ``jax.distributed`` (one, when it is not initialized)."""
        return cls(jax.process_index(), jax.process_count(), multihost_utils.sync_global_devices)


def is_streamed(d) -> bool:
    """Whether the data section ``d`` is prepared by streaming (a text source of files, no mixture)."""
    sources = [d.source] + ([d.eval_source] if d.eval_source else [])
    return d.format == "text" and not d.get("mixture", "") and not any(map(is_plugin_source, sources))


@dataclasses.dataclass
class StreamedSource:
    """A file source read once (:attr:`corpus`), ready to train a tokenizer on and to build its cache."""

    corpus: ScannedCorpus
    safety: CorpusFilter  # the counting filter of the scan (its summary goes to the manifest)
    eval_fraction: float

    def tokenizer_texts(self) -> Iterator[str]:
        """The tokenizer's training documents (see :meth:`ScannedCorpus.tokenizer_texts`), filtered by a
        fresh (not counting) safety filter."""
        return self.corpus.tokenizer_texts(CorpusFilter(self.safety.spec, "").filter_file)

    def tasks(self) -> Iterator[FilesTask]:
        """The build's tasks (:data:`TASK_BYTES` of files each), listed lazily: the source's files (split
        by hash, or all train with an eval source), then the eval source's."""
        c, policy, task_bytes = self.corpus, self.safety.spec, TASK_BYTES
        if c.eval_files is None:
            return cache_build.file_tasks(
                c.files.spec,
                c.files.root,
                c.files,
                task_bytes,
                "",
                self.eval_fraction,
                c.on_bad_record,
                policy,
            )
        source = cache_build.file_tasks(
            c.files.spec, c.files.root, c.files, task_bytes, "train", 0.0, c.on_bad_record, policy
        )
        held_out = cache_build.file_tasks(
            c.eval_files.spec,
            c.eval_files.root,
            c.eval_files,
            task_bytes,
            "eval",
            0.0,
            c.on_bad_record,
            policy,
        )
        return itertools.chain(source, held_out)


def scan_source(d, settings: dict[str, Any], label: str = "") -> StreamedSource:
    """Pass 1 over the file source of the data section ``d``: its manifest (with the safety filter's
    section) and the tokenizer's sample."""
    safety = CorpusFilter(d.safety_policy, d.source)  # secrets redacted or records dropped, counted
    corpus = scan_corpus(d, settings, safety.filter_file, label)
    corpus.manifest["on_bad_record"] = d.on_bad_record
    safety.add_to_manifest(corpus.manifest)
    return StreamedSource(corpus, safety, d.eval_fraction)


def load_or_build(
    directory: Path,
    key: dict,
    tokenizer: Tokenizer,
    source: StreamedSource,
    write: bool,
    hosts: Hosts | None,
    progress: bool,
    workers: int,
) -> dict[str, np.ndarray]:
    """The train and eval token streams of ``source``: from the cache in ``directory`` when its key
    matches, else built (see the module docstring) and, when ``write``, cached. ``hosts`` (None: this
    process alone) share a build when there are several of them and ``directory`` is local."""
    several = hosts is not None and hosts.count > 1
    shared = several and cache_build.is_local(directory)

    def build() -> dict[str, np.ndarray] | None:
        try:
            if several and not shared:  # the cache is on a bucket: the shares meet there
                assert hosts is not None
                args = (tokenizer, source, write, hosts, progress, workers)
                return _build_shares_on_bucket(directory, key, *args)
            if several:  # a shared local folder
                assert hosts is not None
                stats = cache_build.build_files(
                    directory, key, tokenizer, source.tasks(), workers, hosts.index, hosts.count, progress
                )
                hosts.barrier("codex_jax:token_cache_shares")
                if hosts.index == 0:
                    finish_files(directory, key, stats.tasks)
                hosts.barrier("codex_jax:token_cache")
                return None  # saved, key included
            if write and cache_build.is_local(directory):
                cache_build.build_files(directory, key, tokenizer, source.tasks(), workers, progress=progress)
                return None
            local = _local_folder()
            cache_build.build_files(local, key, tokenizer, source.tasks(), workers, progress=progress)
            streams = cache.load(local, key)
            assert streams is not None, f"token cache in {local} did not read back"
            return streams
        except OSError as e:  # disk full, I/O error: no key is written
            raise UserError(f"token cache {directory}: cannot write ({e.strerror or e})") from e

    # a cache prepared by `codex-jax prepare` for other data is refused, not rebuilt over
    cache_shards.refuse_other(directory, cache.stored_key(directory), key, source.corpus.manifest)
    return cache.load_or_build_streams(directory, key, SPLITS, build, write)


def _local_folder() -> Path:
    """A local temporary folder, removed when this process exits (streams stay memory-mapped till then)."""
    local = Path(tempfile.mkdtemp(prefix="codex_jax_cache."))
    atexit.register(shutil.rmtree, local, True)
    return local


def _build_shares_on_bucket(
    directory: Path,
    key: dict,
    tokenizer: Tokenizer,
    source: StreamedSource,
    write: bool,
    hosts: Hosts,
    progress: bool,
    workers: int,
) -> dict[str, np.ndarray] | None:
    """A multi-host build into a cache folder on a bucket: each host tokenizes its share into a local build
    folder and uploads its shards and markers to the bucket's build folder; after a barrier process 0
    downloads the other shares, combines them locally (no second tokenizing pass) and uploads the streams
    and then the key (when ``write``); after a second barrier every process reads the cache from the
    bucket (None is returned), or process 0 that did not write keeps its local streams."""
    local = _local_folder()
    stats = cache_build.build_files(
        local, key, tokenizer, source.tasks(), workers, hosts.index, hosts.count, progress
    )
    mine, meeting = build_folder(local, key), build_folder(directory, key)
    for path in sorted(mine.iterdir()):
        files.copy_file(path, meeting / path.name)
    hosts.barrier("codex_jax:token_cache_shares")
    if hosts.index == 0:
        for path in files.walk_files(meeting):
            if not (mine / path.name).exists():
                files.copy_file(path, mine / path.name)
        finish_files(local, key, stats.tasks)
        streams = cache.load(local, key)
        assert streams is not None, f"token cache in {local} did not read back"
        if write:
            files.copy_file(local / "files.jsonl", directory / "files.jsonl")
            cache.save(directory, key, streams)  # the streams, then the key
        files.rmtree(meeting)
    hosts.barrier("codex_jax:token_cache")
    return streams if hosts.index == 0 and not write else None
