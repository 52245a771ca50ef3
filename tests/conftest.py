"""Shared test setup: 8 emulated CPU devices for in-process tests, and helpers that run the CLI for real."""

import atexit
import functools
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# The tests' tiny models spend most of their CPU compiling, so their processes compile cheaply: XLA's backend
# optimisation off (-O0 for LLVM: about 60% of the compile time), XLA's older loop emitters instead of the
# fusion emitters, and one codegen thread per module (the workers already fill the cores); together about
# half the CPU of the default build on tests/unit/test_step.py. Results are still deterministic (every run
# in a test compiles the same way), only not the same bits as the default build: the one test that compares
# with bits recorded by the product's default build (test_legacy_checkpoint) runs with ``optimized=True``.
TEST_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
    "--xla_cpu_parallel_codegen_split_count=1"
)


def xla_flags(devices: int, optimized: bool = False) -> str:
    """XLA_FLAGS for a test process with ``devices`` emulated CPU devices (see TEST_XLA_FLAGS)."""
    flags = f"--xla_force_host_platform_device_count={devices}"
    return flags if optimized else f"{flags} {TEST_XLA_FLAGS}"


os.environ.setdefault("XLA_FLAGS", xla_flags(8))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
# tests/e2e/ runs for real what tests/unit/ checks in-process, with the unit modules' fixtures and data
# (``from test_lora import LORA``): the unit folder is importable from both.
sys.path.insert(0, str(REPO / "tests" / "unit"))
sys.path.insert(0, str(REPO / "tests" / "e2e"))  # zygote.py

# One persistent XLA compilation cache for the processes the tests start (they inherit os.environ): the
# tiny config's steps are compiled once per shape and device count, not once per process. A cached
# executable is the one XLA would compile again, so results are the same bits. The test processes
# themselves do not use it: it costs time on every compile, and their compiles are mostly one-offs.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".pytest_cache" / "jax-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
import jax  # noqa: E402 (after the environment above: jax reads JAX_PLATFORMS when imported)
from zygote import Zygote  # noqa: E402 (tests/e2e is on sys.path from here)

jax.config.update("jax_enable_compilation_cache", False)


# The longest tests (tens of seconds each, a minute or more under load) run first, so that the 2 workers do
# not end with one of them alone; longest first, by a full-suite profile (--durations, 2026-12-07). A file
# named whole keeps its tests together, so its module fixtures are built on one worker.
LONGEST_FIRST = (
    "tests/e2e/test_docs_commands.py::test_documented_commands_run",
    "tests/e2e/test_posttrain_runs.py",
    "tests/e2e/test_workdir_commands.py",
    "tests/e2e/test_train.py",
    "tests/e2e/test_serve.py",
    "tests/e2e/test_qlora_runs.py",
    "tests/e2e/test_faults.py",
    "tests/e2e/test_notebooks.py",
    "tests/e2e/test_sft_run.py",
    "tests/e2e/test_multihost.py",
    "tests/e2e/test_lora_runs.py",
    "tests/e2e/test_gcs_workdir.py",
    "tests/e2e/test_moe_cli.py",
    "tests/e2e/test_preemption.py",
    "tests/e2e/test_init_from_runs.py",
    "tests/e2e/test_chaos.py",
    "tests/e2e/test_codeeval_lm_eval.py",
)


def _rank(nodeid: str) -> int:
    """The place of ``nodeid`` in LONGEST_FIRST (after them: every other test)."""
    ranks = (i for i, prefix in enumerate(LONGEST_FIRST) if nodeid.startswith(prefix))
    return next(ranks, len(LONGEST_FIRST))


def pytest_collection_modifyitems(config, items):
    """Marks each test ``unit`` or ``e2e`` by its folder (tests/unit/, tests/e2e/); the longest run first."""
    items.sort(key=lambda item: _rank(item.nodeid))  # stable: the others keep their order
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in ("unit", "e2e"):
            item.add_marker(getattr(pytest.mark, folder))


def tiny_llama(**fields):
    """A 2-layer, 32-wide Llama ModelConfig (GQA 4/2, vocab 97, 16 positions) for in-process step tests."""
    from codex_jax.models.config import ModelConfig

    base = dict(
        family="llama",
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        d_model=32,
        d_ff=64,
        vocab_size=97,
        max_seq_len=16,
        tie_embeddings=False,
    )
    return ModelConfig(**{**base, **fields})


LLAMA_TINY = [  # configs/tiny.py as a Llama (untied): the base of the LoRA and QLoRA runs
    "--config.model.family=llama",
    "--config.model.tie_embeddings=False",
    "--config.logging.writers=ndjson",
    "--config.generate.max_new_tokens=0",
]


@pytest.fixture(scope="session")
def base_run(tmp_path_factory):
    """A tiny llama trained by configs/tiny.py (20 steps): the base the LoRA and QLoRA runs fine-tune
    (tests/unit/test_lora.py, tests/e2e/test_lora_runs.py, test_qlora_runs.py), trained once per worker.
    Tests read it and may add eval files; none changes its checkpoints or metrics."""
    wd = tmp_path_factory.mktemp("base")
    run_cli(wd, *LLAMA_TINY)
    return wd


