"""``codex-jax serve`` (issue 29) as a real process on loopback, driven by the unmodified ``openai``
client and by raw HTTP: greedy answers equal ``generate``'s, 32 concurrent clients get what each
request gets alone (memory flat across a second round), misuse gets OpenAI-style errors, a dropped
stream frees its slot, SIGTERM finishes what is in flight and exits 0, and nothing compiles after
warm-up."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from conftest import REPO, xla_flags
from serve_helpers import tiny_hf_folder

openai = pytest.importorskip("openai")

KEY = "sk-test-key"
SLOTS = 8


class ServeProcess:
    """``codex-jax serve ARGS --port=0`` in the background; ``port`` once it says it serves."""

    def __init__(self, folder: Path, *args: str):
        self.out = folder / f"serve-{time.monotonic_ns()}.out"
        self.err = self.out.with_suffix(".err")
        env = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
        cmd = [sys.executable, "-m", "codex_jax.cli", "serve", "--port=0", *args]
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        deadline = time.monotonic() + 240
        while "serving " not in self.out.read_text():
            assert self.proc.poll() is None, self.err.read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not start in 240 s"
            time.sleep(0.2)
        self.port = int(self.out.read_text().split("http://127.0.0.1:")[1].split()[0])

    def request(self, method: str, path: str, body=None, key: str | None = KEY, raw: bytes | None = None):
        """``(status, parsed JSON body)`` of one HTTP request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        status, text = response.status, response.read()
        conn.close()
        return status, json.loads(text)

    def health(self) -> dict:
        return self.request("GET", "/health", key=None)[1]

    def client(self, key: str = KEY):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_hf_folder(tmp_path_factory.mktemp("serve") / "tiny-llama")


