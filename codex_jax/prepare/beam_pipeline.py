"""The token cache built as an Apache Beam pipeline: tasks tokenized on workers, shards written in parallel.

The stages (the only module of codex_jax that imports Beam, and only inside :func:`run_pipeline`):

1. ``tokenize``: each build task (:class:`~codex_jax.data.cache_tasks.FilesTask`: files read, safety
   filtered, split, tokenized by :func:`~codex_jax.data.cache_workers.run_task`, exactly as the in-process
   build) writes its shard files and marker to the build folder ``cache/build-<key digest>/`` (a task
   whose marker is there is not run again: a failed pipeline resumes); a small summary goes on.
2. ``plan``: one worker lays the streams out from the summaries (:func:`~codex_jax.data.cache_shards.
   plan_segments`: the rules of the in-process combine) and cuts them into output shards.
3. ``write``: each output shard is written by one worker from byte ranges of the task shards.
4. ``finish``: ``files.jsonl`` (every file's report), then ``key.json`` last; the build folder goes.

The output rows are the in-process build's bytes whatever the runner, its worker count or the order in
which tasks finish: every stage's result depends only on task indices, never on arrival order.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from codex_jax import files
from codex_jax.data import cache_shards
from codex_jax.data.cache_combine import marker_path, shard_path, write_file_reports
from codex_jax.data.cache_tasks import FilesTask
from codex_jax.data.cache_workers import run_task
from codex_jax.errors import UserError
from codex_jax.files import as_path, is_remote
from codex_jax.tokenizers.base import Tokenizer

NAMESPACE = "codex_jax"  # Beam metrics' namespace
_TASK_FILES = ("train.tokens", "eval.tokens", "eval.order.npy")


def default_options(argv: Sequence[str]) -> list[str]:
    """Beam's pipeline arguments ``argv`` with this command's defaults: the DirectRunner in 2 processes."""
    args = list(argv)
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if "--runner" not in given:
        args.append("--runner=DirectRunner")
    runner = next((a.split("=", 1)[1] for a in args if a.startswith("--runner=")), "DirectRunner")
    if runner in ("DirectRunner", "direct"):
        if "--direct_num_workers" not in given:
            args.append("--direct_num_workers=2")
        if "--direct_running_mode" not in given:
            args.append("--direct_running_mode=multi_processing")
    if "--default_sdk_harness_log_level" not in given:  # the workers' INFO lines drown the command's output
        args.append("--default_sdk_harness_log_level=WARNING")
    return args


def tokenize_task(
    item: tuple[int, FilesTask], tokenizer: Tokenizer, build: str, dtype: str
) -> dict[str, Any]:
    """Stage 1: task ``index`` tokenized into the build folder (skipped when its marker is there); its
    summary (token counts, extremes, eval order)."""
    from apache_beam.metrics import Metrics

    index, task = item
    folder = as_path(build)
    marker = _done_marker(folder, index, np.dtype(dtype))
    if marker is None:
        local = Path(tempfile.mkdtemp(prefix="codex_jax_task."))
        try:
            fresh = dataclasses.replace(task, reports=[], eval_records={})  # a retried element starts clean
            run_task(local, index, fresh, tokenizer, np.dtype(dtype), num_threads=1)
            for name in _TASK_FILES:
                _put(shard_path(local, index, name), shard_path(folder, index, name))
            _put(marker_path(local, index), marker_path(folder, index))  # last: the task is done
        finally:
            shutil.rmtree(local, ignore_errors=True)
        marker = json.loads(marker_path(folder, index).read_text())
        Metrics.counter(NAMESPACE, "tasks_run").inc()
        Metrics.counter(NAMESPACE, "chars").inc(marker["chars"])
        for report in marker["reports"]:
            Metrics.counter(NAMESPACE, "files").inc()
            Metrics.counter(NAMESPACE, "records").inc(report["records"])
            Metrics.counter(NAMESPACE, "bad_records_skipped").inc(report["skipped"])
    else:
        Metrics.counter(NAMESPACE, "tasks_skipped").inc()
    with shard_path(folder, index, "eval.order.npy").open("rb") as f:
        order = np.load(f, allow_pickle=False)
    return {"index": index, "tokens": marker["tokens"], "extremes": marker["extremes"], "order": order}


def _done_marker(folder: Path, index: int, dtype: np.dtype) -> dict | None:
    """Task ``index``'s marker when it is done (its shard files there, of the sizes it records)."""
    path = marker_path(folder, index)
    if not path.exists():
        return None
    marker = json.loads(path.read_text())
    for split, count in marker["tokens"].items():
        shard = shard_path(folder, index, f"{split}.tokens")
        if not shard.exists() or files.size(shard) != count * dtype.itemsize:
            return None
    return marker


def _put(src: Path, dst: Path) -> None:
    """Moves the local file ``src`` to ``dst`` (a folder or a bucket)."""
    if is_remote(dst):
        files.copy_file(src, dst)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dst)


