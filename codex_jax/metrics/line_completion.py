"""Line completion: given the start of a held-out function, does greedy generation reproduce its
next line? The prompts come from the held-out windows; generated code is compared as text, never
executed."""

from __future__ import annotations

import re

import numpy as np

# Anchored at the start of one line (re.match): constant work per line, no backtracking blow-up.
_DEF = re.compile(r"[ \t]{0,64}(?:async[ \t]{1,8})?def[ \t]{1,8}\w")
MAX_LINE_CHARS = 200


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _segments(window: list[int], eos_id: int) -> list[tuple[list[int], bool, bool]]:
    """``(ids, starts_mid_document, cut_at_end)`` of the documents packed into one window."""
    parts, start = [], 0
    for i, token in enumerate(window):
        if token == eos_id:
            parts.append((window[start:i], start == 0, False))
            start = i + 1
    parts.append((window[start:], start == 0, True))
    return [p for p in parts if p[0]]


def samples_from_text(text: str, starts_mid: bool, cut: bool) -> list[tuple[str, str]]:
    """``(prompt, next line)`` pairs: the prompt ends with a one-line ``def ...:`` and the next
    line is its first, non-blank, more indented body line."""
    lines = text.splitlines(keepends=True)
    first, last = (1 if starts_mid else 0), (len(lines) - 1 if cut else len(lines))
    out = []
    for i in range(first, last - 1):
        line, nxt = lines[i], lines[i + 1]
        if not (_DEF.match(line) and line.rstrip().endswith(":") and line.endswith("\n")):
            continue
        if nxt.strip() and _indent(nxt) > _indent(line) and len(nxt) <= MAX_LINE_CHARS:
            out.append(("".join(lines[first : i + 1]), nxt.rstrip("\n").rstrip()))
    return out


def find_samples(tokenizer, windows: np.ndarray, count: int) -> list[tuple[str, str]]:
    """Up to ``count`` samples, at most one per window, from windows spread over the split."""
    found: list[tuple[str, str]] = []
    for index in np.unique(np.linspace(0, len(windows) - 1, min(len(windows), 8 * count)).round()):
        window = np.asarray(windows[int(index)]).tolist()
        for ids, starts_mid, cut in _segments(window, tokenizer.eos_id):
            pairs = samples_from_text(tokenizer.decode(ids), starts_mid, cut)
            if pairs:
                found.append(pairs[0])
                break
        if len(found) == count:
            break
    return found


def first_line(text: str) -> str:
    """The first line of ``text`` without trailing whitespace."""
    return text.split("\n", 1)[0].rstrip()


def line_completion(ctx) -> float | None:
    """Fraction of samples whose greedy completion's first line equals the held-out next line
    (None when the held-out windows hold no function); the count goes to ``ctx.details``."""
    samples = find_samples(ctx.tokenizer, ctx.eval_windows, ctx.line_completion_samples)
    ctx.details["line_completion_samples"] = len(samples)
    if not samples:
        return None
    max_new = max(1, min(ctx.line_completion_max_tokens, ctx.model.cfg.max_seq_len // 2))
    limit = ctx.model.cfg.max_seq_len - max_new + 1
    prompts = [ctx.tokenizer.encode(prompt)[-limit:] for prompt, _ in samples]
    outputs = ctx.greedy(prompts, max_new)
    hits = [
        first_line(ctx.tokenizer.decode(out)) == target
        for out, (_, target) in zip(outputs, samples, strict=True)
    ]
    return sum(hits) / len(hits)
