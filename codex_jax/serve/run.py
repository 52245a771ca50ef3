"""Runs the server: the engine warmed up, then uvicorn on a socket bound here (so ``--port=0`` can
say which port it got). SIGTERM/SIGINT: uvicorn stops accepting, the requests in flight finish, the
engine stops, and the process exits 0."""

from __future__ import annotations

import signal
import socket
import sys
import time

import uvicorn

from codex_jax.serve.app import Server, make_app
from codex_jax.serve.engine import Engine
from codex_jax.serve.load import Served


def serve(
    served: Served,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    slots: int = 8,
    max_queue: int = 64,
    context: int = 0,
    api_key: str | None = None,
) -> None:
    """Serves ``served`` until SIGTERM/SIGINT; prints ``serving MODEL on http://HOST:PORT`` when ready."""
    engine = Engine(served.model, served.params, slots=slots, context=context or None, max_queue=max_queue)
    started = time.perf_counter()
    engine.warm_up()
    print(
        f"serve: compiled {engine.compiles} step functions in {time.perf_counter() - started:.1f} s "
        f"({slots} slots, context {engine.context}, prefill buckets {engine.buckets})",
        file=sys.stderr,
        flush=True,
    )
    server = Server(engine, served.tokenizer, served.name, served.chat_template, api_key)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them: ready once printed
    bound = sock.getsockname()[1]
    config = uvicorn.Config(make_app(server), log_level="warning", lifespan="on", timeout_keep_alive=5)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {served.name} on http://{shown}:{bound}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn raises the signal again once it has shut down
        signal.signal(sig, lambda *_: None)  # gracefully: then it is done with, and the exit code is 0
    uvicorn.Server(config).run(sockets=[sock])
    print("serve: stopped", file=sys.stderr, flush=True)
