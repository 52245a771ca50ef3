"""Record files read through grain: Parquet, ArrayRecord and Hugging Face ``save_to_disk`` folders.

    'parquet:/d/*.parquet:text'         one document per row: a column, or a template of columns
    'arrayrecord:/d/*.array_record'     one per record: the record's bytes as UTF-8 text
    'arrayrecord:/d/*.array_record:text'  one per record: a field (template) of a JSON-object record
    'hf_disk:/d/saved:text'             one per row of a ``datasets.Dataset.save_to_disk`` folder

Rows are numbered from 1 in each file (the ``line`` of a bad record and of a document key
``path:row``). A missing column is a UserError naming the file; a row whose value is null, not a
string or blank is a bad record (skipped and counted, or an error under ``data.on_bad_record='error'``).
A ``save_to_disk`` folder's files are its Arrow files, in the order its ``state.json`` lists them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grain
import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath

from codex_jax.corpus.records import FileReport, Template, decode_text, render_record
from codex_jax.errors import UserError

RECORD_KINDS = ("parquet", "arrayrecord", "hf_disk")  # data.source prefixes read here
_HF_STATE = "state.json"
_HF_DICT = "dataset_dict.json"


def hf_disk_files(folder: str) -> tuple[Path, list[Path]]:
    """The folder and its Arrow files (``state.json``'s order) of a ``save_to_disk`` Dataset folder."""
    root = epath.Path(folder).expanduser()
    if (root / _HF_DICT).is_file():
        splits = json.loads((root / _HF_DICT).read_text()).get("splits", [])
        raise UserError(
            f"{root} is a DatasetDict with splits {splits}; name one split's folder, e.g. "
            f"'hf_disk:{root}/{splits[0] if splits else 'train'}:COLUMN'"
        )
    try:
        state = json.loads((root / _HF_STATE).read_text())
        names = [entry["filename"] for entry in state["_data_files"]]
    except FileNotFoundError:
        raise UserError(f"{root} is not a datasets save_to_disk folder (no {_HF_STATE})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{root / _HF_STATE}: unreadable ({type(e).__name__}: {e})") from None
    if not names:
        raise UserError(f"{root / _HF_STATE} lists no data files")
    return Path(str(root)), [Path(str(root / name)) for name in names]


def _check_columns(report: FileReport, names: list[str], template: Template) -> None:
    missing = [f for f in template.fields if f not in names]
    if missing:
        raise UserError(f"{report.location or report.path}: no column {missing[0]!r} (columns: {names})")


class _ArrowBatches(grain.sources.RandomAccessDataSource):
    """The record batches of one Arrow IPC stream file (what ``save_to_disk`` writes), memory-mapped."""

    def __init__(self, path: str):
        with pa.memory_map(path) as source:
            self.table = pa.ipc.open_stream(source).read_all()
        self.batches = self.table.to_batches(max_chunksize=1024)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> list[dict]:
        return self.batches[index].to_pylist()


def _rows(dataset) -> Iterator[tuple[int, dict]]:
    """``(row, value)`` numbered from 1 over a grain dataset of row lists."""
    row = 0
    for batch in dataset:
        for value in batch:
            row += 1
            yield row, value


def read_record_file(
    kind: str, path: Path, report: FileReport, template: Template | None
) -> Iterator[tuple[int, str]]:
    """``(row, text)`` of every good record of one Parquet, ArrayRecord or Arrow (``hf_disk``) file."""
    try:
        if kind == "arrayrecord":
            source = grain.sources.ArrayRecordDataSource([str(path)])
            for index in range(len(source)):
                data = source[index]
                if template is None:
                    text = decode_text(data, report, index + 1)
                else:
                    try:
                        record = json.loads(data.decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError) as e:
                        report.skip(index + 1, f"invalid JSON ({type(e).__name__})")
                        continue
                    text = render_record(template, record, report, index + 1)
                if text is not None:
                    yield index + 1, text
            return
        assert template is not None  # parse_source gives parquet and hf_disk specs a template
        records: Iterator[tuple[int, dict]]
        if kind == "parquet":
            meta = pq.ParquetFile(str(path))
            _check_columns(report, meta.schema_arrow.names, template)
            rows = grain.experimental.ParquetIterDataset(str(path)) if meta.num_row_groups else []
            records = enumerate((_plain(r) for r in rows), start=1)
        else:
            arrow = _ArrowBatches(str(path))
            _check_columns(report, arrow.table.schema.names, template)
            records = _rows(grain.MapDataset.source(arrow))
        for row, record in records:
            text = render_record(template, record, report, row)
            if text is not None:
                yield row, text
    except (OSError, pa.ArrowException, RuntimeError, ValueError) as e:
        raise UserError(f"cannot read {kind} file {report.location or path}: {e}") from None


def _plain(row: dict) -> dict:
    """A Parquet row with numpy scalars as Python values (so templates treat numbers alike)."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in row.items()}
