"""The safety filter on training records: redact or drop, and count what happened.

Dropped records are counted as skipped in their file's manifest entry (``"safety: <rule>"``); the
manifest's ``safety`` section holds the totals, and the corpus checksum (which keys the token
cache) covers the policy, so changing it rebuilds the cache.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from typing import Any

from codex_jax.corpus.records import MAX_BAD_LOCATIONS, FileReport
from codex_jax.safety.policy import load_policy


def resolve(spec: str, source: str) -> str:
    """``'auto'`` -> ``'default'`` for the stdlib source, ``''`` (off) for any other."""
    if spec == "auto":
        return "default" if source == "stdlib" else ""
    return spec


class CorpusFilter:
    """Applies the policy of ``data.safety_policy`` (``'auto'``, ``'default'``, a YAML path or
    ``''``: off) to corpora, keeping counts for the manifest."""

    def __init__(self, spec: str, source: str):
        self.spec = resolve(spec, source)
        self.policy = load_policy(self.spec)
        self.rules: collections.Counter = collections.Counter()
        self.redacted = self.dropped = 0

    def __call__(self, corpus):
        """``corpus`` with its documents redacted or dropped (dropped ones counted as skipped)."""
        if self.policy is None:
            return corpus
        reports = {r.path: r for r in corpus.files}
        kept = []
        for doc in corpus.documents:
            text, redacted = self.filter_record(doc.key, doc.text, reports[doc.file])
            if redacted:
                assert self.policy is not None
                turns = tuple((role, self.policy.apply(content).text or "") for role, content in doc.turns)
                kept.append(dataclasses.replace(doc, text=text, turns=turns))  # examples: each turn
            elif text is not None:
                kept.append(doc)
        return dataclasses.replace(corpus, documents=kept)

    def filter_file(self, report: FileReport, records: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The ``(key, text)`` records of one file (``report``'s) redacted, less the dropped ones."""
        if self.policy is None:
            return records
        kept = []
        for key, text in records:
            filtered, _ = self.filter_record(key, text, report)
            if filtered is not None:
                kept.append((key, filtered))
        return kept

    def filter_record(self, key: str, text: str, report: FileReport) -> tuple[str | None, bool]:
        """``(text, redacted)`` of one record of ``report``'s file under the policy: its text (redacted
        when a redact rule matched), or None when a block rule drops it (counted in ``report`` as a
        skipped record, even under on_bad_record='error')."""
        if self.policy is None:
            return text, False
        result = self.policy.apply(text)
        self.rules.update(f.rule for f in result.findings)
        if result.blocked:
            self.dropped += 1
            block = next(f for f in result.findings if f.action == "block")
            line = int(key.rpartition(":")[2]) if key != report.path else block.line
            report.records -= 1
            report.skipped += 1
            if len(report.bad) < MAX_BAD_LOCATIONS:
                report.bad.append(f"{report.path}:{line}: safety: {block.rule}")
            return None, False
        if result.findings:
            self.redacted += 1
            return result.text, True
        return text, False

    def summary(self) -> dict[str, Any] | None:
        """The manifest's ``safety`` section (None when the filter is off)."""
        if self.policy is None:
            return None
        return {
            "policy": self.spec,
            "policy_sha256": self.policy.checksum,
            "records_redacted": self.redacted,
            "records_dropped": self.dropped,
            "findings": dict(sorted(self.rules.items())),
        }

    def add_to_manifest(self, manifest: dict[str, Any]) -> None:
        """Adds :meth:`summary` as ``manifest['safety']`` and folds it into the checksum."""
        summary = self.summary()
        if summary is None:
            return
        manifest["safety"] = summary
        body = manifest["checksum"] + json.dumps(summary, sort_keys=True)
        manifest["checksum"] = hashlib.sha256(body.encode()).hexdigest()
