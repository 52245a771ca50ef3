"""Safety policy: rules that find secrets, and what to do with each finding.

A policy file is YAML::

    extends: default          # optional: the built-in rules first, then these
    rules:
      - id: internal-host
        action: redact        # block | redact | allow
        literal: corp.internal.example.net
      - id: db-url
        action: block
        regex: 'postgres://[^\\s@]{1,64}@'
        flags: [IGNORECASE]   # IGNORECASE, MULTILINE, DOTALL, ASCII (or i, m, s, a)

``block``: the record is dropped / the generated text withheld. ``redact``: the match (its
``secret`` group when the regex has one) becomes ``[REDACTED:<id>]``. ``allow``: a finding whose
matched text an allow rule matches is ignored. Every repeat in a regex must have an upper bound
(``{0,64}``, not ``*``): then matching takes time linear in the text (no catastrophic
backtracking); possessive repeats (``{1,64}+``) keep the constant small.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from codex_jax.errors import UserError
from codex_jax.safety.default import DEFAULT_POLICY

try:  # Python 3.11+
    import re._constants as sre_constants
    import re._parser as sre_parse
except ImportError:  # pragma: no cover
    import sre_constants
    import sre_parse

ACTIONS = ("block", "redact", "allow")
_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT)
_FLAGS = {
    "IGNORECASE": re.IGNORECASE,
    "I": re.IGNORECASE,
    "MULTILINE": re.MULTILINE,
    "M": re.MULTILINE,
    "DOTALL": re.DOTALL,
    "S": re.DOTALL,
    "ASCII": re.ASCII,
    "A": re.ASCII,
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule: its id, action and compiled pattern."""

    id: str
    action: str
    pattern: re.Pattern
    source: dict


@dataclasses.dataclass(frozen=True)
class Finding:
    """A match of a block/redact rule: where it is (1-based line and column), never what."""

    rule: str
    action: str
    start: int
    end: int
    line: int
    column: int


@dataclasses.dataclass(frozen=True)
class Result:
    """The text after redaction (None when blocked) and the findings."""

    text: str | None
    findings: list[Finding]

    @property
    def blocked(self) -> bool:
        return self.text is None


def _unbounded(parsed) -> bool:
    """True when the parsed regex has a repeat without an upper bound (``*``, ``+``, ``{n,}``)."""
    for op, arg in parsed:
        if op in _REPEATS:
            if arg[1] == sre_constants.MAXREPEAT or _unbounded(arg[2]):
                return True
        elif op == sre_constants.SUBPATTERN:
            if _unbounded(arg[-1]):
                return True
        elif op == sre_constants.ATOMIC_GROUP:
            if _unbounded(arg):
                return True
        elif op == sre_constants.BRANCH:
            if any(_unbounded(b) for b in arg[1]):
                return True
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT) and _unbounded(arg[1]):
            return True
    return False


