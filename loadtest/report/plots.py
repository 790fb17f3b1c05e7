"""The report's plots: bars with min–max whiskers, drawn with matplotlib (Agg: no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from loadtest.report.values import Stat

COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")


def bars(
    ax: Axes,
    labels: Sequence[str],
    values: Sequence[Stat],
    title: str,
    ylabel: str,
    log: bool = False,
    value_fmt: str = "{:.3g}",
) -> None:
    positions = list(range(len(labels)))
    heights = [v.median for v in values]
    low = [v.error_bar()[0] for v in values]
    high = [v.error_bar()[1] for v in values]
    colours = [COLOURS[i % len(COLOURS)] for i in positions]
    spread = [low, high] if any(low) or any(high) else None
    ax.bar(positions, heights, color=colours, yerr=spread, capsize=4)
    ax.set_xticks(positions, list(labels))
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if log and all(h > 0 for h in heights):
        ax.set_yscale("log")
    for x, h, up in zip(positions, heights, high, strict=True):
        ax.annotate(
            value_fmt.format(h),
            (x, h + up),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    ax.grid(axis="y", alpha=0.3)


def grouped(
    ax: Axes,
    groups: Sequence[str],
    series: dict[str, Sequence[Stat]],
    title: str,
    ylabel: str,
    log: bool = False,
) -> None:
    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        xs = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
        errors = [[v.error_bar()[0] for v in values], [v.error_bar()[1] for v in values]]
        ax.bar(
            xs,
            [v.median for v in values],
            width,
            yerr=errors if any(any(side) for side in errors) else None,
            capsize=3,
            label=name,
            color=COLOURS[index % len(COLOURS)],
        )
    ax.set_xticks(list(range(len(groups))), list(groups))
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def save_figure(figure: Figure, out_dir: Path, name: str, caption: str) -> str:
    figure.suptitle(caption, fontsize=9, y=0.02, va="bottom", color="#555555")
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    figure.savefig(path, dpi=100, metadata={"Software": None})
    return f"plots/{path.name}"


def caption(data: dict[str, Any]) -> str:
    rounds = data.get("rounds")
    spread = f"median of {rounds} rounds, whiskers min–max" if rounds else "single run"
    return f"{data.get('machine', 'machine not recorded')}; {spread}"
