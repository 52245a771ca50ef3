"""Weighted data mixtures (data.mixture): realised proportions, exact resume, manifest, per-source eval."""

import json
import shutil

import numpy as np
import pytest

from codex_jax import api
from codex_jax.config.schema import default_config
from codex_jax.config.validation import validate
from codex_jax.corpus.globbing import stdlib_root
from codex_jax.data import mixture
from codex_jax.data.pipeline import eval_batches, make_train_iterator, mixture_scalars, prepare_data
from codex_jax.errors import UserError

SEQ = 9  # window length (seq_len + 1)


def synthetic(weights=(0.8, 0.2), sizes=(37, 11)) -> mixture.TrainMixture:
    """Two sources whose rows say where they come from: source j's row r is ``[j, r, r, ...]``."""
    parts = tuple(
        np.stack([np.asarray([j] + [r] * (SEQ - 1), np.uint16) for r in range(n)])
        for j, n in enumerate(sizes)
    )
    return mixture.TrainMixture(("a", "b"), mixture.proportions(weights), parts)


def source_counts(batches) -> np.ndarray:
    return np.bincount(np.concatenate([b[:, 0] for b in batches]), minlength=2)


def test_two_sources_at_08_02_realise_those_proportions_over_1000_sequences():
    mix = synthetic()
    it = make_train_iterator(mix, batch_size=8, seed=3)
    batches = [next(it) for _ in range(125)]  # 1,000 sequences
    a, b = source_counts(batches) / 1000
    assert abs(a - 0.8) <= 0.01 and abs(b - 0.2) <= 0.01
    assert (a, b) == (0.8, 0.2)  # grain's selection is exact at every multiple of 5 sequences
    assert mixture_scalars(it) == {"train/mix/a": 0.8, "train/mix/b": 0.2}
    # every prefix holds what mixture.counts says (the manifest's and metrics' numbers)
    for k in (1, 7, 33, 125):
        assert list(source_counts(batches[:k])) == mixture.counts(8 * k, mix.props)
    # rows of a source come from its own shuffled, endless order: every row of b seen, none twice per epoch
    b_rows = np.concatenate([x[x[:, 0] == 1, 1] for x in batches])
    assert sorted(b_rows[:11]) == list(range(11))
    # uneven weights, three sources: within a sequence or two of the proportion at any length
    props = mixture.proportions([0.5, 0.3, 0.2])
    assert props == (250, 150, 100)
    for n in (1, 10, 999, 1000, 12345):
        got = mixture.counts(n, props)
        assert sum(got) == n and all(abs(c - n * p / 500) < 2 for c, p in zip(got, props, strict=True))


