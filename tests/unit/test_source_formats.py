"""Parquet, ArrayRecord and datasets ``save_to_disk`` sources: records, bad records, training."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from codex_jax.config.schema import default_config
from codex_jax.corpus.globbing import stdlib_root
from codex_jax.corpus.sources import read_source
from codex_jax.data.pipeline import make_train_iterator, prepare_data
from codex_jax.errors import UserError


@pytest.fixture(scope="module")
def code():
    """40 small stdlib modules' texts."""
    small = [p for p in sorted(stdlib_root().glob("*.py")) if 1_000 < p.stat().st_size < 8_000]
    return [p.read_text() for p in small[:40]]


def _parquet(folder, code):
    folder.mkdir()
    rows = [{"text": t, "n": i} for i, t in enumerate(code)]
    rows[3]["text"], rows[5]["text"] = None, "   "  # a null and a blank value: two bad records
    pq.write_table(pa.Table.from_pylist(rows[:25]), folder / "a.parquet", row_group_size=10)
    pq.write_table(pa.Table.from_pylist(rows[25:]), folder / "b.parquet")
    return f"parquet:{folder}/*.parquet:text"


def _arrayrecord(folder, code):
    folder.mkdir()
    for name, part in (("a", code[:25]), ("b", code[25:])):
        writer = ArrayRecordWriter(str(folder / f"{name}.array_record"), "group_size:1")
        for i, text in enumerate(part):
            writer.write(b"\xff\xfe not utf-8" if name == "a" and i in (3, 5) else text.encode())
        writer.close()
    return f"arrayrecord:{folder}/*.array_record"


def _hf_disk(folder, code):
    texts = [None if i == 3 else " " if i == 5 else t for i, t in enumerate(code)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(folder), num_shards=2)
    return f"hf_disk:{folder}:text"


FORMATS = {"parquet": _parquet, "arrayrecord": _arrayrecord, "hf_disk": _hf_disk}


@pytest.mark.parametrize("kind", FORMATS)
def test_record_sources_read_rows_in_order_and_count_bad_ones(tmp_path, code, kind, capsys):
    source = FORMATS[kind](tmp_path / kind, code)
    corpus = read_source(source)
    assert [d.text for d in corpus.documents] == [t for i, t in enumerate(code) if i not in (3, 5)]
    assert len(corpus.files) == 2 and corpus.documents[0].key == f"{corpus.files[0].path}:1"
    # the two bad records are rows 4 and 6 of the first file (save_to_disk cuts 40 rows into 20 + 20)
    assert [f.records for f in corpus.files] == ([18, 20] if kind == "hf_disk" else [23, 15])
    first = corpus.files[0]
    assert first.skipped == 2 and first.bad[0].startswith(f"{first.path}:4: ")
    assert "skipped 2 bad record(s)" in capsys.readouterr().err
    with pytest.raises(UserError, match=r":4: "):
        read_source(source, on_bad_record="error")


def test_arrayrecord_json_records_and_missing_columns(tmp_path, code):
    writer = ArrayRecordWriter(str(tmp_path / "r.array_record"), "group_size:1")
    for i, text in enumerate(code[:5]):
        writer.write(b"{oops" if i == 1 else json.dumps({"title": f"t{i}", "body": text}).encode())
    writer.close()
    corpus = read_source(f"arrayrecord:{tmp_path}/r.array_record:{{title}}\\n{{body}}")
    assert [d.text for d in corpus.documents] == [f"t{i}\n{code[i]}" for i in (0, 2, 3, 4)]
    assert corpus.files[0].bad == ["r.array_record:2: invalid JSON (JSONDecodeError)"]
    source = _parquet(tmp_path / "pq", code)
    with pytest.raises(UserError, match=r"a.parquet: no column 'body' \(columns: \['text', 'n'\]\)"):
        read_source(source.replace(":text", ":body"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": code})}).save_to_disk(
        str(tmp_path / "dd")
    )
    with pytest.raises(UserError, match=r"is a DatasetDict with splits \['train'\]; name one split's folder"):
        read_source(f"hf_disk:{tmp_path}/dd:text")
    with pytest.raises(UserError, match="is not a datasets save_to_disk folder"):
        read_source(f"hf_disk:{tmp_path}/pq:text")


def _config(source):
    cfg = default_config()
    cfg.data.source = source
    cfg.data.seq_len, cfg.data.batch_size, cfg.data.eval_fraction = 32, 8, 0.2
    cfg.data.tokenizer_train_bytes = 200_000
    cfg.model.vocab_size = 400
    cfg.logging.progress = False
    return cfg


@pytest.mark.parametrize("kind", FORMATS)
def test_record_sources_give_training_batches(tmp_path, code, kind):
    cfg = _config(FORMATS[kind](tmp_path / kind, code))
    bundle = prepare_data(cfg, tmp_path / "work", write=True)
    assert bundle.manifest["totals"]["records"] == 38 and bundle.manifest["totals"]["skipped"] == 2
    assert bundle.manifest["files"][0]["bad"][0].startswith(f"{bundle.manifest['files'][0]['path']}:4: ")
    batch = next(make_train_iterator(bundle.train_windows, batch_size=8, seed=0))
    assert batch.shape == (8, 33) and len(bundle.eval_windows) > 0
