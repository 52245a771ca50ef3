"""tools/peers/ on CPU (2 steps of a tiny shape, one JSON line each) and tools/gpu_check.sh's hygiene."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = "--layers 2 --d-model 64 --heads 4 --seq 32 --batch 2 --vocab 256 --steps 2 --warmup 0 --device cpu"
FIELDS = ("tokens_per_second", "step_ms", "model_tflops_per_second", "peak_memory_gb", "compile_s")


def _check(line: dict, name: str) -> None:
    assert line["name"] == name
    for key in FIELDS:
        assert isinstance(line[key], float) and line[key] > 0, key
    assert line["mfu"] is None  # no known peak on CPU
    assert line["memory_kind"] == "process_peak_rss" and line["dtype"] == "float32"
    assert (line["num_layers"], line["d_model"], line["seq_len"], line["batch_size"]) == (2, 64, 32, 2)
    assert line["tokens_per_step"] == 64 and line["num_params"] > 0


@pytest.mark.parametrize(
    "module, extra, name",
    [
        ("hf_gpt2", "", "hf_gpt2"),
        ("flax_gpt2", "", "flax_gpt2"),
        ("hf_llama", "--kv-heads 2 --ffn 128", "hf_llama_full"),
        ("hf_llama", "--kv-heads 2 --ffn 128 --lora-rank 16", "hf_llama_lora_r16"),
    ],
)
def test_peer_in_process(module, extra, name, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    peer = __import__(f"tools.peers.{module}", fromlist=["main"])
    returned = peer.main(f"{TINY} {extra} --peak-tflops 1".split())
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line == returned
    _check({**line, "mfu": None}, name)
    assert line["mfu"] == pytest.approx(line["model_tflops_per_second"], abs=1e-3)  # peak 1 TFLOP/s
    if name == "hf_llama_lora_r16":
        assert 0 < line["trainable_params"] < line["num_params"]
    if name == "hf_gpt2":  # the same GPT-2 as nanogpt: N without the position table, tied head once
        assert line["num_params"] == 256 * 64 + 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64


def test_nanogpt_command_prints_one_json_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "tools.peers.nanogpt", *TINY.split(), "--label", "t"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    line = json.loads(lines[0])
    _check(line, "nanogpt")
    assert line["label"] == "t" and line["torch_compile"] is False  # compile is on only on CUDA by default
    assert line["num_params"] == 256 * 64 + 2 * (12 * 64 * 64 + 13 * 64) + 2 * 64


def test_gpu_check_script_parses():
    proc = subprocess.run(["bash", "-n", "tools/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_tools_name_no_machine_paths():
    # An absolute path is a "/" that starts a word (not "tokens/s", "a / b", "$OUT/x"); shebangs aside.
    # The kernel's own files (/proc, /dev) are the same on every Linux machine.
    absolute = re.compile(r"(?<![\w.~$})\]/])/(?!proc/|dev/)[A-Za-z_][\w.-]*")
    found = []
    for path in sorted((ROOT / "tools").rglob("*")):
        if path.suffix not in (".py", ".sh", ".md", ".txt") or "__pycache__" in path.parts:
            continue
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if number == 1 and text.startswith("#!"):
                continue
            if "/work" in text or absolute.search(text):
                found.append(f"{path.relative_to(ROOT)}:{number}: {text.strip()}")
    assert not found, "\n".join(found)
