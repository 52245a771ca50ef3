"""One writer per workdir: the lock file, its holder, stale locks and the heartbeat (in-process)."""

import json
import socket
import subprocess
import sys
import time

import pytest

from codex_jax.errors import UserError
from codex_jax.setup import lock as lock_lib
from codex_jax.setup.lock import LOCK_FILE, WorkdirLock, held_by_another


def write_holder(workdir, **fields):
    workdir.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": 1, "started": time.time(), "heartbeat": time.time()}
    (workdir / LOCK_FILE).write_text(json.dumps({**record, **fields}))


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with WorkdirLock(tmp_path):
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] > 0 and record["host"] == socket.gethostname()
        before = (tmp_path / LOCK_FILE).read_bytes()
        with pytest.raises(UserError, match=f"another run is writing to this workdir: pid {record['pid']}"):
            WorkdirLock(tmp_path).acquire()
        assert (tmp_path / LOCK_FILE).read_bytes() == before  # the refused one changed nothing
    assert not (tmp_path / LOCK_FILE).exists()  # released: removed
    with WorkdirLock(tmp_path):  # and free again
        pass


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path, capsys):
    pid = dead_pid()
    write_holder(tmp_path, pid=pid)
    with WorkdirLock(tmp_path):
        assert f"taking over the stale lock of pid {pid}" in capsys.readouterr().err
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] != pid


def test_a_holder_on_another_host_is_live_until_its_heartbeat_is_stale(tmp_path, capsys):
    write_holder(tmp_path, host="elsewhere", pid=42)
    assert "pid 42 on host elsewhere" in held_by_another(tmp_path)
    with pytest.raises(UserError, match="pid 42 on host elsewhere"):
        WorkdirLock(tmp_path).acquire()
    write_holder(tmp_path, host="elsewhere", pid=42, heartbeat=time.time() - lock_lib.STALE_SECONDS - 1)
    assert held_by_another(tmp_path) is None
    with WorkdirLock(tmp_path):
        assert "taking over the stale lock of pid 42 on host elsewhere" in capsys.readouterr().err


def test_the_heartbeat_is_refreshed(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_lib, "HEARTBEAT_SECONDS", 0.05)
    with WorkdirLock(tmp_path):
        first = json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads((tmp_path / LOCK_FILE).read_text())["heartbeat"] > first


def test_readers_see_a_live_holder_in_another_process(tmp_path):
    """A process holding the lock (flock) is seen by readers; once it is killed it is not."""
    code = (
        "import sys, time; from codex_jax.setup.lock import WorkdirLock; "
        f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert f"pid {proc.pid} on host" in held_by_another(tmp_path)
        with pytest.raises(UserError, match=f"pid {proc.pid}"):
            WorkdirLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()
    assert held_by_another(tmp_path) is None  # killed: its flock is gone, the file names a dead pid