def plan(summaries: list[dict[str, Any]], shard_tokens: int) -> dict[str, Any]:
    """Stage 2: the segments of both streams and their output shards' token ranges."""
    summaries = sorted(summaries, key=lambda s: s["index"])
    assert [s["index"] for s in summaries] == list(range(len(summaries))), "a task's summary is missing"
    segments = cache_shards.plan_segments(summaries, [s["order"] for s in summaries])
    ranges = {
        split: cache_shards.shard_ranges(cache_shards.split_tokens(segs), shard_tokens)
        for split, segs in segments.items()
    }
    return {"tasks": len(summaries), "segments": segments, "ranges": ranges}


def shard_jobs(layout: dict[str, Any]) -> list[tuple[str, int]]:
    """Every output shard: ``(split, index)``."""
    return [(split, i) for split, ranges in layout["ranges"].items() for i in range(len(ranges))]


def write_output_shard(
    job: tuple[str, int], layout: dict[str, Any], build: str, out: str, dtype: str
) -> tuple[str, int, dict[str, Any]]:
    """Stage 3: one output shard written from the task shards; ``(split, index, its key.json entry)``."""
    from apache_beam.metrics import Metrics

    split, index = job
    ranges = layout["ranges"][split]
    start, stop = ranges[index]
    itemsize = np.dtype(dtype).itemsize
    name = cache_shards.shard_name(split, index, len(ranges))
    folder = as_path(build)

    def open_task_file(task: int, which: str):
        return shard_path(folder, task, f"{which}.tokens").open("rb")

    pieces = cache_shards.range_bytes(layout["segments"][split], start, stop, itemsize, open_task_file)
    local = Path(tempfile.mkdtemp(prefix="codex_jax_shard."))
    try:
        info = cache_shards.write_shard(local / name, pieces, itemsize)
        _put(local / name, as_path(out) / name)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    Metrics.counter(NAMESPACE, "shards_written").inc()
    return split, index, {"name": name, **info}


def finish(
    written: list[tuple[str, int, dict[str, Any]]],
    layout: dict[str, Any],
    build: str,
    out: str,
    key: dict,
    settings: dict[str, Any],
    prepared_by: str,
) -> str:
    """Stage 4: ``files.jsonl``, then ``key.json``; the build folder is removed. Returns the key path."""
    shards: dict[str, list[dict[str, Any]]] = {split: [] for split in layout["ranges"]}
    for split, _, entry in sorted(written, key=lambda w: (w[0], w[1])):
        shards[split].append(entry)
    directory, folder = as_path(out), as_path(build)
    local = Path(tempfile.mkdtemp(prefix="codex_jax_reports."))
    try:
        write_file_reports(folder, layout["tasks"], local / "files.jsonl")
        _put(local / "files.jsonl", directory / "files.jsonl")
    finally:
        shutil.rmtree(local, ignore_errors=True)
    record = cache_shards.key_record(key, shards, settings, prepared_by)
    files.write_bytes_atomic(directory / "key.json", (json.dumps(record, indent=2) + "\n").encode())
    files.rmtree(folder)
    return os.fspath(directory / "key.json")


def run_pipeline(
    tasks: Sequence[FilesTask],
    tokenizer: Tokenizer,
    key: dict,
    out: Path,
    build: Path,
    settings: dict[str, Any],
    beam_args: Sequence[str],
    shard_tokens: int = cache_shards.SHARD_TOKENS,
) -> dict[str, int]:
    """Runs the pipeline (Beam options from ``beam_args``) until it is done; returns Beam's counters."""
    import logging

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    logging.getLogger("apache_beam").setLevel(logging.WARNING)

    dtype, build_uri, out_uri = key["dtype"], os.fspath(build), os.fspath(out)
    prepared_by = f"codex-jax prepare (apache-beam {beam.__version__})"
    options = PipelineOptions(default_options(beam_args))
    p = beam.Pipeline(options=options)
    summaries = (
        p
        | "tasks" >> beam.Create(list(enumerate(tasks)))
        | "spread tasks" >> beam.Reshuffle()
        | "tokenize" >> beam.Map(tokenize_task, tokenizer, build_uri, dtype)
    )
    layout = summaries | "gather" >> beam.combiners.ToList() | "plan" >> beam.Map(plan, int(shard_tokens))
    written = (
        layout
        | "shards" >> beam.FlatMap(shard_jobs)
        | "spread shards" >> beam.Reshuffle()
        | "write" >> beam.Map(write_output_shard, beam.pvalue.AsSingleton(layout), build_uri, out_uri, dtype)
    )
    _ = (
        written
        | "collect" >> beam.combiners.ToList()
        | "finish"
        >> beam.Map(finish, beam.pvalue.AsSingleton(layout), build_uri, out_uri, key, settings, prepared_by)
    )
    try:
        result = p.run()
        result.wait_until_finish()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a worker's failure (a file gone since pass 1...) as one line
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        why = lines[-1] if lines else type(e).__name__
        raise UserError(
            f"codex-jax prepare: the pipeline failed ({why[:300]}); the tasks done so far are kept in "
            f"{build}: run it again to continue"
        ) from None
    return _counters(result)


def _counters(result: Any) -> dict[str, int]:
    """Beam's counters of this namespace (summed over steps); {} when the runner reports none."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except (AttributeError, NotImplementedError, KeyError):
        return {}
    totals: dict[str, int] = {}
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals
