"""One writer per workdir: the lock a run holds on its workdir while it writes (``workdir/run.lock``).

The lock file names its holder in JSON (host, pid, start time, heartbeat). On the holder's host an
``flock`` on the file decides: the kernel drops it when the holder dies (kill -9 included), so a lock
whose flock is free is stale. A holder on another host (a shared filesystem, where flock may not
reach) refreshes its heartbeat every ``HEARTBEAT_SECONDS``; one silent for ``STALE_SECONDS`` is stale.
A stale lock is taken over with a ``note:`` line; a live one is a :class:`UserError` naming its holder,
and nothing in the workdir is written. The holder removes the file when it releases the lock.

On a bucket (``gs://``) there is no flock: the record alone decides, as on a filesystem without flock
(on the holder's host: whether its pid is alive; elsewhere: its heartbeat). The record is one object,
read and then written: two runs started within the same moment could both pass the check (gcsfs
offers no create-if-absent), so the lock there guards against a second run started later, not a race.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from codex_jax import files
from codex_jax.errors import UserError

LOCK_FILE = "run.lock"
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 120.0
_MESSAGE_BYTES = 2048  # the error text process 0 sends to the others


class WorkdirLock:
    """The lock on ``workdir`` (:meth:`acquire` / :meth:`release`, or a ``with`` block)."""

    def __init__(self, workdir: Path):
        self.path = files.as_path(workdir) / LOCK_FILE
        self._fd: int | None = None
        self._remote = files.is_remote(self.path)  # a bucket: no file descriptor, no flock
        self._held = False
        self._record: dict = {}
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> None:
        """Takes the lock, or raises UserError naming the live holder (the workdir is left as it was)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, flocked = (None, False) if self._remote else self._open_locked()
        holder = _read_record(self.path)
        if holder and not _is_stale(holder, flocked):
            if fd is not None:
                os.close(fd)
            raise UserError(held_message(self.path, holder))
        if holder:
            print(f"note: {self.path}: taking over the stale lock of {describe(holder)}", file=sys.stderr)
        now = time.time()
        self._fd = fd
        self._held = True
        self._record = {"host": socket.gethostname(), "pid": os.getpid(), "started": now, "heartbeat": now}
        self._write_record()
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def _open_locked(self) -> tuple[int, bool]:
        """The lock file opened with an exclusive flock (False: the filesystem has no flock)."""
        tries = 5  # a reader's brief shared flock (held_by_another) is not a holder
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = True
            except BlockingIOError:
                os.close(fd)
                tries -= 1
                if tries == 0:
                    raise UserError(held_message(self.path, _read_record(self.path))) from None
                time.sleep(0.05)
                continue
            except OSError:  # no flock here (some network filesystems): the record alone decides
                flocked = False
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd, flocked
            os.close(fd)  # the holder released (and removed) the file meanwhile: open the new one

    def _write_record(self) -> None:
        data = (json.dumps(self._record) + "\n").encode()
        if self._remote:
            self.path.write_bytes(data)  # one object upload: readers see the old record or the new
            return
        assert self._fd is not None
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
        os.fsync(self._fd)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self._record["heartbeat"] = time.time()
            with contextlib.suppress(Exception):  # a full disk or a failed upload must not end the run
                self._write_record()

    def release(self) -> None:
        """Removes the lock file (if it still names this process) and drops the flock."""
        if not self._held:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with contextlib.suppress(OSError):
            if _read_record(self.path).get("pid") == os.getpid():
                self.path.unlink()
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._held = False

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _is_stale(holder: dict, flocked: bool) -> bool:
    """Whether the holder is gone: on this host its flock is free (or its pid is dead where there is
    no flock); on another host its heartbeat is older than ``STALE_SECONDS``."""
    if holder.get("host") == socket.gethostname():
        return flocked or not _pid_alive(int(holder.get("pid", 0)))
    return time.time() - float(holder.get("heartbeat", 0)) > STALE_SECONDS


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def describe(holder: dict) -> str:
    """'pid 123 on host h (started 2026-01-01 12:00:00 UTC, heartbeat 3 s ago)'."""
    if not holder:
        return "another process (it has not written its name yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("started", 0))))
    age = time.time() - float(holder.get("heartbeat", 0))
    who = f"pid {holder.get('pid')} on host {holder.get('host')}"
    return f"{who} (started {started}, heartbeat {age:.0f} s ago)"


def held_message(path: Path, holder: dict) -> str:
    return (
        f"{path.parent}: another run is writing to this workdir: {describe(holder)}; wait for it to "
        f"end or use another --workdir (a lock whose holder died is taken over: {path})"
    )


def held_by_another(workdir: Path) -> str | None:
    """The live holder of ``workdir``'s lock when another process holds it (readers use this to
    write nothing into a workdir being trained), else None."""
    path = files.as_path(workdir) / LOCK_FILE
    if files.is_remote(path):  # a bucket: the record alone decides
        holder = _read_record(path)
        if not holder or _is_stale(holder, False) or holder.get("pid") == os.getpid():
            return None
        return describe(holder)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        flocked = True
    except BlockingIOError:
        return describe(_read_record(path))
    except OSError:
        flocked = False
    finally:
        os.close(fd)
    holder = _read_record(path)
    if not holder or _is_stale(holder, flocked) or holder.get("pid") == os.getpid():
        return None
    return describe(holder)


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Holds ``workdir``'s lock for the ``with`` block: process 0 takes it, and when it is held every
    process raises the same UserError (before anything is written)."""
    lock, error = None, ""
    if jax.process_index() == 0:
        lock = WorkdirLock(workdir)
        try:
            lock.acquire()
        except UserError as e:
            lock, error = None, str(e)
    if jax.process_count() > 1:
        error = _broadcast_text(error)
    if error:
        raise UserError(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _broadcast_text(text: str) -> str:
    """Process 0's ``text`` on every process (one small collective)."""
    data = text.encode()[:_MESSAGE_BYTES].ljust(_MESSAGE_BYTES, b"\0")
    received = multihost_utils.broadcast_one_to_all(np.frombuffer(data, np.uint8))
    return bytes(np.asarray(received, np.uint8)).rstrip(b"\0").decode(errors="replace")
