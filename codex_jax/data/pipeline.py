"""From ``cfg.data`` to windows: prepare the corpus once, then grain iterators over them.

:func:`prepare_data` reads the source, splits it by file (or takes ``data.eval_source`` as the
held-out split), trains or loads the tokenizer, packs the token streams (cached in ``workdir/cache``;
the rows: :mod:`codex_jax.data.rows`) and writes ``workdir/data_manifest.json``, saying on stderr what
changed when an earlier manifest there describes another corpus. A text source of files is streamed,
one file at a time (:mod:`codex_jax.data.streaming`); plugin sources, example formats and mixtures are
read into memory. The iterators live in :mod:`codex_jax.data.iterators` (re-exported here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ml_collections

from codex_jax.config.mixture import MixtureSource, parse_mixture
from codex_jax.config.runspec import RunSpec
from codex_jax.corpus.examples import ExampleFields
from codex_jax.corpus.scan import log_totals
from codex_jax.corpus.sources import Document, read_source
from codex_jax.corpus.splits import (
    SETTINGS,
    corpus_manifest,
    describe_change,
    hash_fraction,
    read_manifest,
    split_documents,
    without_files,
    write_manifest,
)
from codex_jax.data import cache, iterators, mixture, streaming
from codex_jax.data.iterators import GatherRows, WindowSource, order_seed, row_count  # noqa: F401 - re-exported
from codex_jax.data.mixture import EvalMixture, TrainMixture
from codex_jax.data.rows import source_rows, text_rows
from codex_jax.errors import UserError
from codex_jax.files import as_path
from codex_jax.safety.data import CorpusFilter
from codex_jax.tokenizers import Tokenizer, load_plugin_tokenizer, load_tokenizer
from codex_jax.tokenizers.chat import CHAT_MARKERS
from codex_jax.tokenizers.hf import HFTokenizer, is_hf_tokenizer_folder
from codex_jax.tokenizers.train import load_or_train

if TYPE_CHECKING:
    from ml_collections import ConfigDict

MANIFEST_FILENAME = "data_manifest.json"
Rows = mixture.Rows


@dataclasses.dataclass(frozen=True)
class DataBundle:
    """What training needs from the data: the tokenizer and the train/eval windows."""

    tokenizer: Tokenizer  # SentencePieceTokenizer or HFTokenizer
    train_windows: Rows | TrainMixture  # [N, seq_len + 1], uint16/uint32 (a memmap when cached), or a dict
    eval_windows: Rows | EvalMixture  # [M, seq_len + 1] (see codex_jax.compute.batch for the dict)
    manifest_path: Path
    manifest: dict[str, Any]


def prepare_data(cfg: ConfigDict, workdir: str | Path, write: bool | None = None) -> DataBundle:
    """Reads, splits, tokenizes and windows ``cfg.data.source`` (or every source of ``data.mixture``);
    files go under ``workdir``.

    Only the writer (by default process 0 of ``jax.process_index()``) writes files; every other
    process builds the same deterministic result or reads what is already there. A text source of files
    is streamed (:mod:`codex_jax.data.streaming`); with ``write`` left to its default, the processes of a
    multi-host run build its token cache together, each its own share.
    """
    workdir = as_path(workdir)  # a folder or gs://
    hosts = None
    if write is None:
        hosts = streaming.Hosts.of_jax()
        write = hosts.index == 0
    sources = mixture_sources(cfg)
    if sources:
        return _prepare_mixture(cfg, workdir, write, sources)
    d = cfg.data
    if streaming.is_streamed(d):
        source = streaming.scan_source(d, data_settings(d))
        manifest = source.corpus.manifest
        if write:
            report_corpus_change(workdir / MANIFEST_FILENAME, manifest)
        tokenizer, tokenizer_path = run_tokenizer(cfg, workdir, source.tokenizer_texts, write)
        key = cache.cache_key(manifest["checksum"], tokenizer)
        progress, workers = bool(cfg.logging.progress), d.cache_workers
        streams = streaming.load_or_build(
            workdir / "cache", key, tokenizer, source, write, hosts, progress, workers
        )
        windows, tokens = text_rows(d, streams, tokenizer, manifest)
    else:
        train_docs, eval_docs, manifest = _read_and_split(d)
        if write:
            report_corpus_change(workdir / MANIFEST_FILENAME, manifest)
        tokenizer, tokenizer_path = run_tokenizer(cfg, workdir, _tokenizer_texts(train_docs), write)
        windows, tokens = source_rows(
            cfg, d, workdir / "cache", tokenizer, train_docs, eval_docs, manifest, write
        )
    manifest["tokenizer"] = {
        "path": tokenizer_path,
        "sha256": tokenizer.checksum,
        "vocab_size": tokenizer.vocab_size,
    }
    manifest["seq_len"] = d.seq_len
    manifest["tokens"] = tokens
    manifest["windows"] = {split: row_count(w) for split, w in windows.items()}
    manifest_path = workdir / MANIFEST_FILENAME
    if write:
        write_manifest(manifest_path, manifest)
    return DataBundle(tokenizer, windows["train"], windows["eval"], manifest_path, manifest)


def mixture_sources(cfg: ConfigDict) -> tuple[MixtureSource, ...]:
    """The sources of ``data.mixture`` (``()``: no mixture, ``data.source`` alone)."""
    return parse_mixture(cfg.data.get("mixture", ""), cfg.data)


def masked_rows(cfg: ConfigDict) -> bool:
    """Whether the run's batches carry a loss mask (``compute/batch.py``): ``data.packing`` other than
    'concat', or a source format (``data.format``, or a mixture source's) other than 'text'."""
    formats = [s.format for s in mixture_sources(cfg)] or [cfg.data.format]
    return cfg.data.packing != "concat" or any(f != "text" for f in formats)


def _tokenizer_texts(train_docs: list[Document]) -> Callable[[], Iterator[str]]:
    """The training documents' texts in a hash order, so that a byte budget samples them all."""
    return lambda: (d.text for d in sorted(train_docs, key=lambda d: hash_fraction("tok:" + d.key)))


def run_tokenizer(cfg: ConfigDict, workdir: Path, texts: Callable[[], Iterable[str]], write: bool):
    """``(tokenizer, where)``, trained on ``texts()`` when there is none yet; it must have an EOS."""
    tokenizer, tokenizer_path = load_run_tokenizer(cfg, workdir, texts, write)
    if tokenizer.eos_id < 0:
        raise UserError(f"the tokenizer {tokenizer_path} has no EOS token to end documents")
    return tokenizer, tokenizer_path


def _prepare_mixture(
    cfg: ConfigDict, workdir: Path, write: bool, sources: tuple[MixtureSource, ...]
) -> DataBundle:
    """:func:`prepare_data` of ``data.mixture``: every source read, split, cached (``cache/<name>``) and
    packed on its own, with one tokenizer trained on all of their training documents."""
    sections = {s.name: _source_section(cfg.data, s) for s in sources}
    read = {}
    for s in sources:
        with _named(s.name):
            read[s.name] = _read_and_split(sections[s.name], f"{s.name}: ")
    manifest = mixture.corpus_manifest(sources, {name: m for name, (_, _, m) in read.items()})
    if write:
        report_corpus_change(workdir / MANIFEST_FILENAME, manifest)
    all_train = [doc for train_docs, _, _ in read.values() for doc in train_docs]
    tokenizer, tokenizer_path = run_tokenizer(cfg, workdir, _tokenizer_texts(all_train), write)
    masked = masked_rows(cfg)
    rows, tokens = {}, {}
    for s in sources:
        train_docs, eval_docs, part = read[s.name]
        with _named(s.name):
            cache_dir = workdir / "cache" / s.name
            rows[s.name], tokens[s.name] = source_rows(
                cfg, sections[s.name], cache_dir, tokenizer, train_docs, eval_docs, part, write, masked
            )
    train = mixture.TrainMixture(
        tuple(rows),
        mixture.proportions([s.weight for s in sources]),
        tuple(r["train"] for r in rows.values()),
    )
    sequences = cfg.train.steps * cfg.train.grad_accum_steps * cfg.data.batch_size
    mixture.finish_manifest(
        manifest, {name: m for name, (_, _, m) in read.items()}, rows, tokens, train, sequences
    )
    manifest["tokenizer"] = {
        "path": tokenizer_path,
        "sha256": tokenizer.checksum,
        "vocab_size": tokenizer.vocab_size,
    }
    manifest["seq_len"] = cfg.data.seq_len
    manifest_path = workdir / MANIFEST_FILENAME
    if write:
        write_manifest(manifest_path, manifest)
    evals = mixture.EvalMixture({name: r["eval"] for name, r in rows.items()})
    return DataBundle(tokenizer, train, evals, manifest_path, manifest)


def _source_section(d, source: MixtureSource) -> ml_collections.ConfigDict:
    """``cfg.data`` with a mixture source's settings: what reads, splits and packs that source."""
    return ml_collections.ConfigDict({**d.to_dict(), **source.settings(), "mixture": ""})


@contextlib.contextmanager
def _named(name: str):
    """Errors of a mixture source's data work name it: ``data.mixture.NAME: ...``."""
    try:
        yield
    except UserError as e:
        raise UserError(f"data.mixture.{name}: {e}") from None


def make_train_iterator(
    windows,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    prefetch: int = 0,
    accum_steps: int = 1,
):
    """:func:`codex_jax.data.iterators.make_train_iterator`, or a mixture's
    (:func:`codex_jax.data.mixture.make_mixture_iterator`) when ``windows`` is a TrainMixture."""
    make = (
        mixture.make_mixture_iterator
        if isinstance(windows, mixture.TrainMixture)
        else iterators.make_train_iterator
    )
    return make(windows, batch_size, seed, process_index, process_count, num_workers, prefetch, accum_steps)


def eval_batches(windows, batch_size: int, num_batches: int, process_index: int = 0, process_count: int = 1):
    """:func:`codex_jax.data.iterators.eval_batches`; of every source (a :class:`SourceBatches`) when
    ``windows`` is an EvalMixture."""
    if isinstance(windows, mixture.EvalMixture):
        return mixture.mixture_eval_batches(windows, batch_size, num_batches, process_index, process_count)
    return iterators.eval_batches(windows, batch_size, num_batches, process_index, process_count)


def mixture_scalars(train_iter, state: dict | None = None) -> dict[str, float]:
    """``{'train/mix/<source>': fraction}`` of the sequences a mixture's iterator returned so far, or up to
    its ``state`` ({} without a mixture)."""
    if not isinstance(train_iter, mixture.MixtureBatches):
        return {}
    return {f"train/mix/{name}": f for name, f in train_iter.realised(state).items()}


def load_run_tokenizer(
    cfg: ConfigDict, workdir: Path, train_texts=None, write: bool = True
) -> tuple[Tokenizer, str]:
    """``(tokenizer, where)`` of a run: ``data.tokenizer``, else ``model.init_from``'s folder, else
    ``workdir/tokenizer``'s (trained on ``train_texts()`` when missing and ``train_texts`` given).

    Hugging Face tokenizers are checked against the model's vocabulary by the trainer.
    """
    plugin = load_plugin_tokenizer(cfg.data.tokenizer)  # a codex_jax.tokenizers plugin
    if plugin is not None:
        return plugin, cfg.data.tokenizer
    spec = RunSpec.from_config(cfg)
    path, folder = cfg.data.tokenizer or spec.inherited_tokenizer(), spec.hf_folder
    if path and (folder or is_hf_tokenizer_folder(path)):
        return load_tokenizer(path), path
    if folder and not path:
        return HFTokenizer.load(folder), str(folder)
    directory = workdir / "tokenizer"
    if not path and train_texts is None and not (directory / "spm.model").is_file():
        raise UserError(f"no tokenizer in {directory}; train first (--mode=train)")
    formats = {cfg.data.format, *(s.format for s in mixture_sources(cfg))}
    symbols = CHAT_MARKERS if "chat" in formats else ()  # the built-in template's markers
    tok = load_or_train(
        path, directory, cfg.model.vocab_size, train_texts, cfg.data.tokenizer_train_bytes, write, symbols
    )
    return tok, path or str(directory)


def _read_and_split(d, label: str = "") -> tuple[list[Document], list[Document], dict[str, Any]]:
    """(train documents, eval documents, corpus manifest) of the data section ``d``, with a log line
    (``data: LABEL...``)."""
    started = time.perf_counter()
    safety = CorpusFilter(d.safety_policy, d.source)  # secrets redacted or records dropped
    fields = ExampleFields(d.format, d.prompt_field, d.completion_field, d.messages_field)
    corpus = safety(read_source(d.source, d.max_files, d.include, d.exclude, d.on_bad_record, fields))
    eval_corpus = None
    if d.eval_source:
        eval_corpus = safety(read_source(d.eval_source, 0, on_bad_record=d.on_bad_record, fields=fields))
        corpus, overlap = without_files(corpus, eval_corpus)
        if overlap:
            print(
                f"data: {overlap} file(s) of data.source are also in data.eval_source and are "
                "used for evaluation only",
                file=sys.stderr,
                flush=True,
            )
        if not corpus.documents:
            raise UserError(
                "data.source has no documents left for training once the files of "
                "data.eval_source are held out"
            )
        train_docs, eval_docs = corpus.documents, eval_corpus.documents
    else:
        train_docs, eval_docs = split_documents(corpus.documents, d.eval_fraction)
    manifest = corpus_manifest(corpus, eval_docs, data_settings(d), eval_corpus)
    manifest["on_bad_record"] = d.on_bad_record
    safety.add_to_manifest(manifest)
    log_totals(label, manifest["totals"], started)
    return train_docs, eval_docs, manifest


def data_settings(d) -> dict[str, Any]:
    """The data settings that the corpus checksum covers."""
    settings = {key: d[key] for key in SETTINGS}
    if d.format != "text":  # text runs keep the checksum (and token cache) they always had
        settings.update(format=d.format, fields=[d.prompt_field, d.completion_field, d.messages_field])
    return settings


def report_corpus_change(path: Path, manifest: dict[str, Any]) -> str | None:
    """Prints (and returns) a note when ``path`` holds a manifest of another corpus. The old manifest's
    file rows are read one line at a time, and compared only when the checksums differ."""
    old = read_manifest(path)
    change = describe_change(old, manifest) if old is not None else None
    if change:
        change = f"data: the corpus changed since {path} was written: {change}"
        print(change, file=sys.stderr, flush=True)
    return change
