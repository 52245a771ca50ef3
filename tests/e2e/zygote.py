"""Many short real runs without paying the imports each time: a process that imports codex_jax once
and forks one fresh child per run (no JAX backend is started before the fork, so each child starts its
own, with its own device count). The children are real processes that the tests signal and kill.

Run as a script: it reads one JSON request a line on stdin (``{"argv": [...], "log": PATH, "env": {},
"max_file_bytes": 0}``; ``"stdin": PATH`` is read as standard input, else /dev/null; ``"module": NAME``
runs ``NAME.main()`` as ``python -m NAME`` does, instead of codex_jax.main; ``"code": SRC`` runs
``python -c SRC``),
answers ``{"pid": N}`` when the child runs and ``{"exit": CODE}`` (negative: killed by that signal) when
it ended. :class:`Zygote` is the tests' side.
"""

import atexit
import importlib
import json
import os
import resource
import select
import signal
import subprocess
import sys


def _child(request: dict) -> None:
    """In the forked child: the CLI with ``argv``, stdout and stderr to ``log``; never returns."""
    code = 1
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fd = os.open(request["log"], flags, 0o644)
        os.dup2(fd, 1)
        os.dup2(os.open(request["err"], flags, 0o644) if request.get("err") else fd, 2)
        os.dup2(os.open(request.get("stdin") or os.devnull, os.O_RDONLY), 0)  # never the zygote's requests
        sys.stdin = open(0, closefd=False)  # not the parent's object: its buffer may hold requests  # noqa: SIM115
        if request.get("cwd"):
            os.chdir(request["cwd"])
        if request.get("env_replace"):  # the request's env is the whole environment, as subprocess's env=
            os.environ.clear()
        os.environ.update(request.get("env", {}))
        if request.get("max_file_bytes"):  # a write past it fails with EFBIG (Python ignores SIGXFSZ)
            limit = request["max_file_bytes"]
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        if "code" in request:  # python -c SRC
            sys.argv = ["-c", *request["argv"]]
            exec(compile(request["code"], "<string>", "exec"), {"__name__": "__main__"})
        elif "module" in request:  # python -m MODULE, for a module whose __main__ block calls main()
            sys.argv = [request["module"], *request["argv"]]
            importlib.import_module(request["module"]).main()
        else:
            sys.argv = ["codex_jax.main", *request["argv"]]
            from codex_jax import main  # imported (and cached) by the parent already

            main.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception in a fresh process
        import traceback

        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    import codex_jax.main  # noqa: F401 - the expensive imports, once, before any fork

    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            _child(json.loads(line))
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)


class Zygote:
    """Starts the zygote; :meth:`start` forks a run, :meth:`wait` returns its exit code."""

    def __init__(self, env: dict, cwd):
        self.proc = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,  # unbuffered: select() in wait() sees every line the zygote wrote
            env=env,
            cwd=cwd,
        )
        self.pid: int | None = None

    def start(self, argv: list[str], log, env: dict | None = None, max_file_bytes: int = 0, **what) -> int:
        """Forks a run of the CLI with ``argv`` (output to ``log``; ``max_file_bytes``: RLIMIT_FSIZE;
        ``module=NAME`` or ``code=SRC`` to run another module or a ``-c`` program instead; ``err=PATH``
        for stderr apart; ``stdin=PATH`` as standard input; ``cwd=DIR``; ``env_replace=True``: ``env`` is
        the whole environment)."""
        request = {"argv": [str(a) for a in argv], "log": str(log), "env": env or {}, **what}
        request["max_file_bytes"] = max_file_bytes
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.pid = json.loads(self.proc.stdout.readline())["pid"]
        return self.pid

    def run(
        self, argv: list[str], log, env: dict | None = None, max_file_bytes: int = 0, timeout=None, **what
    ) -> int:
        """One run to its end: its exit code (``timeout``: as :meth:`wait`)."""
        self.start(argv, log, env, max_file_bytes, **what)
        return self.wait(timeout)

    def ended(self) -> bool:
        """Whether the run has ended (its exit code is ready for :meth:`wait`), without waiting."""
        return bool(select.select([self.proc.stdout], [], [], 0)[0])

    def wait(self, timeout: float | None = None) -> int:
        """The run's exit code; past ``timeout`` seconds the run is killed and TimeoutError raised."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.stdout.readline()  # its exit line
            self.pid = None
            raise TimeoutError(f"the run did not end within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote died")
        self.pid = None
        return json.loads(line)["exit"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


if __name__ == "__main__":
    serve()
