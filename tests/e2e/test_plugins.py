"""Plugins from a real installed distribution: a ``.dist-info`` with entry points on sys.path,
one good module and one that raises on import; the built-ins keep working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, run_cli

GOOD = '''
import json
import os

from clu import metrics

from codex_jax.metrics.registry import TokenMetric
from codex_jax.tokenizers.base import Tokenizer

PRESET = dict(family="gpt2", num_layers=1, num_heads=2, num_kv_heads=2, d_model=32, d_ff=64,
              vocab_size=300, max_seq_len=64)
METRIC = TokenMetric(metrics.Average.from_output("targets"), description="mean target id")


def read_lines(path):
    """One document per paragraph of a text file."""
    with open(path) as f:
        for i, block in enumerate(f.read().split("\\n\\n")):
            if block.strip():
                yield f"{path}#{i}", block + "\\n"


class Bytes(Tokenizer):
    vocab_size, pad_id, unk_id, bos_id, eos_id, checksum = 257, -1, -1, -1, 256, "bytes-v1"

    def _encode_many(self, texts, num_threads):
        return [list(t.encode()) for t in texts]

    def _decode(self, ids, skip_special_tokens):
        return bytes(i for i in ids if i < 256).decode("utf-8", "replace")

    def id_to_piece(self, token_id):
        return "</s>" if token_id == 256 else chr(token_id)


def load_bytes(arg):
    return Bytes()


class RecordHook:
    """A training hook: appends [event, step, metric names] to the file $HOOK_LOG."""

    def _write(self, event, step, metrics):
        with open(os.environ["HOOK_LOG"], "a") as f:
            f.write(json.dumps([event, step, sorted(metrics)]) + "\\n")

    def on_step_end(self, step, metrics):
        self._write("step", step, metrics)

    def on_eval_end(self, step, metrics):
        self._write("eval", step, metrics)

    def on_checkpoint_save(self, step, metrics):
        self._write("save", step, metrics)
'''

BAD = """
raise ImportError("this plugin needs a package that is not installed")
"""

ENTRY_POINTS = """
[codex_jax.models]
tiny-plug = goodplug:PRESET
gpt2-small = goodplug:PRESET
broken-model = badplug:PRESET

[codex_jax.metrics]
mean_target = goodplug:METRIC
broken_metric = badplug:METRIC
not_a_metric = goodplug:PRESET

[codex_jax.data_sources]
paragraphs = goodplug:read_lines
broken_source = badplug:read

[codex_jax.tokenizers]
bytes = goodplug:load_bytes
broken_tok = badplug:load

