"""Weighted data mixtures (``data.mixture``): train batches drawn from several sources at fixed proportions.

Each source has its own train/eval rows (and token cache). The train order is grain's
``MapDataset.mix`` of every source's own endless shuffled order (seeded by ``seed`` and the source's
name), so sequence i of the run is a pure function of the seed and i: the iterator state is the count of
batches read (as for one source) and resumes exactly. grain mixes by integer proportions; the weights
become integers with the smallest at 100 (:func:`proportions`), and the first n sequences hold
:func:`counts` of each source (each within fewer sequences of ``n * proportion`` than there are
sources). Evaluation takes ``eval.num_batches`` batches of every source's held-out rows
(:class:`SourceBatches`), so losses are reported per source and over all of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from codex_jax.config.mixture import MixtureSource
from codex_jax.data.iterators import MixedRows, TrainBatches, batches_of, eval_batches, row_count
from codex_jax.errors import UserError

Rows = np.ndarray | dict[str, np.ndarray]


def proportions(weights: Sequence[float]) -> tuple[int, ...]:
    """The integer proportions grain mixes by: each weight over the smallest, times 100, rounded (the
    smallest is exactly 100, so grain's own scaling leaves them as they are)."""
    smallest = min(weights)
    return tuple(max(1, round(w / smallest * 100)) for w in weights)


def counts(n: int, props: Sequence[int]) -> list[int]:
    """How many of the first ``n`` mixed sequences come from each source, by grain's selection rule: the
    first source gives ``n - floor(n * rest / total)`` of them (``rest``: the other sources' proportions),
    and the others share what is left the same way, in order."""
    remaining, left, out = sum(props), n, []
    for p in props:
        rest = left * (remaining - p) // remaining
        out.append(left - rest)
        remaining, left = remaining - p, rest
    return out


def source_seed(seed: int, name: str) -> int:
    """The 32-bit shuffle seed of source ``name``'s rows."""
    return int.from_bytes(hashlib.sha256(f"train-order:{seed}:{name}".encode()).digest()[:4], "little")


class Offset:
    """Adds a source's first row in the mixed rows to its row indices (a named, picklable map)."""

    def __init__(self, offset: int):
        self.offset = offset

    def __call__(self, index: int) -> int:
        return index + self.offset

    def __repr__(self) -> str:
        return f"Offset({self.offset})"


@dataclasses.dataclass(frozen=True)
class TrainMixture:
    """Every source's train rows, in mixing order, with its integer proportion."""

    names: tuple[str, ...]
    props: tuple[int, ...]
    parts: tuple[Rows, ...]

    def __len__(self) -> int:
        return sum(row_count(p) for p in self.parts)

    def rows(self) -> MixedRows | dict[str, MixedRows]:
        """All sources' rows as one (source j's rows follow those of sources 0..j-1)."""
        if isinstance(self.parts[0], dict):
            return {k: MixedRows([p[k] for p in self.parts]) for k in self.parts[0]}
        return MixedRows(list(self.parts))

    def order(self, seed: int) -> grain.MapDataset:
        """The endless mixed order of row indices (into :meth:`rows`)."""
        sizes = [row_count(p) for p in self.parts]
        offsets = np.cumsum([0, *sizes])
        orders = [
            grain.MapDataset.range(size).shuffle(seed=source_seed(seed, name)).repeat().map(Offset(int(o)))
            for name, size, o in zip(self.names, sizes, offsets, strict=False)
        ]
        return grain.MapDataset.mix(orders, weights=list(self.props))

    def realised(self, sequences: int) -> dict[str, float]:
        """The fraction of the first ``sequences`` train sequences that each source gives."""
        got = counts(sequences, self.props)
        return {name: c / max(sequences, 1) for name, c in zip(self.names, got, strict=True)}


class MixtureBatches(TrainBatches):
    """:class:`TrainBatches` of a mixture, which also tells the fraction of each source read so far."""

    def __init__(self, dataset, num_workers: int, prefetch: int, mixture: TrainMixture, global_batch: int):
        super().__init__(dataset, num_workers, prefetch)
        self.mixture, self.global_batch = mixture, global_batch

    def realised(self, state: dict | None = None) -> dict[str, float]:
        """``{source: fraction}`` of the global sequences returned so far (all processes'), or up to
        ``state`` (a state of this iterator)."""
        state = self.get_state() if state is None else state
        return self.mixture.realised(state["next_index"] * self.global_batch)


def make_mixture_iterator(
    mixture: TrainMixture,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    prefetch: int = 0,
    accum_steps: int = 1,
) -> MixtureBatches:
    """An endless, checkpointable iterator of a mixture's train batches (as ``make_train_iterator``'s)."""
    for name, part in zip(mixture.names, mixture.parts, strict=True):
        if not row_count(part):
            raise UserError(f"data.mixture.{name}: no training rows (the train split is too short)")
    ds = batches_of(
        mixture.rows(), mixture.order(seed), batch_size, process_index, process_count, accum_steps
    )
    return MixtureBatches(ds, num_workers, prefetch, mixture, batch_size * process_count)


@dataclasses.dataclass(frozen=True)
class EvalMixture:
    """Every source's held-out rows; indexing (an int) reads them as one array, source after source."""

    parts: Mapping[str, Rows]

    def __len__(self) -> int:
        return sum(row_count(p) for p in self.parts.values())

    def __getitem__(self, index: int) -> Any:
        for part in self.parts.values():
            if index < row_count(part):
                return {k: v[index] for k, v in part.items()} if isinstance(part, dict) else part[index]
            index -= row_count(part)
        raise IndexError(index)


class SourceBatches(list):
    """Eval batches of every source, one source after another; ``sources[name]`` is its ``(start, stop)``."""

    sources: dict[str, tuple[int, int]]


def mixture_eval_batches(
    mixture: EvalMixture, batch_size: int, num_batches: int, process_index: int = 0, process_count: int = 1
) -> SourceBatches:
    """``num_batches`` eval batches of every source (this process's rows), as ``eval_batches`` takes them."""
    out = SourceBatches()
    out.sources = {}
    for name, part in mixture.parts.items():
        try:
            batches = eval_batches(part, batch_size, num_batches, process_index, process_count)
        except UserError as e:
            raise UserError(f"data.mixture.{name}: {e}") from None
        out.sources[name] = (len(out), len(out) + len(batches))
        out.extend(batches)
    return out


def corpus_manifest(sources: Sequence[MixtureSource], parts: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest of a mixture's corpora: every source's files in one list (``"from": "NAME:source"``),
    the summed totals, and a checksum of the sources' checksums (which change with their documents and
    splits, not with the weights)."""
    files = [
        {**f, "from": f"{name}:{f.get('from', 'source')}"} for name, m in parts.items() for f in m["files"]
    ]
    first = next(iter(parts.values()))
    totals = {k: sum(m["totals"][k] for m in parts.values()) for k in first["totals"]}
    checksums = {name: m["checksum"] for name, m in parts.items()}
    checksum = hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()
    weights = {s.name: s.weight for s in sources}
    return {"mixture": {"weights": weights}, "files": files, "totals": totals, "checksum": checksum}


def finish_manifest(
    manifest: dict[str, Any],
    parts: Mapping[str, dict[str, Any]],
    rows: Mapping[str, Mapping[str, Rows]],
    tokens: Mapping[str, Mapping[str, int]],
    train: TrainMixture,
    sequences: int,
) -> None:
    """Adds each source's section (its settings, totals, checksum, tokens, rows, packing; its weight,
    proportion and the fraction of the run's first ``sequences`` it gives) to ``manifest['mixture']``."""
    realised = train.realised(sequences)
    total = sum(train.props)
    sections = {}
    for name, prop in zip(train.names, train.props, strict=True):
        section = {k: v for k, v in parts[name].items() if k != "files"}
        section.update(
            weight=manifest["mixture"]["weights"][name],
            proportion=prop / total,
            realised=realised[name],
            tokens=dict(tokens[name]),
            windows={split: row_count(r) for split, r in rows[name].items()},
        )
        sections[name] = section
    manifest["mixture"] = {"sequences": sequences, "sources": sections}
    for what in ("tokens", "windows"):
        manifest[what] = {
            split: sum(s[what][split] for s in sections.values()) for split in ("train", "eval")
        }
    if any("packing" in s for s in sections.values()):  # the expected padding of a train row
        padding = sum(
            s["proportion"] * s.get("packing", {}).get("train", {}).get("padding_fraction", 0.0)
            for s in sections.values()
        )
        manifest["packing"] = {"train": {"padding_fraction": padding}}
