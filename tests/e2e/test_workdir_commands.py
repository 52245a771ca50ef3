"""A run addressed by its workdir (issue 26): a chat SFT trained from a directory outside the repository on a
local Hugging Face folder named by relative paths; then generate, eval, export (peft, hf), eval-code,
config print and lm-eval with --workdir alone, from that directory and from another; the PEFT adapter loads
in peft by the base path it records. Plus the mistakes: each one ``error:`` line and exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_python, xla_flags
from sft_helpers import SFT, chat_tokenizer_folder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ENV = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
TRAIN = [
    "--config=configs/sft.py:hf:base",  # a packaged config by name, a base relative to the cwd
    "--workdir=runs/sft",
    "--config.data.source=jsonl:chat.jsonl",
    "--config.data.seq_len=128",  # the chat-wrapped problem needs ~90 positions
    "--config.data.batch_size=4",
    "--config.lora.base_dtype=float32",
    "--config.train.steps=2",
    "--config.train.warmup_steps=1",
    "--config.train.eval_every=2",
    "--config.checkpoint.every_steps=2",
    "--config.eval.num_batches=1",
    "--config.generate.max_new_tokens=4",
    "--config.logging.progress=False",
]
PROBLEM = {
    "task_id": "t/0",
    "prompt": 'def add3(x):\n    """Return x + 3."""\n',
    "canonical_solution": "    return x + 3\n",
    "test": "def check(f):\n    assert f(1) == 4\n",
    "entry_point": "add3",
}


def cli(cwd: Path, *args: str, check: bool = True):
    """``codex-jax ARGS`` run in ``cwd``; checked for exit 0 unless ``check`` is False."""
    result = run_python(["-m", "codex_jax.cli", *args], env=ENV, cwd=cwd, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def one_error(result, *words: str) -> str:
    """The single ``error:`` line of a refused command (exit 2), which contains ``words``."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """``(project dir, another dir)``: the project holds base/ (a tiny Llama HF folder), chat.jsonl,
    problems.jsonl and runs/sft, trained from the project dir with relative paths."""
    root = tmp_path_factory.mktemp("workdir")
    project, other = root / "project", root / "elsewhere"
    other.mkdir()
    base = chat_tokenizer_folder(project / "base")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        eos_token_id=2,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(base, safe_serialization=True)
    (project / "chat.jsonl").write_text((SFT / "chat.jsonl").read_text())
    (project / "problems.jsonl").write_text(json.dumps(PROBLEM) + "\n")
    cli(project, "train", *TRAIN)
    return project, other


def test_the_run_stores_absolute_paths(project):
    proj, _ = project
    saved = json.loads((proj / "runs/sft/config.json").read_text())
    assert saved["model"]["init_from"] == f"hf:{proj / 'base'}"
    assert saved["data"]["source"] == f"jsonl:{proj / 'chat.jsonl'}"


def test_follow_up_commands_need_only_the_workdir_from_anywhere(project):
    """From the project dir every follow-up command needs only the workdir; from another directory (the
    workdir given relative to it) the same run answers the same (generate and export: the commands that
    read the checkpoint, the tokenizer and the recorded base)."""
    proj, other = project
    outputs = {}
    for cwd, run in ((proj, "runs/sft"), (other, os.path.relpath(proj / "runs/sft", other))):
        generated = cli(cwd, "generate", f"--workdir={run}", "--config.generate.temperature=0")
        assert generated.stdout.startswith("Write a function that adds 3 to x.\n"), generated.stdout
        assert "data: train" not in generated.stderr  # generate reads no data
        assert "changed on resume" not in generated.stderr
        adapter = cwd / "adapter"
        exported = cli(
            cwd, "export", f"--workdir={run}", "--config.export.format=peft", "--config.export.dir=adapter"
        )
        assert str(adapter) in exported.stdout
        outputs[cwd] = (generated.stdout, (adapter / "adapter_model.safetensors").read_bytes())
    assert outputs[proj] == outputs[other]  # the same run, whichever directory asks
    evaluated = json.loads(cli(proj, "eval", "--workdir=runs/sft").stdout.strip().splitlines()[-1])
    assert evaluated["step"] == 2
    code = cli(
        other,
        "eval-code",
        f"--workdir={os.path.relpath(proj / 'runs/sft', other)}",
        f"--config.codeeval.problems={proj / 'problems.jsonl'}",
        "--config.codeeval.max_new_tokens=8",
        "--config.codeeval.batch_size=1",
    )
    summary = json.loads(code.stdout.strip().splitlines()[-1])
    assert summary["prompt_format"] == "chat" and summary["num_problems"] == 1  # trained on chat
    printed = cli(other, "config", "print", f"--workdir={os.path.relpath(proj / 'runs/sft', other)}").stdout
    assert f"model.init_from = 'hf:{proj / 'base'}'" in printed


def test_hf_export_and_peft_adapter_load_from_their_recorded_paths(project):
    proj, other = project
    peft = pytest.importorskip("peft")
    cli(proj, "export", "--workdir=runs/sft", "--config.export.format=hf", "--config.export.dir=hf")
    assert (proj / "hf" / "config.json").is_file()
    adapter = other / "adapter"
    if not adapter.is_dir():
        cli(other, "export", f"--workdir={proj / 'runs/sft'}", "--config.export.format=peft",
            "--config.export.dir=adapter")  # fmt: skip
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(proj / "base")
    os.chdir(other)  # neither the base nor the adapter relative to here
    try:
        base = transformers.AutoModelForCausalLM.from_pretrained(recorded)
        model = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    finally:
        os.chdir(Path(__file__).parent)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 320)


def test_lm_eval_model_takes_the_workdir_alone(project, monkeypatch):
    proj, other = project
    pytest.importorskip("lm_eval")
    from codex_jax.codeeval.lm_eval_model import CodexJaxLM

    monkeypatch.chdir(other)
    lm = CodexJaxLM(workdir=os.path.relpath(proj / "runs/sft", other))
    context, continuation = lm.encode_pair("Write a function", " that adds 3")
    [(logprob, _)] = lm.score([(context, continuation)])
    assert logprob < 0


def test_read_only_commands_refuse_a_key_that_changes_the_model(project):
    proj, _ = project
    for key in ("lora.rank=4", "data.source=jsonl:x.jsonl", "model.init_from=hf:x", "train.steps=9"):
        one_error(cli(proj, "eval", "--workdir=runs/sft", f"--config.{key}", check=False), key.split("=")[0])
    one_error(cli(proj, "generate", "--workdir=nowhere", check=False), "--config is required")


def test_train_without_config_resumes_the_workdir(project):
    proj, _ = project
    resumed = cli(
        proj, "train", "--workdir=runs/sft", "--config.train.steps=3", "--config.logging.progress=False"
    )
    assert "from step 2 to 3" in resumed.stderr
    metrics = (proj / "runs/sft/metrics.ndjson").read_text()
    assert '"step": 3' in metrics


def test_config_mistakes_are_one_line(project):
    proj, _ = project
    one_error(
        cli(proj, "config", "validate", "--config=configs/sft.py", check=False), "needs its base", "hf:"
    )
    one_error(
        cli(proj, "config", "validate", "--config=configs/stf.py", check=False), "configs/sft.py?", "tiny"
    )
    one_error(cli(proj, "train", "--config=configs/stf.py", check=False), "did you mean")
    one_error(
        cli(proj, "config", "validate", "--config=configs/sft.py:hf:missing", check=False),
        "model.init_from",
        "missing does not exist",
    )
    one_error(
        cli(
            proj,
            "config",
            "validate",
            "--config=sft:hf:base",
            "--config.data.source=jsonl:no.jsonl",
            check=False,
        ),
        "data.source",
        "no.jsonl does not exist",
    )
    (proj / "notanhf").mkdir()
    one_error(cli(proj, "config", "validate", "--config=sft:hf:notanhf", check=False), "no config.json")
    # the packaged example data: nothing to add for a first run
    assert cli(proj, "config", "validate", "--config=configs/sft.py:hf:base").stdout.startswith("ok")


def test_a_run_failing_before_its_first_step_removes_only_a_workdir_it_created(project):
    proj, _ = project
    bad = ["--config=tiny.py", "--config.data.source=jsonl:absent.jsonl:text"]
    one_error(cli(proj, "train", "--workdir=runs/new", *bad, check=False), "absent.jsonl")
    assert not (proj / "runs/new").exists()
    (proj / "runs/mine").mkdir()
    one_error(cli(proj, "train", "--workdir=runs/mine", *bad, check=False), "absent.jsonl")
    assert (proj / "runs/mine").is_dir()


@pytest.mark.parametrize("command", ["train", "eval", "generate", "export", "eval-code"])
def test_each_command_help_lists_flags_and_sections(command, tmp_path):
    out = cli(tmp_path, command, "--help").stdout
    assert f"usage: codex-jax {command}" in out and "--workdir=" in out and "--config.KEY=VALUE" in out
    assert "config sections" in out and "\n  model       " in out