[codex_jax.hooks]
record = goodplug:RecordHook
broken_hook = badplug:HOOK
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder holding an installed distribution 'codex-plugs' with two modules."""
    root = tmp_path_factory.mktemp("site")
    (root / "goodplug.py").write_text(GOOD)
    (root / "badplug.py").write_text(BAD)
    info = root / "codex_plugs-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: codex-plugs\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(f"def f{i}(x):\n    return x + {i}\n" * 20 for i in range(40)))
    return root


def run_py(site, *args, check=True):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]),
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    if check and result.returncode:
        raise AssertionError(result.stderr[-3000:])
    return result


def test_plugins_command_lists_loaded_and_failed(site):
    report = json.loads(run_py(site, "-m", "codex_jax.cli", "plugins", "--json").stdout)
    models, metrics = report["codex_jax.models"], report["codex_jax.metrics"]
    assert list(models["loaded"]) == ["tiny-plug"]
    assert "codex-plugs 0.1" in models["loaded"]["tiny-plug"]
    assert "ImportError: this plugin needs a package" in models["failed"]["broken-model"]
    assert "built-in" in models["failed"]["gpt2-small"]
    assert list(metrics["loaded"]) == ["mean_target"]
    assert set(metrics["failed"]) == {"broken_metric", "not_a_metric"}
    assert "TokenMetric or SampleMetric" in metrics["failed"]["not_a_metric"]
    assert list(report["codex_jax.data_sources"]["loaded"]) == ["paragraphs"]
    assert list(report["codex_jax.tokenizers"]["loaded"]) == ["bytes"]
    assert list(report["codex_jax.hooks"]["loaded"]) == ["record"]
    assert list(report["codex_jax.hooks"]["failed"]) == ["broken_hook"]
    text = run_py(site, "-m", "codex_jax.cli", "plugins")
    assert "FAILED  broken_tok" in text.stdout and "ok      mean_target" in text.stdout
    assert "4 plugin(s) failed" not in text.stderr and "plugin(s) failed to load" in text.stderr


def test_plugins_work_and_builtins_survive_broken_ones(site):
    script = textwrap.dedent("""
        import json, jax, numpy as np
        from codex_jax.tokenizers import load_plugin_tokenizer
        from codex_jax.corpus.sources import read_source
        from codex_jax.evaluate import EvalContext, evaluate_metrics
        from codex_jax.errors import UserError
        from codex_jax.models import registry as models
        from codex_jax.models.transformer import Transformer, init_params
        cfg = models.config("tiny-plug")
        model, params = Transformer(cfg), init_params(cfg, jax.random.key(0))
        windows = np.arange(10 * 65).reshape(10, 65) % 200
        tok = load_plugin_tokenizer("bytes:")
        ctx = EvalContext(model, params, tok, windows, [windows[:4]], 4, 1)
        out = evaluate_metrics("mean_target", ctx)
        try:
            evaluate_metrics("broken_metric", ctx)
        except UserError as e:
            error = str(e)
        corpus = read_source("paragraphs:" + CORPUS)
        print(json.dumps({"mean": out["mean_target"], "expected": float(windows[:4, 1:].mean()),
                          "loss": out["loss"], "error": error, "docs": len(corpus.documents),
                          "gpt2": models.get("gpt2-small")["num_layers"],
                          "tok": tok.decode(tok.encode("héllo"))}))
    """).replace("CORPUS", repr(str(site / "corpus.txt")))
    got = json.loads(run_py(site, "-c", script).stdout.strip().splitlines()[-1])
    assert got["mean"] == pytest.approx(got["expected"]) and got["loss"] > 0
    assert "broken_metric" in got["error"] and "failed to load" in got["error"]
    assert got["docs"] == 40 and got["gpt2"] == 12 and got["tok"] == "héllo"


def test_training_on_a_plugin_source_and_tokenizer_with_a_plugin_hook(site, tmp_path):
    hook_log = tmp_path / "hook.log"
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "HOOK_LOG": str(hook_log)}
    run_cli(
        tmp_path / "run",
        f"--config.data.source=paragraphs:{site / 'corpus.txt'}",
        "--config.data.tokenizer=bytes:",
        "--config.train.steps=2",
        "--config.train.eval_every=2",
        "--config.checkpoint.every_steps=2",
        "--config.generate.max_new_tokens=0",
        "--config.eval.num_batches=1",
        "--config.logging.writers=ndjson",
        "--config.train.hooks=record",
        env_extra=env,
    )
    events = [json.loads(line) for line in hook_log.read_text().splitlines()]
    assert [(event, step) for event, step, _ in events] == [
        ("eval", 0),
        ("step", 1),
        ("step", 2),
        ("save", 2),
        ("eval", 2),
    ]
    assert events[1][2] == ["train/compile_seconds"] and "train/loss" in events[2][2]
    assert events[-1][2] == ["eval/loss", "eval/perplexity", "eval/token_accuracy"]
    manifest = json.loads((tmp_path / "run" / "data_manifest.json").read_text())
    assert manifest["root"] == "plugin:paragraphs" and manifest["totals"]["records"] == 40
    assert manifest["tokenizer"]["sha256"] == "bytes-v1" and "safety" not in manifest
