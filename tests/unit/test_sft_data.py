"""SFT data (issue 14): example records and bad records, chat templates and loss masks, packing, iterators."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sft_helpers import CHATML, CHATML_GENERATION, SFT, chat_tokenizer_folder

from codex_jax.compute.batch import MASK, SEGMENTS, STEP_SCALE, TOKENS, segment_positions, target_weights
from codex_jax.config.schema import default_config
from codex_jax.corpus.examples import ExampleFields
from codex_jax.corpus.sources import read_source
from codex_jax.data.iterators import eval_batches, make_train_iterator
from codex_jax.data.packing import START, TRAINED, pack_examples, row_target_counts, text_flags
from codex_jax.data.pipeline import prepare_data
from codex_jax.errors import UserError
from codex_jax.tokenizers import load_tokenizer
from codex_jax.tokenizers.chat import chat_prompt, encode_builtin, encode_example

PC = ExampleFields("prompt_completion")
CHAT = ExampleFields("chat")


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory):
    return load_tokenizer(chat_tokenizer_folder(tmp_path_factory.mktemp("tok")))


# --- records -----------------------------------------------------------------------------------


def test_prompt_completion_from_jsonl_and_csv_are_the_same_examples():
    jsonl = read_source(f"jsonl:{SFT}/prompt_completion.jsonl", fields=PC).documents
    csv = read_source(f"csv:{SFT}/prompt_completion.csv", fields=PC).documents
    assert len(jsonl) == 48 and len(csv) == 12
    assert [d.turns for d in csv] == [d.turns for d in jsonl[:12]]
    assert jsonl[0].turns[0][0] == "prompt" and jsonl[0].key.endswith("prompt_completion.jsonl:1")


@pytest.mark.parametrize(
    "name, fields, reasons",
    [
        (
            "bad_chat.jsonl",
            CHAT,
            ["no assistant turn", "unknown role 'robot'", "content is not a string", "no field 'messages'"],
        ),
        (
            "bad_prompt_completion.jsonl",
            PC,
            ["no field 'completion'", "empty completion", "field 'prompt' is not a string"],
        ),
    ],
)
def test_bad_records_are_skipped_and_counted_or_one_error(name, fields, reasons):
    corpus = read_source(f"jsonl:{SFT}/{name}", fields=fields)
    report = corpus.files[0]
    assert len(corpus.documents) == 1 and report.records == 1
    assert report.skipped == len(report.bad) >= len(reasons)
    for line, reason in enumerate(reasons, start=2):
        assert report.bad[line - 2] == f"{name}:{line}: " + report.bad[line - 2].split(": ", 1)[1]
        assert reason in report.bad[line - 2]
    with pytest.raises(UserError, match=rf"{name}:2: "):
        read_source(f"jsonl:{SFT}/{name}", on_bad_record="error", fields=fields)


# --- encoding and masks --------------------------------------------------------------------------


def test_prompt_completion_mask_covers_the_completion_and_eos(hf_tok):
    ids, mask = encode_example(hf_tok, (("prompt", "# add 1\n"), ("completion", "def f(x):")))
    head = hf_tok.encode("# add 1\n")
    assert ids == head + hf_tok.encode("def f(x):") + [hf_tok.eos_id]
    assert mask == [0] * len(head) + [1] * (len(ids) - len(head))
    assert encode_example(hf_tok, (("prompt", "a"), ("completion", "b")), train_on="all")[1] == [1] * 3


def test_chat_mask_equals_transformers_assistant_tokens_mask(hf_tok, tmp_path):
    """Ours (from a template without generation markers) equals apply_chat_template's mask (with them)."""
    plain = load_tokenizer(chat_tokenizer_folder(tmp_path / "plain", CHATML))
    for doc in read_source(f"jsonl:{SFT}/chat.jsonl", fields=CHAT).documents[:8]:
        messages = [{"role": r, "content": c} for r, c in doc.turns]
        out = hf_tok.hf.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        for tok in (hf_tok, plain):
            ids, mask = encode_example(tok, doc.turns)
            assert ids == list(out["input_ids"]) and mask == list(out["assistant_masks"])
        assert plain.decode([i for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=False) == (
            doc.turns[-1][1] + "<|im_end|>"
        )
    prompt = chat_prompt(hf_tok, "hi")
    assert hf_tok.decode(prompt, skip_special_tokens=False).endswith("<|im_start|>assistant\n")
    assert CHATML_GENERATION != CHATML


def test_builtin_template_for_tokenizers_without_one(hf_tok):
    turns = (("system", "s"), ("user", "u"), ("assistant", "a"))
    ids, mask = encode_builtin(hf_tok, turns)
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert trained == hf_tok.encode("a") + [hf_tok.eos_id]
    assert hf_tok.decode(ids, skip_special_tokens=False).startswith(
        "<|system|>\ns\n<|user|>\nu\n<|assistant|>\n"
    )


# --- packing ---------------------------------------------------------------------------------------


def _stream(lengths):
    tokens = np.concatenate([np.arange(1, n + 1) + 10 * k for k, n in enumerate(lengths)]).astype(np.uint16)
    flags = np.full(len(tokens), TRAINED, np.uint8)
    flags[np.cumsum([0, *lengths[:-1]])] |= START
    return tokens, flags


def test_segments_pack_whole_examples_and_count_overlong():
    tokens, flags = _stream([3, 4, 2, 9, 5])
    rows, stats = pack_examples(tokens, flags, 8, "segments", "truncate")
    assert rows[SEGMENTS].tolist() == [  # first fit: the 5-token example fills the second row
        [1, 1, 1, 2, 2, 2, 2, 0],
        [1, 1, 2, 2, 2, 2, 2, 0],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ]
    assert stats["truncated"] == 1 and stats["dropped"] == 0 and stats["rows"] == 3
    assert rows[TOKENS][0, :7].tolist() == [1, 2, 3, 11, 12, 13, 14]
    dropped, stats = pack_examples(tokens, flags, 8, "segments", "drop")
    assert stats["dropped"] == 1 and len(dropped[TOKENS]) == 2
    padded, stats = pack_examples(tokens, flags, 8, "pad")
    assert len(padded[TOKENS]) == 5 and SEGMENTS not in padded and stats["padding_fraction"] > 0.3
    # targets never cross a segment: row 0 has (3 - 1) + (4 - 1) trained targets
    assert row_target_counts(rows).tolist() == [5, 5, 7]
    positions = np.asarray(segment_positions(rows[SEGMENTS].astype(np.int32)))
    assert positions[0].tolist() == [0, 1, 2, 0, 1, 2, 3, 0]


def test_text_flags_mark_documents_after_each_eos():
    flags = text_flags(np.asarray([5, 6, 2, 7, 2, 8, 9, 2]), eos_id=2)
    assert (np.flatnonzero(flags & START)).tolist() == [0, 3, 5] and (flags & TRAINED).all()
    pieces = text_flags(np.asarray([5, 6, 7, 8, 9, 2, 7, 2]), eos_id=2, piece_len=2)
    assert (np.flatnonzero(pieces & START)).tolist() == [0, 2, 4, 6]  # long documents in whole rows


# --- pipeline and iterators ------------------------------------------------------------------------


def sft_config(tok_folder, **data):
    cfg = default_config()
    cfg.data.update(
        source=f"jsonl:{SFT}/chat.jsonl", format="chat", tokenizer=str(tok_folder), seq_len=48, batch_size=4
    )
    cfg.data.eval_fraction = 0.2
    cfg.data.update(data)
    return cfg


def test_prepare_data_packs_masked_rows_and_records_the_statistics(hf_tok, tmp_path, capsys):
    cfg = sft_config(hf_tok.folder, packing="segments")
    bundle = prepare_data(cfg, tmp_path, write=True)
    rows = bundle.train_windows
    assert set(rows) == {TOKENS, MASK, SEGMENTS} and rows[TOKENS].shape[1] == 49
    manifest = json.loads((tmp_path / "data_manifest.json").read_text())
    packing = manifest["packing"]["train"]
    assert packing["examples"] + manifest["packing"]["eval"]["examples"] == 48
    assert 0 < packing["trained_fraction"] < 1 and packing["padding_fraction"] < 0.5
    assert manifest["examples"]["format"] == "chat" and manifest["format"] == "chat"
    again = prepare_data(cfg, tmp_path, write=True)
    assert "reusing token cache" in capsys.readouterr().err
    np.testing.assert_array_equal(again.train_windows[MASK], rows[MASK])
    cfg.data.train_on = "all"  # a new mask: the cache is rebuilt
    assert prepare_data(cfg, tmp_path, write=True).train_windows[MASK].sum() > rows[MASK].sum()
    assert "building the token cache" in capsys.readouterr().err


def test_masked_iterator_scales_by_the_whole_optimizer_step_and_resumes(hf_tok, tmp_path):
    bundle = prepare_data(sft_config(hf_tok.folder, packing="segments", seq_len=32), tmp_path, write=True)
    rows = bundle.train_windows
    it = make_train_iterator(rows, batch_size=2, seed=0, accum_steps=3)
    batches = [next(it) for _ in range(6)]
    for group in (batches[:3], batches[3:]):
        trained = sum(float(target_weights(b).sum()) for b in group)
        for b in group:
            assert set(b) == {TOKENS, MASK, SEGMENTS, STEP_SCALE} and b[TOKENS].dtype == np.int32
            np.testing.assert_allclose(b[STEP_SCALE], 3 / trained, rtol=1e-6)
    state = it.get_state()
    fresh = make_train_iterator(rows, batch_size=2, seed=0, accum_steps=3)
    fresh.set_state(state)
    nxt = next(it)
    for k, v in next(fresh).items():
        np.testing.assert_array_equal(v, nxt[k])
    evals = eval_batches(bundle.eval_windows, 2, 1)
    assert set(evals[0]) == {TOKENS, MASK, SEGMENTS}


def test_a_template_that_fails_to_render_is_a_bad_record(tmp_path):
    template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turns') }}{% endif %}"
    folder = chat_tokenizer_folder(tmp_path / "tok", template + CHATML)
    bundle = prepare_data(sft_config(folder, packing="pad"), tmp_path / "run", write=True)
    failures = bundle.manifest["examples"]["template_failures"]
    assert failures[-1] == "... 12 in all" and "no system turns" in failures[0]
    assert re.match(r"chat\.jsonl:\d+: the chat template failed: TemplateError", failures[0])
    with pytest.raises(UserError, match=r"chat.jsonl:\d+: the chat template failed"):
        prepare_data(sft_config(folder, on_bad_record="error"), tmp_path / "other", write=True)


def test_a_tokenizer_trained_for_chat_has_the_builtin_markers_as_pieces(tmp_path):
    cfg = sft_config("", packing="segments")
    cfg.model.vocab_size = 340
    bundle = prepare_data(cfg, tmp_path, write=True)
    tok = bundle.tokenizer
    for marker in ("<|system|>", "<|user|>", "<|assistant|>"):
        assert len(tok.encode(marker)) == 1 and tok.decode(tok.encode(marker)) == marker
    rows = bundle.train_windows
    first = tok.decode(rows[TOKENS][0][rows[SEGMENTS][0] == 1].tolist(), skip_special_tokens=False)
    assert first.startswith(("<|user|>\nWrite a function", "<|system|>\nYou write")), first
