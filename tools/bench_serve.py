"""``codex-jax serve`` throughput: prints ONE JSON line on stdout (progress goes to stderr).

    python tools/bench_serve.py [--layers 4 --width 256 --requests 32 --max-tokens 32 --slots 32]

Builds a random Llama Hugging Face folder (the tokenizer of tests/unit/sft_helpers.py), starts
``codex-jax serve --model=hf:FOLDER`` in a child process, and sends the same ``--requests`` greedy
streamed completions with 1 client (one at a time), 8 and 32 concurrent clients (the openai client):
generated tokens/s (usage counts over the wall time) and time to first token (median, p90). Then
transformers' batched ``generate`` (torch, CPU, greedy, left padding) on the same weights and prompts
at batch 1, 8 and 32, every row generating ``--max-tokens`` tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "unit"))


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def make_folder(folder: Path, layers: int, width: int, context: int) -> Path:
    import transformers
    from hf_helpers import random_hf_model
    from sft_helpers import chat_tokenizer_folder

    chat_tokenizer_folder(folder)
    eos = transformers.AutoTokenizer.from_pretrained(folder).eos_token_id
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=width,
        intermediate_size=width * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        num_key_value_heads=max(1, width // 128),
        max_position_embeddings=context,
        tie_word_embeddings=False,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    random_hf_model(config, folder)
    return folder


def prompts_of(n: int) -> list[str]:
    words = ["def", "add", "return", "self", "import", "class", "hello", "answer", "system", "user"]
    return [" ".join(words[(i + j) % len(words)] for j in range(4 + i % 12)) for i in range(n)]


def start_server(folder: Path, slots: int, out: Path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable,
        "-m",
        "codex_jax.cli",
        "serve",
        f"--model=hf:{folder}",
        "--port=0",
        f"--slots={slots}",
    ]
    proc = subprocess.Popen(cmd, stdout=out.open("w"), stderr=sys.stderr, env=env, cwd=REPO)
    while "serving " not in out.read_text():
        if proc.poll() is not None:
            raise SystemExit("the server failed to start")
        time.sleep(0.2)
    return proc, int(out.read_text().split("http://127.0.0.1:")[1].split()[0])


def serve_round(port: int, prompts: list[str], clients: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)

    def one(prompt: str):
        started = time.perf_counter()
        first, tokens = None, 0
        stream = client.completions.create(
            model="m",
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if first is None and chunk.choices:
                first = time.perf_counter() - started
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return first, tokens

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - started
    ttft = sorted(r[0] for r in results if r[0] is not None)
    tokens = sum(r[1] for r in results)
    return {
        "clients": clients,
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_median_ms": round(1000 * statistics.median(ttft), 1),
        "ttft_p90_ms": round(1000 * ttft[int(0.9 * (len(ttft) - 1))], 1),
    }


def transformers_round(folder: Path, prompts: list[str], batch: int, max_tokens: int) -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    tok = transformers.AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    kwargs = dict(
        max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id
    )
    with torch.no_grad():  # one warm-up batch
        model.generate(**tok(prompts[:batch], return_tensors="pt", padding=True), **kwargs)
        started = time.perf_counter()
        tokens = 0
        for i in range(0, len(prompts), batch):
            inputs = tok(prompts[i : i + batch], return_tensors="pt", padding=True)
            out = model.generate(**inputs, **kwargs)
            tokens += (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]
        wall = time.perf_counter() - started
    return {
        "batch": batch,
        "tokens": tokens,
        "seconds": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch intra-op threads (0: its default)"
    )
    args = parser.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    prompts = prompts_of(args.requests)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        folder = make_folder(Path(tmp) / "model", args.layers, args.width, args.context)
        proc, port = start_server(folder, args.slots, Path(tmp) / "serve.out")
        try:
            serve_round(port, prompts[:2], 2, 4)  # a first request of each kind
            serve = []
            for clients in (1, 8, 32):
                serve.append(serve_round(port, prompts, clients, args.max_tokens))
                log("serve", serve[-1])
        finally:
            proc.terminate()
            proc.wait(timeout=120)
        hf = []
        for batch in (1, 8, 32):
            hf.append(transformers_round(folder, prompts, batch, args.max_tokens))
            log("transformers", hf[-1])
    one = serve[0]["tokens_per_s"]
    result = {
        "model": f"random llama, {args.layers} layers, width {args.width}, vocab 320, context {args.context}",
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "slots": args.slots,
        "cpu_count": os.cpu_count(),
        "torch_threads": args.torch_threads or "default",
        "load_average": os.getloadavg()[0],
        "serve": serve,
        "transformers_generate": hf,
        "speedup_32_clients_vs_one_at_a_time": round(serve[2]["tokens_per_s"] / one, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
