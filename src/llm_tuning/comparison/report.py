"""What a comparison tells, as files: results.json (every figure), report.md (the tables), report.html (one
self-contained page a browser opens offline: the tables, the charts embedded, answers side by side) and the charts
as PNGs beside them."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..files import write_file_whole, write_json
from ..plots import bar_chart, loss_chart
from ..training.summary import curves

RESULTS_FILE = "results.json"
ANSWERS_SHOWN = 5
MIB = 2**20
# (title, key, format) of the table's columns after the name
COLUMNS = (
    ("method", "method", "{}"),
    ("trainable params", "trainable_params", "{:,}"),
    ("trainable %", "trainable_percent", "{:.4f}"),
    ("est. peak MiB", "estimated_peak_memory_bytes", "mib"),
    ("peak MiB", "peak_memory_bytes", "mib"),
    ("tokens/s", "tokens_per_s", "{:.1f}"),
    ("train s", "train_runtime_s", "{:.0f}"),
    ("train loss", "train_loss", "{:.4f}"),
    ("held-out loss", "val_loss", "{:.4f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("BLEU-4", "bleu4", "{:.2f}"),
    ("ROUGE-L", "rougeL", "{:.2f}"),
    ("saved MiB", "saved_bytes", "mib2"),
    ("merges", "mergeable", "yes/no"),
)


def write_reports(output: Path, report: dict) -> None:
    rows = [report["base"], *report["variants"]]
    charts = draw_charts(output, rows)
    write_json(output / RESULTS_FILE, report)
    write_file_whole(output / "report.md", markdown(report, rows, charts))
    write_file_whole(output / "report.html", page(report, rows, charts))


def cell(row: dict, key: str, style: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if style in ("mib", "mib2"):
        return f"{value / MIB:,.{0 if style == 'mib' else 2}f}"
    if style == "yes/no":
        return "yes" if value else "no"
    return style.format(value)


def draw_charts(output: Path, rows: list[dict]) -> dict[str, Path]:
    """The charts of the rows that have the figures; name -> PNG path."""
    trained = [r for r in rows[1:] if r.get("loss_history")]
    measured = [r for r in rows if r.get("val_loss") is not None]
    names = [r["name"] for r in rows[1:] if r["status"] == "completed"]
    done = [r for r in rows[1:] if r["status"] == "completed"]
    charts = {}
    if trained:
        runs = [
            curves({"loss_history": r["loss_history"], "validation": {"history": r.get("val_history")}}, r["name"])
            for r in trained
        ]
        charts["loss curves"] = loss_chart(runs, output / "loss.png", title="training and validation loss")
    if done:
        memory = {
            "estimated": [r["estimated_peak_memory_bytes"] / MIB for r in done],
            "measured": [r["peak_memory_bytes"] / MIB for r in done],
        }
        charts["peak memory"] = bar_chart(names, memory, output / "memory.png", "peak memory, estimated and measured", "MiB")
        speed = {"tokens/s": [r["tokens_per_s"] for r in done]}
        charts["training speed"] = bar_chart(
            names, speed, output / "speed.png", "training speed (non-padding tokens)", "tokens/s"
        )
    if measured:
        losses = {"held-out loss": [r["val_loss"] for r in measured]}
        charts["held-out loss"] = bar_chart(
            [r["name"] for r in measured],
            losses,
            output / "heldout.png",
            "held-out loss per trained token (the base model first)",
            "cross-entropy",
        )
    return charts


def markdown(report: dict, rows: list[dict], charts: dict[str, Path]) -> str:
    lines = [
        f"# Comparison: {report['compare_file']}",
        "",
        f"Status: {report['status']}. Held out: {report['held_out']}. Text scores on the first {report['eval_prompts']} "
        "held-out prompts, greedy answers.",
        "",
        "| name | " + " | ".join(title for title, _, _ in COLUMNS) + " | error |",
        "| --- |" + " ---: |" * len(COLUMNS) + " --- |",
    ]
    for row in rows:
        cells = [cell(row, key, style) for _, key, style in COLUMNS]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {(row.get('error') or '').replace('|', '/')} |")
    lines.append("")
    lines += [f"![{name}]({path.name})" for name, path in charts.items()]
    return "\n".join(lines) + "\n"


def page(report: dict, rows: list[dict], charts: dict[str, Path]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(title)}</th>" for title, _, _ in COLUMNS)
    body = "".join(
        f"<tr class='{e(row['status'])}'><td>{e(row['name'])}</td>"
        + "".join(f"<td>{e(cell(row, key, style))}</td>" for _, key, style in COLUMNS)
        + f"<td>{e(row.get('error') or '')}</td></tr>"
        for row in rows
    )
    images = "".join(
        f"<figure><img alt='{e(name)}' src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"
        f"<figcaption>{e(name)}</figcaption></figure>"
        for name, path in charts.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>llm-tuning comparison</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }}
td:first-child, th:first-child, td:last-child {{ text-align: left; }} tr.failed td, tr.interrupted td {{ color: #a33; }}
.answers td {{ text-align: left; white-space: pre-wrap; max-width: 50em; }} figure {{ display: inline-block; margin: 0.5em; }}
</style></head><body>
<h1>Comparison: {e(report["compare_file"])}</h1>
<p>Status: {e(report["status"])}. Held out: {e(report["held_out"])}. Text scores on the first {report["eval_prompts"]}
held-out prompts, greedy answers. The base model without training is the first row.</p>
<table><tr><th>name</th>{head}<th>error</th></tr>{body}</table>
{images}
<h2>Answers</h2>
{answers(rows, report.get("prompts") or [])}
</body></html>
"""


def answers(rows: list[dict], prompts: list[dict]) -> str:
    e = html.escape
    parts = []
    for index, prompt in enumerate(prompts[:ANSWERS_SHOWN]):
        lines = "".join(
            f"<tr><td>{e(row['name'])}</td><td>{e(row['answers'][index])}</td></tr>"
            for row in rows
            if len(row.get("answers") or []) > index
        )
        parts.append(
            f"<h3>{e(prompt['prompt'])}</h3><table class='answers'><tr><td>reference</td><td>{e(prompt['reference'])}</td></tr>"
            f"{lines}</table>"
        )
    return "".join(parts)
