"""Charts as PNG files: the loss curves of one run or of several side by side, and bar charts of one figure per
run. `llm-tuning train` draws its own loss.png with them; `llm-tuning compare` draws its report's charts."""

from __future__ import annotations

import io
from pathlib import Path

from .files import write_file_whole

# one color per run, the same in every chart of a report (matplotlib's tab10)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
SIZE = (8, 4.5)  # inches, at 100 dots per inch


def color(index: int) -> str:
    return COLORS[index % len(COLORS)]


def loss_chart(runs: list[dict], path: Path, title: str = "loss") -> Path:
    """Training loss (solid) and validation loss (dashed, dots) against the step, one color per run. Each run is
    {"name", "train": [(step, loss), ...], "validation": [(step, loss), ...]}."""
    figure, axes = _figure()
    for index, run in enumerate(runs):
        if run["train"]:
            steps, losses = zip(*run["train"])
            axes.plot(steps, losses, color=color(index), label=f"{run['name']} (train)")
        if run.get("validation"):
            steps, losses = zip(*run["validation"])
            axes.plot(steps, losses, color=color(index), linestyle="--", marker="o", label=f"{run['name']} (validation)")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (cross-entropy per trained token)")
    axes.set_title(title)
    axes.legend(fontsize="small", ncol=2 if len(runs) > 4 else 1)
    return _save(figure, path)


def bar_chart(names: list[str], series: dict[str, list[float | None]], path: Path, title: str, unit: str) -> Path:
    """Grouped bars: for each name, one bar per series (e.g. {"estimated": [...], "measured": [...]}); a None
    value leaves its bar out."""
    figure, axes = _figure()
    width = 0.8 / max(len(series), 1)
    for offset, (label, values) in enumerate(series.items()):
        xs = [i + (offset - (len(series) - 1) / 2) * width for i in range(len(names))]
        shown = [(x, v) for x, v in zip(xs, values) if v is not None]
        if shown:
            bars = axes.bar([x for x, _ in shown], [v for _, v in shown], width=width, label=label, color=color(offset))
            axes.bar_label(bars, fmt="{:,.4g}", fontsize="x-small")  # the figure itself, not only the bar's height
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_ylabel(unit)
    axes.set_title(title)
    if len(series) > 1:
        axes.legend(fontsize="small")
    return _save(figure, path)


def _figure():
    # slow to import (about a second), and only charts need it; the Figure API keeps pyplot's global state out
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE, dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.grid(alpha=0.3)
    return figure, axes


def _save(figure, path: Path) -> Path:
    image = io.BytesIO()
    figure.savefig(image, format="png")
    write_file_whole(path, image.getvalue())
    return path
