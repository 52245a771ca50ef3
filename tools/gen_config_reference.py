"""Rewrites the config reference table in README.md from codex_jax.config.schema.SCHEMA."""

import re
from pathlib import Path

from codex_jax.config.schema import reference_table

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def main() -> None:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    table = f"{START}\n{reference_table()}\n{END}"
    readme.write_text(pattern.sub(lambda _: table, text))  # a function: backslashes in the table stay


if __name__ == "__main__":
    main()