def test_resume_from_the_iterator_state_is_bit_exact_and_processes_split_each_batch():
    mix = synthetic((0.7, 0.3))
    whole = make_train_iterator(mix, batch_size=4, seed=0, prefetch=2)
    expected = [next(whole) for _ in range(40)]
    first = make_train_iterator(mix, batch_size=4, seed=0)
    for _ in range(17):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # what the checkpoint's data item holds
    resumed = make_train_iterator(mix, batch_size=4, seed=0, prefetch=2)
    resumed.set_state(state)
    for want in expected[17:]:
        np.testing.assert_array_equal(next(resumed), want)
    assert mixture_scalars(resumed) == mixture_scalars(whole)
    # two processes: their halves of each global batch, concatenated, are the single process's batch
    halves = [
        make_train_iterator(mix, batch_size=2, seed=0, process_index=p, process_count=2) for p in (0, 1)
    ]
    for want in expected[:5]:
        np.testing.assert_array_equal(np.concatenate([next(h) for h in halves]), want)
    # another seed, another order; the same seed, the same
    other = make_train_iterator(mix, batch_size=4, seed=1)
    assert any(not np.array_equal(next(other), want) for want in expected[:5])


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two real sources: a folder of small stdlib modules and a JSONL file of their docstring-free text."""
    root = tmp_path_factory.mktemp("mix")
    small = [p for p in sorted(stdlib_root().glob("*.py")) if 2_000 < p.stat().st_size < 12_000][:16]
    (root / "code").mkdir()
    for path in small[:10]:
        shutil.copy(path, root / "code" / path.name)
    with open(root / "docs.jsonl", "w") as f:
        for path in small[10:]:
            for i, chunk in enumerate(c for c in path.read_text().split("\n\n") if c.strip()):
                f.write(json.dumps({"text": chunk, "id": f"{path.name}:{i}"}) + "\n")
    return root


def mixture_config(root, **weights):
    cfg = default_config()
    spec = {
        "code": {"source": f"{root}/code/*.py", "weight": weights.get("code", 0.8), "eval_fraction": 0.3},
        "docs": {"source": f"jsonl:{root}/docs.jsonl:text", "weight": weights.get("docs", 0.2)},
    }
    cfg.data.mixture = json.dumps(spec)
    cfg.data.seq_len = 32
    cfg.data.batch_size = 4
    cfg.data.eval_fraction = 0.2
    cfg.data.tokenizer_train_bytes = 200_000
    cfg.model.vocab_size = 400
    cfg.train.steps = 250  # 1,000 sequences
    return cfg


def test_prepare_data_caches_each_source_and_the_manifest_shows_the_proportions(corpora, tmp_path):
    cfg = mixture_config(corpora)
    validate(cfg)
    bundle = prepare_data(cfg, tmp_path, write=True)
    manifest = json.loads((tmp_path / "data_manifest.json").read_text())
    assert manifest["mixture"]["sequences"] == 1000
    sources = manifest["mixture"]["sources"]
    assert list(sources) == ["code", "docs"]
    for name, weight in (("code", 0.8), ("docs", 0.2)):
        s = sources[name]
        assert s["weight"] == s["proportion"] == s["realised"] == weight
        assert s["windows"]["train"] == len(bundle.train_windows.parts[list(sources).index(name)])
        assert (tmp_path / "cache" / name / "key.json").is_file()  # a token cache per source
    assert sources["code"]["eval_fraction"] == 0.3 and sources["docs"]["eval_fraction"] == 0.2
    assert {f["from"] for f in manifest["files"]} == {"code:source", "docs:source"}
    assert manifest["totals"]["files"] == 11
    assert manifest["windows"]["train"] == len(bundle.train_windows)
    # per-source eval batches, one source after the other
    evals = eval_batches(bundle.eval_windows, 4, 2)
    assert evals.sources == {"code": (0, 2), "docs": (2, 4)} and len(evals) == 4
    # a second run reuses every cache and the same windows
    again = prepare_data(cfg, tmp_path, write=True)
    for before, after in zip(bundle.train_windows.parts, again.train_windows.parts, strict=True):
        np.testing.assert_array_equal(before, after)
    # other weights: the same caches and checksum, other proportions
    cfg7 = mixture_config(corpora, code=0.7, docs=0.3)
    other = prepare_data(cfg7, tmp_path, write=False).manifest
    assert other["checksum"] == manifest["checksum"]
    assert abs(other["mixture"]["sources"]["code"]["realised"] - 0.7) < 0.01


@pytest.mark.parametrize(
    "value,needle",
    [
        ('{"py": {"source": "stdlib", "weight": 0}}', "'data.mixture.py.weight': must be > 0"),
        ('{"py": {"source": "stdlib"}}', "'data.mixture.py.weight': must be > 0"),
        ('{"py": {"weight": 1}}', "'data.mixture.py.source': required"),
        ('{"py": {"source": "stdlib", "weight": 1, "fromat": "text"}}', "'data.mixture.py.fromat': unknown"),
        (
            '{"py": {"source": "stdlib", "weight": 1, "format": "xml"}}',
            "'data.mixture.py.format': must be one",
        ),
        ('{"py": {"source": "stdlib", "weight": 1, "eval_fraction": 1}}', "'data.mixture.py.eval_fraction'"),
        ('{"a b": {"source": "stdlib", "weight": 1}}', "'data.mixture.a b': a source name"),
        ("py=0.8", "'data.mixture': not JSON"),
        ("[]", "'data.mixture': must be a JSON object"),
    ],
)
def test_invalid_mixtures_name_the_key(value, needle):
    cfg = default_config()
    cfg.data.mixture = value
    with pytest.raises(UserError, match=needle):
        validate(cfg)


def test_a_source_without_data_is_named(corpora, tmp_path):
    cfg = mixture_config(corpora)
    spec = json.loads(cfg.data.mixture)
    spec["docs"]["source"] = f"{corpora}/nothing/*.py"
    cfg.data.mixture = json.dumps(spec)
    with pytest.raises(UserError, match=r"^data\.mixture\.docs: "):
        prepare_data(cfg, tmp_path, write=True)


def test_a_mixture_trains_and_reports_per_source_eval_losses(corpora, tmp_path):
    cfg = api.load_config("configs/tiny.py", {"data.mixture": mixture_config(corpora).data.mixture})
    cfg.data.seq_len, cfg.model.vocab_size, cfg.data.tokenizer_train_bytes = 32, 400, 200_000
    cfg.train.steps, cfg.train.eval_every, cfg.train.log_every, cfg.eval.num_batches = 3, 3, 3, 1
    cfg.checkpoint.every_steps, cfg.logging.writers = 3, "ndjson"
    final = api.train(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.ndjson").read_text().splitlines()]
    evals = [r for r in records if r.get("split") == "eval"]
    assert {"loss", "code/loss", "docs/loss", "code/perplexity", "docs/token_accuracy"} <= set(evals[-1])
    assert evals[-1]["loss"] == final["loss"]
    low, high = sorted((evals[-1]["code/loss"], evals[-1]["docs/loss"]))
    assert low <= final["loss"] <= high  # the overall loss lies between the sources'
    train = [r for r in records if r.get("split") == "train" and "loss" in r]
    assert [train[-1]["mix/code"], train[-1]["mix/docs"]] == pytest.approx([20 / 24, 4 / 24])  # of 3 x 8
    # the checkpoint's iterator state continues the mixture where the run stopped, exactly
    state = json.loads((tmp_path / "checkpoints/3/data/process_0-of-1.json").read_text())
    assert state == {"next_index": 3}
    train = prepare_data(cfg, tmp_path, write=False).train_windows
    resumed, whole = (make_train_iterator(train, 8, cfg.seed) for _ in range(2))
    resumed.set_state(state)
    batches = [next(whole) for _ in range(4)]
    np.testing.assert_array_equal(next(resumed), batches[3])


def test_text_and_prompt_completion_sources_mix_as_masked_rows(corpora, tmp_path):
    with open(tmp_path / "pc.jsonl", "w") as f:
        for i in range(200):
            f.write(
                json.dumps({"prompt": f"def add_{i}(a, b):", "completion": f"\n    return a + b + {i}\n"})
                + "\n"
            )
    cfg = mixture_config(corpora)
    spec = json.loads(cfg.data.mixture)
    spec["docs"] = {"source": f"jsonl:{tmp_path}/pc.jsonl", "weight": 1, "format": "prompt_completion"}
    cfg.data.mixture = json.dumps(spec)
    bundle = prepare_data(cfg, tmp_path / "work", write=True)
    code, pc = bundle.train_windows.parts
    assert (
        code["mask"].all() and 0 < pc["mask"].mean() < 1
    )  # text trains on every token, examples on completions
    whole = make_train_iterator(bundle.train_windows, 4, 0, accum_steps=2)
    halves = [make_train_iterator(bundle.train_windows, 2, 0, p, 2, accum_steps=2) for p in (0, 1)]
    for _ in range(3):
        batch, parts = next(whole), [next(h) for h in halves]
        for key in batch:  # tokens, mask and each step's loss scale agree across processes
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key])
    assert bundle.manifest["mixture"]["sources"]["docs"]["examples"]["format"] == "prompt_completion"
