"""``codex-jax prepare``: a run's token cache built by an Apache Beam pipeline, as ArrayRecord shards.

The driver does what training's data preparation does before tokenizing
(:func:`codex_jax.data.pipeline.prepare_data`, streamed path): the corpus manifest (listing, safety
filter, splits; :func:`codex_jax.data.streaming.scan_source`) and the tokenizer (trained on its sample
when the workdir has none). The pipeline (:mod:`codex_jax.prepare.beam_pipeline`) then tokenizes the same
build tasks and writes ``workdir/cache`` as ArrayRecord shards under the key that training computes, so
a training run with the same data settings reads it (:mod:`codex_jax.data.cache_shards`) and refuses it
when they differ. Only a text source of files outside a mixture is prepared this way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codex_jax.corpus.splits import write_manifest
from codex_jax.data import cache, cache_shards, pipeline, streaming
from codex_jax.data.cache_combine import build_folder
from codex_jax.errors import UserError
from codex_jax.prepare import beam_pipeline


def prepare(
    cfg, workdir: Path, beam_args: Sequence[str] = (), shard_tokens: int = cache_shards.SHARD_TOKENS
) -> dict[str, Any]:
    """Builds ``workdir/cache`` for ``cfg.data`` with Beam (``beam_args``: its pipeline options), writes
    the tokenizer (when trained) and ``data_manifest.json``; returns a summary. An up-to-date prepared
    cache is kept as it is."""
    d = cfg.data
    if not streaming.is_streamed(d):
        raise UserError(
            "codex-jax prepare: data.source must be a text source of files (data.format='text', no "
            "data.mixture, no plugin source); other sources are prepared in-process by training"
        )
    started = time.perf_counter()
    source = streaming.scan_source(d, pipeline.data_settings(d))
    manifest = source.corpus.manifest
    pipeline.report_corpus_change(workdir / pipeline.MANIFEST_FILENAME, manifest)
    tokenizer, tokenizer_path = pipeline.run_tokenizer(cfg, workdir, source.tokenizer_texts, True)
    key = cache.cache_key(manifest["checksum"], tokenizer)
    directory = workdir / "cache"
    stored = cache.stored_key(directory)
    scanned = time.perf_counter()
    if isinstance(stored, dict) and stored.get("format") == cache_shards.FORMAT and stored.get("key") == key:
        print(f"prepare: the token cache in {directory} is up to date", file=sys.stderr, flush=True)
        counters: dict[str, int] = {}
    else:
        _clear(directory)
        tasks = list(source.tasks())
        settings = cache_shards.prepared_settings(manifest)
        build = build_folder(directory, key)
        print(f"prepare: {len(tasks)} tasks into {directory}", file=sys.stderr, flush=True)
        counters = beam_pipeline.run_pipeline(
            tasks, tokenizer, key, directory, build, settings, beam_args, shard_tokens
        )
        stored = cache.stored_key(directory)
        if not isinstance(stored, dict) or stored.get("key") != key:
            raise UserError(f"codex-jax prepare: the pipeline finished without writing {directory}/key.json")
    seconds = time.perf_counter() - started
    manifest["tokenizer"] = {
        "path": tokenizer_path,
        "sha256": tokenizer.checksum,
        "vocab_size": tokenizer.vocab_size,
    }
    manifest["tokens"] = stored["tokens"]
    write_manifest(workdir / pipeline.MANIFEST_FILENAME, manifest)
    totals = manifest["totals"]
    summary = {
        "cache": str(directory),
        "files": totals["files"],
        "bytes": totals["bytes"],
        "skipped_records": totals["skipped"],
        "safety": {k: v for k, v in (manifest.get("safety") or {}).items() if k.startswith("records_")},
        "tokens": stored["tokens"],
        "shards": {split: len(s) for split, s in stored["shards"].items()},
        "seconds": round(seconds, 2),
        "pipeline_seconds": round(time.perf_counter() - scanned, 2),
        "mb_per_s": round(totals["bytes"] / 1e6 / max(seconds, 1e-9), 3),
        "counters": counters,
    }
    return summary


def _clear(directory: Path) -> None:
    """Removes a cache's key and streams or shards from ``directory`` (the key first: never a key without
    its data); build folders are kept (a resumed pipeline reuses its finished tasks)."""
    if not directory.exists():
        return
    (directory / cache.KEY_FILENAME).unlink(missing_ok=True)
    for path in directory.iterdir():
        if path.name.endswith((f".{cache_shards.FORMAT}", ".tokens")):
            path.unlink()
