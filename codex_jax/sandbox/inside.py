"""The two programs of a judged run, as one file copied into the sandbox (stdlib only: it runs under
``python -I`` with any interpreter, never importing codex_jax).

``candidate``: runs the untrusted source (prompt + completion) in its own process, then answers calls to its
functions over two pipes. ``judge``: another process (another uid as root) that runs the problem's trusted
prompt and tests, with the function under test replaced by a proxy that calls the candidate; when
``check(candidate)`` returns it writes ``passed <nonce>`` to a pipe only it holds (the nonce came on its
stdin). Values cross as plain data only (None, bool, int, float, complex, str, bytes, list, tuple, dict,
set, frozenset): the judge never holds an object of the candidate's, so no ``__eq__`` of the candidate's
runs in the judge.
"""

import builtins
import json
import os
import struct
import sys
import traceback

MAX_MESSAGE = 64 << 20
_HEADER = struct.Struct(">I")
_TAGGED = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}


def encode(value):
    """``value`` as JSON-able plain data (TypeError for anything else)."""
    if value is None or isinstance(value, bool):
        return None if value is None else bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return {"$": "float", "v": repr(float(value))}
    if isinstance(value, str):
        return str(value)
    if isinstance(value, complex):
        return {"$": "complex", "v": [repr(value.real), repr(value.imag)]}
    if isinstance(value, (bytes, bytearray)):
        return {"$": "bytes", "v": bytes(value).hex()}
    if isinstance(value, dict):
        return {"$": "dict", "v": [[encode(k), encode(v)] for k, v in value.items()]}
    for tag, kind in _TAGGED.items():
        if isinstance(value, kind):
            return {"$": tag, "v": [encode(v) for v in value]}
    if hasattr(value, "dtype") and hasattr(value, "item"):  # a NumPy scalar
        return encode(value.item())
    raise TypeError(f"cannot pass a {type(value).__name__} between the judge and the program")


def decode(data):
    """The plain value :func:`encode` wrote (ValueError for anything else)."""
    if data is None or type(data) in (bool, int, str):
        return data
    if type(data) is not dict or set(data) != {"$", "v"}:
        raise ValueError("malformed value")
    tag, v = data["$"], data["v"]
    if tag == "float" and type(v) is str:
        return float(v)
    if tag == "complex" and type(v) is list and len(v) == 2:
        return complex(float(v[0]), float(v[1]))
    if tag == "bytes" and type(v) is str:
        return bytes.fromhex(v)
    if tag == "dict" and type(v) is list:
        return {decode(k): decode(x) for k, x in (_pair(p) for p in v)}
    if tag in _TAGGED and type(v) is list:
        return _TAGGED[tag](decode(x) for x in v)
    raise ValueError(f"malformed value tagged {tag!r}")


def _pair(p):
    if type(p) is not list or len(p) != 2:
        raise ValueError("malformed dict item")
    return p


def send(fd, message) -> None:
    body = json.dumps(message).encode()
    data = _HEADER.pack(len(body)) + body
    while data:
        data = data[os.write(fd, data) :]


def _read(fd, n):
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def receive(fd):
    """The next message, or None at the end of the pipe."""
    header = _read(fd, _HEADER.size)
    if header is None:
        return None
    (n,) = _HEADER.unpack(header)
    if n > MAX_MESSAGE:
        raise ValueError(f"message of {n} bytes")
    body = _read(fd, n)
    return None if body is None else json.loads(body)


def candidate(requests: int, replies: int, source_path: str) -> None:
    """Runs the untrusted source, says it is ready, then answers ``{"call", "args", "kwargs"}`` messages."""
    with open(source_path, encoding="utf-8") as f:
        source = f.read()
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(source, "program.py", "exec"), namespace)
    sys.stdout.flush()
    send(replies, {"ready": True})
    while (message := receive(requests)) is not None:
        try:
            function = namespace.get(message["call"])
            if not callable(function):
                raise NameError(f"name {message['call']!r} is not defined")
            args = [decode(a) for a in message["args"]]
            reply = {"ok": encode(function(*args))}
        except Exception as e:  # the judge decides what an error means
            reply = {"raise": [type(e).__name__, str(e)[:2000]]}
        sys.stdout.flush()
        send(replies, reply)


class Remote:
    """The function under test, as the judge sees it: each call runs in the candidate's process."""

    def __init__(self, name, requests, replies):
        self.__name__ = name
        self._requests, self._replies = requests, replies

    def __call__(self, *args, **kwargs):
        if kwargs:
            raise TypeError("keyword arguments are not passed to the program")
        send(self._requests, {"call": self.__name__, "args": [encode(a) for a in args]})
        reply = receive(self._replies)
        if not isinstance(reply, dict):
            raise RuntimeError("the program ended during its tests")
        if "ok" in reply:
            return decode(reply["ok"])
        name, text = reply.get("raise") or ("RuntimeError", "malformed reply")
        kind = getattr(builtins, str(name), None)
        if isinstance(kind, type) and issubclass(kind, Exception) and kind is not StopIteration:
            raise kind(str(text))
        raise RuntimeError(f"{name}: {text}")


def _trusted_namespace(prompt: str) -> dict:
    """The problem's own definitions (its prompt alone, a valid module for HumanEval): the tests' helpers
    (``poly``, ``encode_cyclic``) are the problem's, not ones the completion redefined."""
    namespace = {"__name__": "__judge__"}
    for text in (prompt, prompt + "\n    pass\n"):
        try:
            exec(compile(text, "prompt.py", "exec"), namespace)
            return namespace
        except Exception:
            namespace = {"__name__": "__judge__"}
    return namespace


def judge(requests: int, replies: int, verdict: int, problem_path: str) -> None:
    """Runs the problem's tests against :class:`Remote`; writes the verdict only if ``check`` returned."""
    try:  # no /proc/<pid>/mem, fd or ptrace access to this process for others of its uid
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass
    nonce = os.read(0, 64)  # written before this process started; only this process holds the pipe now
    os.write(verdict, b"r")  # the harness starts the candidate only now: this process is closed to it
    with open(problem_path, encoding="utf-8") as f:
        problem = json.load(f)
    if receive(replies) != {"ready": True}:
        raise SystemExit("the program ended before its tests")
    namespace = _trusted_namespace(problem["prompt"])
    entry_point = problem["entry_point"]
    namespace[entry_point] = remote = Remote(entry_point, requests, replies)
    exec(compile(problem["test"], "test.py", "exec"), namespace)
    namespace["check"](remote)
    os.write(verdict, b"passed " + nonce)


def main(argv) -> None:
    role, fds, path = argv[1], [int(a) for a in argv[2:-1]], argv[-1]
    try:
        if role == "candidate":
            candidate(fds[0], fds[1], path)
        else:
            judge(fds[0], fds[1], fds[2], path)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        raise SystemExit(1) from None
    except BaseException:
        traceback.print_exc()
        raise SystemExit(1) from None


if __name__ == "__main__":
    main(sys.argv)
