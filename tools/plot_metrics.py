"""Plots train/eval loss, learning rate and tokens/s against step from runs' ``metrics.ndjson``.

usage: python tools/plot_metrics.py WORKDIR [WORKDIR ...] [--out PNG] [--title TEXT]

Several workdirs are overlaid (one colour per run, labelled by the folder name); a series a run
never logged is left out of its panel. Writes a PNG with matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PANELS = (  # (title, y label, [(split, metric, line style)])
    ("loss", "nats / token", [("train", "loss", "-"), ("eval", "loss", "--")]),
    ("learning rate", "", [("train", "learning_rate", "-")]),
    ("throughput", "tokens / s", [("train", "tokens_per_second", "-")]),
)


def series(records: list[dict], split: str, metric: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of one scalar; the last line for a step wins (resumed runs)."""
    points = {
        r["step"]: r[metric]
        for r in records
        if r.get("split") == split and "kind" not in r and metric in r and r.get("step") is not None
    }
    steps = sorted(points)
    return steps, [float(points[s]) for s in steps]


def load_runs(workdirs: list[str]) -> dict[str, list[dict]]:
    """``{label: records}`` of each workdir's metrics.ndjson (SystemExit naming a missing one)."""
    from codex_jax.metrics.ndjson import read_ndjson

    runs = {}
    for workdir in workdirs:
        path = Path(workdir) / "metrics.ndjson"
        if not path.is_file():
            sys.exit(f"error: {path} not found (is {workdir} a codex_jax workdir?)")
        label = Path(workdir).resolve().name
        while label in runs:
            label += "'"
        runs[label] = read_ndjson(path)
    return runs


def plot(runs: dict[str, list[dict]], out: str | Path, title: str = "") -> Path:
    """Draws the panels for ``runs`` into the PNG ``out``; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = (5 * len(PANELS), 3.6)
    fig, axes = plt.subplots(1, len(PANELS), figsize=size, constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, ylabel, lines) in zip(axes, PANELS, strict=True):
        for i, (label, records) in enumerate(runs.items()):
            for split, metric, style in lines:
                steps, values = series(records, split, metric)
                if steps:
                    suffix = f" ({split})" if len(lines) > 1 else ""
                    ax.plot(
                        steps,
                        values,
                        style,
                        color=colours[i % len(colours)],
                        marker="o" if len(steps) < 3 else None,
                        label=f"{label}{suffix}",
                    )
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: parses arguments, plots, prints the PNG's path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
    parser.add_argument("--out", default=None, help="PNG path (default: WORKDIR/metrics.png)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    out = args.out or Path(args.workdirs[0]) / "metrics.png"
    print(plot(load_runs(args.workdirs), out, args.title))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
    main()