@pytest.fixture(scope="module")
def server(folder):
    server = ServeProcess(
        folder.parent, f"--model=hf:{folder}", f"--slots={SLOTS}", "--max-queue=64", f"--api-key={KEY}"
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference(folder):
    """What ``codex-jax generate`` computes, in this process: ``complete`` over the same folder."""
    from codex_jax.generate import complete
    from codex_jax.serve.load import from_hf_folder

    served = from_hf_folder(str(folder))

    def answer(prompt: str, max_new: int, chat: bool = False) -> str:
        template = served.chat_template if chat else None
        return complete(
            served.model, served.params, served.tokenizer, prompt, max_new, chat_template=template
        )

    return answer


PROMPTS = [
    "def add(a, b):",
    "hello",
    "system user assistant hi",
    "no answer " * 5,
    "import os\nimport sys\n",
    "x",
    "class A:\n    def f(self):\n        return",
    "hi hello " * 9,
]


def test_openai_client_completions_chat_and_streams_equal_generate(server, reference):
    client = server.client()
    assert [m.id for m in client.models.list().data] == ["tiny-llama"]
    for prompt in PROMPTS[:2]:
        r = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=12, temperature=0)
        assert r.choices[0].text == reference(prompt, 12)
        assert r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 0
        streamed = client.completions.create(
            model="tiny-llama", prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
        assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text
    messages = [{"role": "user", "content": "hi hello"}]
    chat = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=10, temperature=0)
    assert chat.choices[0].message.content == reference("hi hello", 10, chat=True)
    assert chat.choices[0].message.role == "assistant"
    chunks = list(
        client.chat.completions.create(
            model="tiny-llama",
            messages=messages,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == chat.choices[0].message.content
    )
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


def test_sampling_parameters_logprobs_and_echo(server):
    client = server.client()
    kwargs = dict(model="m", prompt="def add(a, b):", max_tokens=8, temperature=0.8, top_p=0.9, seed=5)
    first = client.completions.create(**kwargs, n=3, extra_body={"top_k": 40})
    again = client.completions.create(**kwargs, n=3, extra_body={"top_k": 40})
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # same seed: same draws
    assert [c.index for c in first.choices] == [0, 1, 2]
    scored = client.completions.create(
        model="m", prompt="def add(a, b):", max_tokens=1, temperature=0, logprobs=3, echo=True
    )
    lp = scored.choices[0].logprobs
    prompt_tokens = scored.usage.prompt_tokens
    assert len(lp.tokens) == prompt_tokens + 1 and lp.token_logprobs[0] is None
    assert all(v < 0 for v in lp.token_logprobs[1:]) and len(lp.top_logprobs[1]) <= 3
    assert scored.choices[0].text.startswith("def add(a, b):")
    stopped = client.completions.create(model="m", prompt=PROMPTS[3], max_tokens=20, temperature=0)
    word = stopped.choices[0].text[2:5]
    if word.strip():  # a stop string inside the greedy text ends it there
        cut = client.completions.create(
            model="m", prompt=PROMPTS[3], max_tokens=20, temperature=0, stop=[word]
        )
        assert cut.choices[0].text == stopped.choices[0].text.split(word)[0]
        assert cut.choices[0].finish_reason == "stop"


def _alone_and_together(server, rounds: int):
    client = server.client()
    jobs = [(PROMPTS[i % len(PROMPTS)], 6 + i % 11, i % 4 == 3) for i in range(32 * 8)]

    def ask(job):
        prompt, max_tokens, stream = job
        if stream:
            parts = client.completions.create(
                model="m", prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
            )
            return "".join(p.choices[0].text for p in parts)
        return (
            client.completions.create(model="m", prompt=prompt, max_tokens=max_tokens, temperature=0)
            .choices[0]
            .text
        )

    alone = {job: ask(job) for job in sorted(set(jobs))}
    memory = []
    for _ in range(rounds):
        with ThreadPoolExecutor(32) as pool:  # 32 clients, 8 requests each
            together = list(pool.map(ask, jobs))
        assert together == [alone[job] for job in jobs]
        memory.append(psutil.Process(server.proc.pid).memory_info().rss)
    return memory


def test_32_concurrent_clients_get_what_each_request_gets_alone(server):
    memory = _alone_and_together(server, rounds=2)
    assert memory[1] - memory[0] < 32 * 2**20, memory  # flat across the second round
    assert server.health()["compiles_after_warm_up"] == 0


def test_misuse_gets_openai_errors(server):
    def error(status, body, code=None, param=None):
        assert set(body) == {"error"} and body["error"]["message"], body
        if code:
            assert body["error"]["code"] == code, body
        if param:
            assert body["error"]["param"] == param, body
        return status

    status, body = server.request("POST", "/v1/completions", raw=b'{"prompt": "x", ')
    assert error(status, body, "invalid_json") == 400 and "not valid JSON" in body["error"]["message"]
    for bad, param in [
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "logprobs": 9}, "logprobs"),
        ({"prompt": "x", "stop": 3}, "stop"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": [1, 2, 10**9]}, "prompt"),
    ]:
        status, body = server.request("POST", "/v1/completions", {"model": "m", **bad})
        assert error(status, body, param=param) == 400, bad
    status, body = server.request("POST", "/v1/chat/completions", {"model": "m", "messages": "hi"})
    assert error(status, body, param="messages") == 400
    status, body = server.request("POST", "/v1/completions", {"model": "m", "prompt": "hi " * 400})
    assert error(status, body, "context_length_exceeded") == 400
    assert "maximum context length is 128 tokens" in body["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        server.client().completions.create(model="m", prompt="hi " * 400, max_tokens=1)
    # More choices than slots plus queue at once: 429, and the server still answers afterwards.
    status, body = server.request("POST", "/v1/completions", {"prompt": ["a"] * 8, "n": 16, "max_tokens": 2})
    assert error(status, body, "queue_full") == 429
    assert server.request("POST", "/v1/completions", {"prompt": "a", "max_tokens": 2})[0] == 200
    # The API key: every route but /health.
    for method, path in [
        ("GET", "/v1/models"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
    ]:
        status, body = server.request(method, path, {"prompt": "x"}, key=None)
        assert error(status, body) == 401 and body["error"]["type"] == "authentication_error"
        assert server.request(method, path, {"prompt": "x"}, key="wrong")[0] == 401
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    status, body = server.request("GET", "/health", key=None)
    assert status == 200 and body["status"] == "ok"
    assert error(*server.request("GET", "/v1/nothing")) == 404


def test_a_dropped_stream_frees_its_slot(server):
    prompt = PROMPTS[6]
    full = server.client().completions.create(model="m", prompt=prompt, max_tokens=100, temperature=0)
    assert full.choices[0].finish_reason == "length"  # it would run for 100 tokens
    before = server.health()["finished"].get("cancelled", 0)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = {"prompt": prompt, "max_tokens": 100, "temperature": 0, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    assert response.readline().startswith(b"data: ")
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
    deadline = time.monotonic() + 30
    while server.health()["finished"].get("cancelled", 0) == before:
        assert time.monotonic() < deadline, server.health()
        time.sleep(0.05)
    assert server.health()["active"] == 0
    again = server.client().completions.create(model="m", prompt=prompt, max_tokens=100, temperature=0)
    assert again.choices[0].text == full.choices[0].text


def test_sigterm_finishes_the_requests_in_flight_and_exits_0(folder):
    server = ServeProcess(folder.parent, f"--model=hf:{folder}", "--slots=2")
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        body = {"prompt": PROMPTS[6], "max_tokens": 100, "temperature": 0, "stream": True}
        conn.request("POST", "/v1/completions", json.dumps(body))
        response = conn.getresponse()
        lines = [response.readline()]
        server.proc.send_signal(signal.SIGTERM)
        lines = [x for x in lines + response.read().splitlines() if x.strip()]
        texts = [json.loads(x[6:])["choices"][0]["text"] for x in lines if x.startswith(b"data: {")]
        assert lines[-1] == b"data: [DONE]" and len("".join(texts)) > 0
        assert server.proc.wait(timeout=60) == 0
        with pytest.raises(OSError):
            http.client.HTTPConnection("127.0.0.1", server.port, timeout=5).request("GET", "/health")
    finally:
        server.stop()


def test_nothing_compiled_after_warm_up(server):
    health = server.health()
    assert health["compiles"] == 5 and health["compiles_after_warm_up"] == 0  # 4 prefill buckets + decode


def test_lm_eval_local_completions_equals_the_in_process_model(server, folder, monkeypatch, tmp_path):
    pytest.importorskip("lm_eval")
    import lm_eval
    import lm_eval.models.openai_completions  # noqa: F401 (registers local-completions)
    from lm_eval.tasks import TaskManager

    from codex_jax.codeeval.lm_eval_model import CodexJaxLM
    from codex_jax.serve.load import from_hf_folder

    for key, value in {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": KEY}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.chdir(REPO)  # the task YAMLs name their JSONL relative to the repository root
    tasks = TaskManager(include_path=str(REPO / "tests" / "fixtures" / "lm_eval"), include_defaults=False)
    remote = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=(
            f"base_url=http://127.0.0.1:{server.port}/v1/completions,model=tiny-llama,"
            f"tokenizer_backend=huggingface,tokenizer={folder},tokenized_requests=True,"
            "max_length=128,num_concurrent=4,max_retries=1"
        ),
        tasks=["codex_jax_choice", "codex_jax_complete"],
        task_manager=tasks,
        log_samples=True,
        batch_size=4,
    )
    served = from_hf_folder(str(folder))
    local = lm_eval.simple_evaluate(
        model=CodexJaxLM(model=served.model, params=served.params, tokenizer=served.tokenizer, batch_size=4),
        tasks=["codex_jax_choice"],
        task_manager=tasks,
        log_samples=True,
    )
    ours = {s["doc_id"]: s["resps"] for s in local["samples"]["codex_jax_choice"]}
    checked = 0
    for sample in remote["samples"]["codex_jax_choice"]:
        for got, want in zip(sample["resps"], ours[sample["doc_id"]], strict=True):
            assert float(got[0][0]) == pytest.approx(float(want[0][0]), abs=1e-5)
            checked += 1
    assert checked >= 10
    completions = remote["samples"]["codex_jax_complete"]
    assert completions and all(isinstance(s["resps"][0][0], str) for s in completions)


def test_a_runs_checkpoint_serves_what_codex_jax_generate_prints(tmp_path):
    from conftest import run_cli, run_python

    workdir = tmp_path / "run"
    run_cli(
        workdir, "--config.train.steps=2", "--config.checkpoint.every_steps=2", "--config.train.eval_every=2"
    )
    prompt = "def main():\n"
    greedy = ["--config.generate.temperature=0", f"--config.generate.prompt={prompt}"]
    printed = run_cli(workdir, *greedy, mode="generate").stdout
    server = ServeProcess(tmp_path, f"--workdir={workdir}", "--slots=2")
    try:
        text = server.client().completions.create(model="m", prompt=prompt, max_tokens=8, temperature=0)
        assert printed == prompt + text.choices[0].text + "\n"
        assert [m.id for m in server.client().models.list().data] == ["run@2"]
    finally:
        assert server.stop() == 0
    for args, needle in [
        ([], "error: serve needs --workdir=RUN"),
        ([f"--workdir={tmp_path / 'none'}"], "cannot read the run's config"),
        (["--model=/models/x"], "error: --model=hf:FOLDER"),
    ]:
        out = run_python(["-m", "codex_jax.cli", "serve", *args], timeout=120)
        assert out.returncode == 2 and needle in out.stderr, out.stderr
