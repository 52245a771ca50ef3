"""The notebooks in notebooks/, executed for real on CPU with a tiny setting (so they cannot rot).

As papermill does, the test inserts a cell after the one tagged ``parameters`` that overrides its values;
everything else runs as a user would run it. The fine-tuning notebook gets a tiny Llama exported to a
Hugging Face folder by codex_jax itself, so nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO, run_cli, xla_flags

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = REPO / "notebooks"
TINY = {  # the tiny config's size, for configs that start larger
    "model.num_layers": 1,  # a layer less to compile (a base from model.init_from keeps its own)
    "data.max_files": 40,
    "data.seq_len": 64,
    "data.batch_size": 8,
    "train.steps": 4,
    "train.eval_every": 4,
    "checkpoint.every_steps": 4,
    "eval.num_batches": 1,
    "generate.max_new_tokens": 8,
    "logging.progress": False,
}


def execute(name: str, tmp_path: Path, monkeypatch, **parameters) -> nbformat.NotebookNode:
    """Runs ``notebooks/name`` in a fresh kernel (cwd ``tmp_path``, 1 CPU device) with ``parameters``."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, injected)
    monkeypatch.setenv("XLA_FLAGS", xla_flags(1))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    finally:
        nbformat.write(nb, tmp_path / name)  # executed copy, outputs included, for a failure's post-mortem
    return nb


def output_text(nb) -> str:
    """Everything the notebook's cells printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_every_notebook_opens_with_a_colab_badge_and_detects_the_accelerator():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["evaluate.ipynb", "finetune_lora.ipynb", "quickstart.ipynb"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert "colab.research.google.com/github/" in nb.cells[0].source and name in nb.cells[0].source
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert any("jax.default_backend()" in s for s in code), name
        assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1, name
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name}: stored outputs"


@pytest.fixture(scope="module")
def trained_llama(tmp_path_factory):
    """A tiny Llama trained by configs/tiny.py, and the same model exported as a Hugging Face folder."""
    root = tmp_path_factory.mktemp("nb")
    run = root / "run"
    llama = ("--config.model.family=llama", "--config.model.num_layers=1")  # a layer less to compile
    run_cli(run, *llama, "--config.train.steps=6")
    hf_dir = root / "hf"
    export = ("--config.export.format=hf", f"--config.export.dir={hf_dir}")
    run_cli(run, *llama, *export, mode="export")
    return run, hf_dir


@pytest.mark.slow
def test_quickstart(tmp_path, monkeypatch):
    nb = execute("quickstart.ipynb", tmp_path, monkeypatch, CONFIG="configs/tiny.py", OVERRIDES=TINY)
    text = output_text(nb)
    final = json.loads((tmp_path / "runs/quickstart/metrics.ndjson").read_text().splitlines()[-1])
    assert final["step"] == 4
    assert "perplexity" in text and "def fibonacci(n):" in text and "class Stack:" in text
    figure = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert figure, "the loss plot is not displayed"
    assert sorted(p.name for p in (tmp_path / "runs/quickstart/checkpoints").iterdir()) == ["4"]


@pytest.mark.slow
def test_evaluate(trained_llama, tmp_path, monkeypatch):
    run, _ = trained_llama
    nb = execute(
        "evaluate.ipynb", tmp_path, monkeypatch, WORKDIR=str(run), PROMPTS=["def f(x):"], MAX_NEW_TOKENS=8
    )
    text = output_text(nb)
    assert "restored step 6" in text and "llama:" in text
    saved = json.loads((run / "eval_6.json").read_text())
    assert f"perplexity {saved['perplexity']:.2f}" in text and "bits_per_byte" in saved
    assert text.count("def f(x):") >= 2  # greedy and sampled


@pytest.mark.slow
def test_finetune_lora(trained_llama, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    _, hf_dir = trained_llama
    code = str(Path(sysconfig.get_paths()["stdlib"]) / "email" / "*.py")
    overrides = {**TINY, "train.warmup_steps": 1, "lora.base_dtype": "float32", "data.max_files": 0}
    nb = execute(
        "finetune_lora.ipynb",
        tmp_path,
        monkeypatch,
        BASE_MODEL=str(hf_dir),
        CODE_SOURCE=code,
        OVERRIDES=overrides,
    )
    text = output_text(nb)
    adapter = tmp_path / "runs/lora-notebook-peft"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    max_diff = float(re.search(r"max \|logit difference\|: (\S+)", text).group(1))
    assert max_diff < 1e-4, max_diff
    assert "async def main():" in text
