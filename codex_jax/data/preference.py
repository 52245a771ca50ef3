"""Preference pairs for DPO: one record a line (JSONL) or a row (Parquet) with ``prompt``, ``chosen`` and
``rejected``, each as text (``prompt + chosen`` is the example, the completion and its EOS trained) or as
chat message lists (``[{"role", "content"}, ...]``: the prompt's messages then the completion's, rendered
with the tokenizer's chat template; the assistant turns are trained).

Each side becomes a row of ``seq_len + 1`` token ids (right-padded with 0) and per-target weights that are 1
on the trained targets: :mod:`codex_jax.compute.preference` sums the log-probabilities under them. A record
without a field, one the template cannot render, or one longer than ``seq_len + 1`` tokens is skipped and
listed (``'file:line: why'``); a file with no usable pair is an error.

A prompt's own assistant turns (multi-turn prompts) are trained on both sides: their tokens and contexts are
the same in both, so they cancel in the ``sigmoid`` and ``hinge`` losses, not in ``ipo``'s token counts.
"""

from __future__ import annotations

import dataclasses
import json

import grain
import numpy as np

from codex_jax.data import pair_packing
from codex_jax.errors import UserError
from codex_jax.files import as_path
from codex_jax.tokenizers.base import Tokenizer
from codex_jax.tokenizers.chat import RenderError, encode_example

SIDES = ("chosen", "rejected")


@dataclasses.dataclass(frozen=True)
class Pairs:
    """Token rows ``{'chosen', 'chosen_weights', 'rejected', 'rejected_weights'}`` (numpy, N pairs) and the
    records skipped."""

    arrays: dict
    skipped: list[str]
    path: str

    def __len__(self) -> int:
        return len(self.arrays["chosen"])


def _records(path):
    """``(line or row number, record)`` of a JSONL or Parquet file (a malformed line: the error)."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        with path.open("rb") as f:
            yield from enumerate(pq.read_table(f).to_pylist(), 1)
        return
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except ValueError as e:
                yield number, e


def _turns(prompt, completion) -> list[tuple[str, str]]:
    if isinstance(prompt, str) and isinstance(completion, str):
        return [("prompt", prompt), ("completion", completion)]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    if not isinstance(prompt, list) or not isinstance(completion, list):
        raise ValueError("prompt and completions must be text or lists of messages")
    turns = []
    for message in [*prompt, *completion]:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError("a message without text 'content'")
        turns.append((str(message.get("role", "")), message["content"]))
    return turns


def _row(tokenizer: Tokenizer, prompt, completion, length: int, template: str):
    """``(ids [length], weights [length - 1])`` of one side; ValueError saying why it is unusable."""
    try:
        ids, mask = encode_example(tokenizer, _turns(prompt, completion), "completion", template)
    except RenderError as e:
        raise ValueError(f"the chat template cannot render it ({e})") from None
    if len(ids) > length:
        raise ValueError(f"{len(ids)} tokens, more than data.seq_len + 1 = {length}")
    if not any(mask[1:]):
        raise ValueError("nothing to train: the completion is empty")
    tokens = np.zeros(length, np.int32)
    tokens[: len(ids)] = ids
    weights = np.zeros(length - 1, np.float32)
    weights[: len(ids) - 1] = mask[1:]
    return tokens, weights


def read_pairs(source: str, tokenizer: Tokenizer, seq_len: int, template: str = "") -> Pairs:
    """The pairs of ``source`` (``.jsonl`` or ``.parquet``, local or ``gs://``): rows of seq_len + 1 ids."""
    path = as_path(source)
    if not path.is_file():
        raise UserError(f"preference data: no such file {path}")
    rows: dict[str, list] = {k: [] for s in SIDES for k in (s, f"{s}_weights")}
    skipped: list[str] = []
    try:
        for number, record in _records(path):
            try:
                if isinstance(record, Exception):
                    raise record
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                missing = [k for k in ("prompt", *SIDES) if not record.get(k)]
                if missing:
                    raise ValueError(f"missing or empty field(s) {', '.join(missing)}")
                sides = [_row(tokenizer, record["prompt"], record[s], seq_len + 1, template) for s in SIDES]
            except ValueError as e:
                skipped.append(f"{path}:{number}: {' '.join(str(e).split())[:200]}")
                continue
            for side, (tokens, weights) in zip(SIDES, sides, strict=True):
                rows[side].append(tokens)
                rows[f"{side}_weights"].append(weights)
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"preference data: cannot read {path} ({e})") from None
    if not rows["chosen"]:
        raise UserError(f"preference data: no usable pair in {path} ({len(skipped)} records skipped)")
    return Pairs({k: np.stack(v) for k, v in rows.items()}, skipped, str(path))


def step_indices(count: int, per_step: int, seed: int, step: int) -> list[int]:
    """The data indices of ``step`` (1-based): a slice of an endless sequence of seeded permutations of
    ``range(count)``, one per epoch."""
    first = (step - 1) * per_step
    out = []
    for position in range(first, first + per_step):
        epoch, index = divmod(position, count)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(count)[index]))
    return out


def _share(rows: list[int], process_index: int, process_count: int) -> list[int]:
    n = len(rows) // process_count
    return rows[process_index * n : (process_index + 1) * n]


class PairBatches(grain.DatasetIterator):
    """This process's share of each micro-batch of ``batch_size`` pairs (all processes), drawn by
    :func:`step_indices`: a dict of the pair arrays (with the reference log-probs once
    :meth:`set_reference` gave them). Checkpointable: its state is the micro-batches taken.

    ``packing``: each micro-batch packed into rows of segments (:mod:`codex_jax.data.pair_packing`), the
    same number of rows every time (a multiple of ``row_multiple``)."""

    def __init__(
        self,
        arrays: dict,
        batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        *,
        packing: bool = False,
        row_multiple: int = 1,
    ):
        super().__init__()
        self.arrays, self.batch_size, self.seed = dict(arrays), batch_size, seed
        self.process_index, self.process_count = process_index, process_count
        self.position = 0
        self.packed_shape = None
        if packing:
            self.packed_shape = pair_packing.packed_shape(
                self.arrays, batch_size // process_count, row_multiple
            )

    def set_reference(self, reference: dict) -> None:
        """Adds ``{'ref_chosen', 'ref_rejected'}`` (one value per pair) to every batch from now on."""
        self.arrays |= reference

    def __next__(self) -> dict:
        self.position += 1
        rows = step_indices(len(self.arrays["chosen"]), self.batch_size, self.seed, self.position)
        rows = _share(rows, self.process_index, self.process_count)
        batch = {k: v[np.array(rows)] for k, v in self.arrays.items()}
        if self.packed_shape is None:
            return batch
        n_rows, slots = self.packed_shape
        return pair_packing.pack_pairs(batch, n_rows, slots, self.process_index * n_rows * slots)

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])


def pair_eval_batches(arrays: dict, batch_size: int, process_index: int = 0, process_count: int = 1) -> list:
    """Every held-out pair in batches of ``batch_size`` (the last filled by starting over from the first
    pair), this process's share of each."""
    n = len(arrays["chosen"])
    batches = []
    for start in range(0, n, batch_size):
        rows = _share([i % n for i in range(start, start + batch_size)], process_index, process_count)
        batches.append({k: v[np.array(rows)] for k, v in arrays.items()})
    return batches