@pytest.fixture(scope="session")
def base_run_hf(base_run, tmp_path_factory):
    """``base_run`` exported in Hugging Face form (the base the PEFT adapters of the LoRA tests load on)."""
    out = tmp_path_factory.mktemp("base_hf") / "hf"
    run_cli(base_run, *LLAMA_TINY, "--config.export.format=hf", f"--config.export.dir={out}", mode="export")
    return out


def run_cli(
    workdir,
    *overrides,
    mode="train",
    devices=1,
    config="tiny.py",
    check=True,
    timeout=300,
    env_extra=None,
):
    """Runs ``python -m codex_jax.main`` in a new process with ``devices`` emulated CPU devices: forked
    from this test process's zygote (tests/e2e/zygote.py: codex_jax imported once, no JAX backend started),
    or started fresh when ``env_extra`` is given (it may change what happens at import time)."""
    env = {
        **os.environ,
        "XLA_FLAGS": xla_flags(devices),
        "JAX_PLATFORMS": "cpu",
        **(env_extra or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "codex_jax.main",
        f"--config={CONFIGS / config}",
        f"--workdir={workdir}",
        f"--mode={mode}",
        *overrides,
    ]
    if env_extra:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    else:
        result = run_python(cmd[1:], env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


@functools.cache
def _zygote() -> Zygote:
    """This test process's zygote, started on first use and closed at exit."""
    zygote = Zygote(dict(os.environ), REPO)
    atexit.register(zygote.close)
    return zygote


def _program(argv: list) -> tuple[list[str], dict]:
    """``(arguments, what)`` of ``['-m', MODULE, ...]`` or ``['-c', CODE, ...]`` for a zygote request."""
    argv = [str(a) for a in argv]
    return argv[2:], ({"module": argv[1]} if argv[0] == "-m" else {"code": argv[1]})


def run_python(
    argv: list,
    *,
    input: bytes | str | None = None,
    env: dict | None = None,
    timeout: float = 300,
    cwd=REPO,
    text: bool = True,
) -> subprocess.CompletedProcess:
    """What ``subprocess.run([python, *argv], capture_output=True, input=, env=, cwd=, text=)`` returns,
    for ``argv`` = ``['-m', MODULE, ...]`` or ``['-c', CODE, ...]``:
    a real process, forked from this test process's zygote (codex_jax imported once) instead of started
    fresh. ``env`` (default ``os.environ``) is its whole environment; it must not change what happens at
    import time (start those with subprocess)."""
    args, what = _program(argv)
    cmd = [sys.executable, *map(str, argv)]
    with tempfile.TemporaryDirectory(prefix="codex-jax-run-") as folder:
        out, err, stdin = Path(folder) / "stdout", Path(folder) / "stderr", Path(folder) / "stdin"
        if input is not None:
            stdin.write_bytes(input if isinstance(input, bytes) else input.encode())
        try:
            code = _zygote().run(
                args,
                out,
                dict(os.environ) if env is None else env,
                timeout=timeout,
                err=str(err),
                env_replace=True,
                cwd=str(cwd),
                stdin=str(stdin) if input is not None else "",
                **what,
            )
        except TimeoutError:
            raise subprocess.TimeoutExpired(cmd, timeout) from None
        if not text:
            return subprocess.CompletedProcess(cmd, code, out.read_bytes(), err.read_bytes())
        return subprocess.CompletedProcess(cmd, code, out.read_text(), err.read_text())


class ForkedRun:
    """A run in the background, forked from this test process's zygote: the part of ``subprocess.Popen``
    the tests use (``pid``, ``poll``, ``wait``, ``send_signal``, ``kill``). The zygote runs one at a time,
    so no other forked run may start before this one has been waited for. Unlike Popen's, a ``wait`` past
    its timeout kills the run before it raises."""

    def __init__(self, argv: list, env: dict, stdout: str, stderr: str, cwd=REPO):
        args, what = _program(argv)
        self._zygote = _zygote()
        self.returncode: int | None = None
        self.pid = self._zygote.start(
            args, stdout, env, err=str(stderr), env_replace=True, cwd=str(cwd), stdin="", **what
        )

    def poll(self) -> int | None:
        if self.returncode is None and self._zygote.ended():
            self.returncode = self._zygote.wait()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self.returncode = self._zygote.wait(timeout)
            except TimeoutError:
                raise subprocess.TimeoutExpired(f"forked run {self.pid}", timeout or 0) from None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def read_metrics(workdir, split="train"):
    """{step: metrics} of one split in workdir/metrics.ndjson (the last line for a step wins)."""
    out = {}
    for line in (Path(workdir) / "metrics.ndjson").read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == split and "loss" in record:
            out[record["step"]] = record
    return out


def restore_params(workdir, step):
    """The params saved at ``step`` as a dict of numpy arrays."""
    import jax
    import orbax.checkpoint as ocp

    params = ocp.StandardCheckpointer().restore(
        Path(workdir).absolute() / "checkpoints" / str(step) / "params"
    )
    return jax.tree.map(lambda x: jax.device_get(x), params)


def read_tb_events(logdir: Path) -> list:
    """Events from TFRecord-framed event files (u64 length, u32 crc, data, u32 crc)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            events.append(event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length]))
            pos += 12 + length + 4
    return events
