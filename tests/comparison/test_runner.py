"""A full comparison: every row in its own process on the same data, every file written, failures recorded,
--resume keeping what is done, Ctrl-C stopping cleanly, nothing overwritten unasked."""

import json
import os
import signal
import subprocess
import sys
import time

from llm_tuning.cli import main
from llm_tuning.comparison.runner import run_process


def test_every_row_and_file(comparison):
    _, out, report = comparison
    assert report["status"] == "failed"  # BitFit cannot run on Llama; the others completed
    for name in (
        "results.json",
        "report.md",
        "report.html",
        "loss.png",
        "memory.png",
        "speed.png",
        "heldout.png",
        "data/train.jsonl",
        "data/heldout.jsonl",
    ):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in [results["base"], *results["variants"]]] == ["base", "lora", "adapter", "bitfit"]
    assert results["held_out"].startswith("2 records: 10% of the records")
    base, lora, adapter, bitfit = results["base"], *results["variants"]
    assert base["status"] == "completed" and base["val_loss"] > 0 and len(base["answers"]) == 2
    for row in (lora, adapter):
        assert row["status"] == "completed" and row["error"] is None
        assert row["trainable_params"] > 0 and row["peak_memory_bytes"] > 0 and row["estimated_peak_memory_bytes"] > 0
        assert row["tokens_per_s"] > 0 and row["saved_bytes"] > 0 and len(row["loss_history"]) == 4
        assert row["val_loss"] < base["val_loss"]  # trained on the same kind of records: better than the base
        assert {"bleu4", "rougeL", "perplexity", "train_loss"} <= row.keys()
        assert (out / "runs" / row["name"] / "run_summary.json").is_file()
    assert (lora["mergeable"], adapter["mergeable"]) == (True, False)
    assert bitfit["status"] == "failed" and bitfit["error"].startswith("method bitfit has nothing to train")
    # every variant trained on the same records and was measured on the same held-out ones
    configs = [json.loads((out / "jobs" / f"{name}.json").read_text())["config"]["data"] for name in ("lora", "adapter")]
    assert configs[0]["path"] == configs[1]["path"] == str(out / "data" / "train.jsonl")
    assert configs[0]["val_path"] == configs[1]["val_path"] == str(out / "data" / "heldout.jsonl")


def test_cli_exit_status_and_table(comparison, capsys):
    path, out, _ = comparison
    assert main(["compare", str(path), "--output", str(out), "--resume"]) == 1  # BitFit still fails: status 1
    captured = capsys.readouterr()
    assert "lora: complete already, kept (--resume)" in captured.err and "adapter: complete already" in captured.err
    assert "bitfit: training bitfit" in captured.err  # not complete: run again
    table = captured.out.splitlines()
    assert table[1].split()[:4] == ["base", "-", "-", "-"] and table[2].startswith("lora")


def test_resume_keeps_completed_runs_untouched(comparison):
    path, out, _ = comparison
    summary = out / "runs" / "lora" / "run_summary.json"
    before = summary.stat().st_mtime_ns
    assert main(["compare", str(path), "--output", str(out), "--resume", "--json"]) == 1
    assert summary.stat().st_mtime_ns == before


def test_an_existing_report_is_never_overwritten_unasked(comparison, capsys):
    path, out, _ = comparison
    before = (out / "results.json").read_bytes()
    assert main(["compare", str(path), "--output", str(out)]) == 2
    assert "is not empty; pass --overwrite to replace it or --resume to continue it" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


def test_ctrl_c_lets_the_variant_checkpoint_then_writes_what_is_done(comparison, tmp_path):
    path, _, _ = comparison
    out = tmp_path / "out"
    options = ["--output", str(out), "--eval-prompts", "1", "--max-new-tokens", "2"]
    command = [sys.executable, "-m", "llm_tuning", "compare", str(path), "train.max_steps=500", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "runs" / "lora" / "log.jsonl").is_file():  # the first variant is training
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and results["base"]["status"] == "completed"
    lora, adapter, bitfit = results["variants"]
    assert lora["status"] == "interrupted" and any((out / "runs" / "lora").glob("checkpoint-*"))
    assert adapter["status"] == bitfit["status"] == "not run"
    assert "Traceback" not in err


def test_a_killed_row_is_recorded_not_fatal():
    stop: list = []
    code = run_process([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], stop)
    assert code == -signal.SIGKILL
    assert os.name == "posix"