def compile_rule(raw: Any, where: str) -> Rule:
    """A Rule from one policy entry; UserError naming ``where`` and what is wrong."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a rule must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"id", "action", "literal", "regex", "flags", "description"})
    rule_id, action = raw.get("id"), raw.get("action")
    where = f"{where} ({rule_id!r})" if rule_id else where
    if unknown:
        raise UserError(f"{where}: unknown keys {unknown}")
    if not isinstance(rule_id, str) or not rule_id:
        raise UserError(f"{where}: 'id' must be a non-empty string")
    if action not in ACTIONS:
        raise UserError(f"{where}: 'action' must be one of {', '.join(ACTIONS)}, got {action!r}")
    if ("literal" in raw) == ("regex" in raw):
        raise UserError(f"{where}: give exactly one of 'literal' or 'regex'")
    text = raw.get("literal", raw.get("regex"))
    if not isinstance(text, str) or not text:
        raise UserError(f"{where}: the pattern must be a non-empty string")
    flags = 0
    for name in raw.get("flags") or []:
        if str(name).upper() not in _FLAGS:
            raise UserError(f"{where}: unknown flag {name!r} (known: {', '.join(_FLAGS)})")
        flags |= _FLAGS[str(name).upper()]
    source = re.escape(text) if "literal" in raw else text
    try:
        pattern = re.compile(source, flags)
        parsed = sre_parse.parse(source, flags)
    except re.error as e:
        raise UserError(f"{where}: invalid regex: {e}") from None
    if _unbounded(parsed):
        raise UserError(
            f"{where}: unbounded repeats ('*', '+', '{{n,}}') can make matching slow on long "
            "inputs; bound every repeat, e.g. '{0,64}'"
        )
    return Rule(rule_id, action, pattern, dict(raw))


class Policy:
    """Compiled rules; :meth:`apply` redacts or blocks a text, :meth:`scan` only finds."""

    def __init__(self, rules: list[Rule], name: str = "custom"):
        ids = [r.id for r in rules]
        duplicate = sorted({i for i in ids if ids.count(i) > 1})
        if duplicate:
            raise UserError(f"safety policy {name}: duplicate rule ids {duplicate}")
        self.name = name
        self.rules = rules
        self._find = [r for r in rules if r.action != "allow"]
        self._allow = [r for r in rules if r.action == "allow"]

    @classmethod
    def from_dict(cls, data: Any, name: str) -> Policy:
        """A policy from parsed YAML (``{'rules': [...], 'extends': 'default'}``)."""
        if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
            raise UserError(f"safety policy {name}: expected a mapping with a 'rules' list")
        unknown = sorted(set(data) - {"rules", "extends"})
        if unknown:
            raise UserError(f"safety policy {name}: unknown keys {unknown}")
        extends = data.get("extends")
        if extends not in (None, "default"):
            raise UserError(f"safety policy {name}: 'extends' may only be 'default'")
        raw = (DEFAULT_POLICY["rules"] if extends else []) + data.get("rules", [])
        rules = [compile_rule(r, f"safety policy {name}: rule {i}") for i, r in enumerate(raw)]
        return cls(rules, name)

    @property
    def checksum(self) -> str:
        """sha256 of the rules (it keys the token cache of filtered data)."""
        body = json.dumps([r.source for r in self.rules], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    def scan(self, text: str) -> list[Finding]:
        """Findings of the block/redact rules not excused by an allow rule, in text order."""
        matches = []
        for rule in self._find:
            secret = "secret" in rule.pattern.groupindex
            for m in rule.pattern.finditer(text):
                if any(a.pattern.search(m.group(0)) for a in self._allow):
                    continue
                start, end = m.span("secret") if secret and m.start("secret") >= 0 else m.span()
                matches.append((start, end, rule))
        if not matches:
            return []
        findings, line, seen, line_start = [], 1, 0, 0
        for start, end, rule in sorted(matches, key=lambda m: (m[0], m[1])):
            newline = text.rfind("\n", seen, start)  # one pass over the text in all
            if newline >= 0:
                line += text.count("\n", seen, start)
                line_start = newline + 1
            seen = start
            findings.append(Finding(rule.id, rule.action, start, end, line, start - line_start + 1))
        return findings

    def apply(self, text: str) -> Result:
        """``text`` with redactions applied, or blocked (``Result.text is None``)."""
        findings = self.scan(text)
        if any(f.action == "block" for f in findings):
            return Result(None, findings)
        out, last = [], 0
        for f in findings:  # in text order; an overlap extends the previous redaction
            if f.start < last:
                continue
            out += [text[last : f.start], f"[REDACTED:{f.rule}]"]
            last = f.end
        out.append(text[last:])
        return Result("".join(out) if findings else text, findings)


def load_policy(spec: str) -> Policy | None:
    """``''`` -> None (off), ``'default'`` -> the built-in rules, else a YAML file's policy."""
    if not spec:
        return None
    if spec == "default":
        return Policy.from_dict(DEFAULT_POLICY, "default")
    path = Path(spec).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"safety policy {spec}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        reason = " ".join(str(e).split())
        raise UserError(f"safety policy {spec}: invalid YAML ({reason})") from None
    return Policy.from_dict(data, str(path))


def filter_output(text: str, spec: str) -> str:
    """Generated ``text`` under the policy ``spec`` (``generate.safety_policy``): redacted, or a
    notice naming the rules when a block rule fires."""
    policy = load_policy(spec)
    if policy is None:
        return text
    result = policy.apply(text)
    if result.blocked:
        rules = sorted({f.rule for f in result.findings if f.action == "block"})
        return f"[withheld by the safety policy: {', '.join(rules)}]"
    assert result.text is not None  # only a blocked result has no text
    return result.text
