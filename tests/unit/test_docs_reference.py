"""The generated reference pages (docs/reference/) match the code: a config key or a command added without
regenerating them fails here. Regenerate with ``python tools/gen_config_reference.py``."""

import importlib.util
from pathlib import Path

import pytest

from codex_jax import cli
from codex_jax.config.schema import SCHEMA

REPO = Path(__file__).resolve().parents[2]
REGENERATE = "the docs' generated reference is stale: run `python tools/gen_config_reference.py`"


@pytest.fixture(scope="module")
def gen():
    path = REPO / "tools/gen_config_reference.py"
    spec = importlib.util.spec_from_file_location("gen_config_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reference_pages_are_what_the_code_generates(gen):
    pages = gen.pages()
    assert {p.relative_to(REPO).as_posix() for p in pages} == {
        "docs/reference/config.md",
        "docs/reference/commands.md",
    }
    for path, text in pages.items():
        assert path.is_file() and path.read_text(encoding="utf-8") == text, f"{path.name}: {REGENERATE}"


def test_every_key_and_command_is_on_its_page(gen):
    config, commands = gen.config_page(), gen.commands_page()
    for key, (default, _) in SCHEMA.items():
        assert f"| `{key}` | `{repr(default).replace('|', chr(92) + '|')}` |" in config, key
    for command in [*cli.RUN_MODES, *cli.SUBCOMMANDS]:
        assert f"`codex-jax {command}`" in commands, command
    for sub in ("train", "encode", "decode", "inspect", "export"):  # argparse sub-commands, found in --help
        assert f"### `codex-jax tokenizer {sub}`" in commands
    assert "--vocab-size VOCAB_SIZE" in commands and "--topology: TPU topology" in commands


def test_a_new_key_or_command_changes_the_pages(gen, monkeypatch):
    config, commands = gen.config_page(), gen.commands_page()
    monkeypatch.setitem(SCHEMA, "train.new_knob", (3, "A key added without regenerating."))
    monkeypatch.setitem(cli.SUBCOMMANDS, "frobnicate", lambda argv: print("usage: codex-jax frobnicate") or 0)
    assert gen.config_page() != config and "`train.new_knob` | `3`" in gen.config_page()
    assert gen.commands_page() != commands and "usage: codex-jax frobnicate" in gen.commands_page()


def test_layer_drawing_has_a_row_per_layer_of_the_import_contract(tmp_path):
    spec = importlib.util.spec_from_file_location("draw_layers", REPO / "tools/draw_layers.py")
    draw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(draw)
    rows = draw.layers()
    assert rows[0] == ["cli"] and rows[-1] == ["errors"] and ["files", "plugins", "runtime"] in rows
    draw.draw(rows, tmp_path / "layers.png")
    assert (tmp_path / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (REPO / "docs/images/layers.png").is_file()
