"""Draws docs/images/layers.png: codex_jax's layers as the import contract in pyproject.toml states them.

One row per layer, top (the console script) to bottom (errors); each package a box, an arrow down the
side: a module imports only from the rows below its own, and boxes side by side never import each other. Run
``python tools/draw_layers.py`` after changing ``[tool.importlinter]``'s layers (needs matplotlib).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs/images/layers.png"
FOLDERS = {
    "train",
    "setup",
    "data",
    "config",
    "interop",
    "tokenizers",
    "safety",
    "compute",
    "models",
    "corpus",
    "metrics",
    "checkpoint",
    "distributed",
    "codeeval",
}  # packages (the rest are modules)
COLOURS = [
    "#e8eaf6",
    "#e3f2fd",
    "#e0f7fa",
    "#e8f5e9",
    "#f1f8e9",
    "#fffde7",
    "#fff3e0",
    "#fbe9e7",
    "#efebe9",
    "#fafafa",
    "#eceff1",
]


def layers() -> list[list[str]]:
    """The contract's layers, top first, each a list of package names."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    contract = next(c for c in contracts if c["type"] == "layers")
    return [[name.strip() for name in layer.split("|")] for layer in contract["layers"]]


def draw(rows: list[list[str]], out: Path) -> None:
    """Draws ``rows`` (top first) into ``out``."""
    width, row_h = 10.0, 0.62
    fig, ax = plt.subplots(figsize=(width, row_h * len(rows) + 0.6), dpi=130)
    ax.set_xlim(0, width)
    ax.set_ylim(-0.2, row_h * len(rows) + 0.2)
    ax.axis("off")
    for i, row in enumerate(rows):
        y = row_h * (len(rows) - 1 - i) + 0.06
        box_w = (width - 1.6) / len(row)
        for j, name in enumerate(row):
            x = 0.7 + j * box_w
            ax.add_patch(
                FancyBboxPatch(
                    (x + 0.05, y),
                    box_w - 0.1,
                    row_h - 0.18,
                    boxstyle="round,pad=0.02",
                    facecolor=COLOURS[i % len(COLOURS)],
                    edgecolor="#607d8b",
                    linewidth=0.8,
                )
            )
            label = f"{name}/" if name in FOLDERS else name
            ax.text(x + box_w / 2, y + 0.22, label, ha="center", va="center", fontsize=9, family="monospace")
    ax.add_patch(
        FancyArrowPatch(
            (width - 0.45, row_h * len(rows) - 0.1),
            (width - 0.45, 0.05),
            arrowstyle="-|>",
            mutation_scale=14,
            color="#37474f",
            linewidth=1.2,
        )
    )
    ax.text(
        width - 0.3,
        row_h * len(rows) / 2,
        "imports run down",
        rotation=270,
        va="center",
        fontsize=8,
        color="#37474f",
    )
    ax.set_title(
        "codex_jax layers (pyproject.toml [tool.importlinter]; checked by lint-imports)", fontsize=10
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    draw(layers(), OUT)
    print(f"wrote {OUT.relative_to(REPO)}")
