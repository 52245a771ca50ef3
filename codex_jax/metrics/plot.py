"""Plots train/eval loss, learning rate and tokens/s against step from runs' ``metrics.ndjson``.

usage: codex-jax plot WORKDIR [WORKDIR ...] [--out PNG] [--title TEXT]

Several workdirs are overlaid (one colour per run, labelled by the folder name); a series a run
never logged is left out of its panel. The figure is built without pyplot, so it neither needs a display
nor changes a notebook's backend (a notebook shows the returned figure inline).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from codex_jax.errors import EXIT_USER_ERROR, UserError
from codex_jax.metrics.ndjson import read_ndjson

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
    """``{label: records}`` of each workdir's metrics.ndjson (UserError naming a missing one)."""
    runs = {}
    for workdir in workdirs:
        path = Path(workdir) / "metrics.ndjson"
        if not path.is_file():
            raise UserError(f"{path} not found (is {workdir} a codex_jax workdir?)")
        label = Path(workdir).resolve().name
        while label in runs:
            label += "'"
        runs[label] = read_ndjson(path)
    return runs


def figure(runs: dict[str, list[dict]], title: str = ""):
    """A matplotlib Figure with one panel per entry of PANELS, the runs overlaid."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(PANELS), 3.6), constrained_layout=True)
    axes = fig.subplots(1, len(PANELS))
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
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
    return fig


def plot(workdirs: list[str | Path], out: str | Path | None = None, title: str = ""):
    """The figure of ``workdirs``' metrics, also written to the PNG ``out`` when given."""
    fig = figure(load_runs([str(w) for w in workdirs]), title)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    return fig


def main(argv: list[str]) -> int:
    """``codex-jax plot``: parses arguments, plots, prints the PNG's path."""
    parser = argparse.ArgumentParser(prog="codex-jax plot", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("workdirs", nargs="+", metavar="WORKDIR")
    parser.add_argument("--out", default=None, help="PNG path (default: WORKDIR/metrics.png)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    out = args.out or Path(args.workdirs[0]) / "metrics.png"
    try:
        plot(args.workdirs, out, args.title)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(out)
    return 0
