"""``codex-jax safety scan PATH... [--policy=P]`` and ``codex-jax safety rules [--policy=P]``.

``scan`` prints one JSON object a line per finding, ``{"file", "line", "column", "rule",
"action"}`` (never the secret), a summary on stderr, and exits 1 when it found anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from codex_jax.errors import EXIT_USER_ERROR, UserError
from codex_jax.safety.policy import Policy, load_policy

SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", "node_modules"})


def iter_files(paths: list[str]) -> Iterator[Path]:
    """Files of ``paths`` (directories walked, version-control and cache folders skipped)."""
    for p in map(Path, paths):
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
                yield from (Path(root, f) for f in sorted(files))
        elif p.exists():
            yield p
        else:
            raise UserError(f"safety scan: no such file or directory: {p}")


def scan_file(policy: Policy, path: Path) -> list[dict] | None:
    """The findings of one file as JSON records; None for a binary or unreadable file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    text = data.decode("utf-8", errors="replace")
    return [
        {"file": str(path), "line": f.line, "column": f.column, "rule": f.rule, "action": f.action}
        for f in policy.scan(text)
    ]


def _scan(args) -> int:
    policy = load_policy(args.policy)
    if policy is None:
        raise UserError("safety scan: --policy is empty")
    files = scanned = found = 0
    for path in iter_files(args.paths):
        records = scan_file(policy, path)
        files += 1
        if records is None:
            continue
        scanned += 1
        for record in records:
            print(json.dumps(record), flush=False)
        found += len(records)
    sys.stdout.flush()
    print(
        f"safety scan: {found} finding(s) in {scanned} text file(s) ({files - scanned} skipped: "
        f"binary or unreadable); policy {policy.name}",
        file=sys.stderr,
    )
    return 1 if found else 0


def _rules(args) -> int:
    policy = load_policy(args.policy)
    for rule in policy.rules if policy else []:
        print(json.dumps({"id": rule.id, "action": rule.action, "pattern": rule.pattern.pattern}))
    return 0


def main(argv: list[str]) -> int:
    """Runs the ``safety`` subcommand; returns the exit code."""
    parser = argparse.ArgumentParser(prog="codex-jax safety", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan", help="find secrets in files (prints JSON lines)")
    scan.add_argument("paths", nargs="+", metavar="PATH")
    rules = sub.add_parser("rules", help="list a policy's rules")
    for p in (scan, rules):
        p.add_argument("--policy", default="default", help="'default' or a YAML policy file")
    args = parser.parse_args(argv)
    try:
        return _scan(args) if args.command == "scan" else _rules(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
