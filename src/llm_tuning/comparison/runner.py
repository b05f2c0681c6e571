"""A full comparison: hold out the same records for every variant, measure the base model as it is, then train
and measure each variant in a process of its own, one after another; write results.json and the reports.

The output folder holds `compare.json` (what was compared), `data/` (the training and held-out records every
variant shares), `jobs/` and `results/` (one file per row), `runs/NAME` (each variant's training run), and the
reports. `--resume` skips the rows whose result is complete; Ctrl-C lets the running variant checkpoint and stop,
then writes what is done.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..config.load import build_config
from ..data.records import read_examples
from ..data.split import read_data
from ..errors import UserError
from ..files import folder_written_whole, write_json
from ..rundir import check_output_folder
from ..training.callbacks import interrupt_requests
from .plan import plan_comparison
from .report import write_reports
from .spec import CompareSpec, load_spec
from .worker import BASE_ROW

MARKER = "compare.json"
DEFAULT_HELD_OUT = 0.1


def compare(
    compare_file: str | Path,
    overrides=(),
    output: str | Path | None = None,
    plan: bool = False,
    device: str = "cpu",
    eval_prompts: int = 20,
    max_new_tokens: int = 128,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Run the methods of `compare_file` side by side: with `plan`, what each trains and needs (config.json alone,
    on `device`); otherwise train and measure each into `output` (default runs/compare-STEM)."""
    spec = load_spec(compare_file, overrides)
    if plan:
        return plan_comparison(spec, device)
    if eval_prompts < 1 or max_new_tokens < 1:
        raise UserError("--eval-prompts and --max-new-tokens must be at least 1")
    folder = Path(output) if output else Path("runs") / f"compare-{spec.path.stem}"
    return run_comparison(spec, folder, eval_prompts, max_new_tokens, resume, overwrite)


def run_comparison(
    spec: CompareSpec,
    output: Path,
    eval_prompts: int = 20,
    max_new_tokens: int = 128,
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Train and measure every variant; returns the results (also in OUTPUT/results.json) with `status`:
    completed, failed (some variant failed) or interrupted."""
    if BASE_ROW in {v.name for v in spec.variants}:
        raise UserError(f"variant name '{BASE_ROW}' is taken by the base model's own row; choose another")
    output = output.resolve()
    prepare_output(output, resume, overwrite)
    heldout_note = split_data(spec, output, resume)
    write_json(
        output / MARKER, {"compare_file": str(spec.path), "variants": [v.name for v in spec.variants], "held_out": heldout_note}
    )
    rows = [(BASE_ROW, build_config(spec.base).to_dict())]
    rows += [(v.name, variant_config(v.config.to_dict(), v.name, output)) for v in spec.variants]
    results, interrupted = [], False
    with interrupt_requests() as stop:
        for number, (name, config) in enumerate(rows):
            results.append(run_row(output, name, config, number, len(rows), eval_prompts, max_new_tokens, resume, stop))
            if stop:
                interrupted = True
                break
    done = {r["name"] for r in results}
    results += [
        {"name": name, "status": "not run", "error": "the comparison was interrupted before it"}
        for name, _ in rows
        if name not in done
    ]
    status = "interrupted" if interrupted else "completed" if all(r["status"] == "completed" for r in results) else "failed"
    asked = read_examples(str(output / "data" / "heldout.jsonl")).examples[:eval_prompts]
    prompts = [{"prompt": e.messages[-2]["content"], "reference": e.messages[-1]["content"]} for e in asked]
    report = {
        "status": status,
        "compare_file": str(spec.path),
        "held_out": heldout_note,
        "eval_prompts": eval_prompts,
        "output": str(output),
        "prompts": prompts,
        "base": results[0],
        "variants": results[1:],
    }
    write_reports(output, report)
    return report


def prepare_output(output: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (output / MARKER).is_file():
            raise UserError(f"--resume: {output} holds no comparison to continue ({MARKER} is missing)")
        return
    check_output_folder(
        output,
        "--output",
        overwrite,
        "pass --overwrite to replace it or --resume to continue it",
        MARKER,
        "a comparison written by llm-tuning",
    )
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)


def split_data(spec: CompareSpec, output: Path, resume: bool) -> str:
    """Write the records every variant trains on and the held-out ones to OUTPUT/data; says how they were held out."""
    folder = output / "data"
    if resume and (folder / "heldout.jsonl").is_file():
        return json.loads((output / MARKER).read_text(encoding="utf-8"))["held_out"]
    config = build_config(spec.base)
    note = f"data.val_path {config.data.val_path}" if config.data.val_path else f"data.val_ratio {config.data.val_ratio}"
    if not (config.data.val_path or config.data.val_ratio):
        config.data.val_ratio = DEFAULT_HELD_OUT
        note = f"{DEFAULT_HELD_OUT:.0%} of the records, shuffled with data.seed {config.data.seed} (the base sets no "
        note += "validation data)"
        print(f"compare: holding out {note}", file=sys.stderr)
    train_read, heldout_read = read_data(config)
    with folder_written_whole(folder) as partial:
        write_records(partial / "train.jsonl", train_read.examples)
        write_records(partial / "heldout.jsonl", heldout_read.examples)
    return f"{len(heldout_read.examples)} records: {note}"


def write_records(path: Path, examples) -> None:
    """Examples as `messages` records (a system prompt as the first turn), which every variant reads the same way."""
    with path.open("w", encoding="utf-8") as f:
        for example in examples:
            system = [{"role": "system", "content": example.system}] if example.system else []
            f.write(json.dumps({"messages": system + list(example.messages)}, ensure_ascii=False) + "\n")


def variant_config(config: dict, name: str, output: Path) -> dict:
    """A variant's config as it runs: the shared records, its own folder, validation during training for the curves."""
    data = {
        **config["data"],
        "path": str(output / "data" / "train.jsonl"),
        "val_path": str(output / "data" / "heldout.jsonl"),
        "val_ratio": 0.0,
        "columns": None,
    }
    train = {**config["train"], "output_dir": str(output / "runs" / name), "overwrite": False, "resume": False}
    if train["eval_steps"] is None and train["max_steps"]:
        train["eval_steps"] = max(1, train["max_steps"] // 5)  # five points on each validation curve
    return {**config, "data": data, "train": train}


def run_row(
    output: Path,
    name: str,
    config: dict,
    number: int,
    count: int,
    eval_prompts: int,
    max_new_tokens: int,
    resume: bool,
    stop: list,
) -> dict:
    """One row in its own process; a result that was already complete (with --resume) is kept."""
    result_file = output / "results" / f"{name}.json"
    if resume and result_file.is_file():
        previous = json.loads(result_file.read_text(encoding="utf-8"))
        if previous.get("status") == "completed" and previous.get("config") == config:
            print(f"[{number + 1}/{count}] {name}: complete already, kept (--resume)", file=sys.stderr, flush=True)
            return previous
    shutil.rmtree(output / "runs" / name, ignore_errors=True)  # an incomplete run of ours: start it again
    result_file.unlink(missing_ok=True)
    job = {
        "name": name,
        "config": config,
        "heldout": str(output / "data" / "heldout.jsonl"),
        "prompts": eval_prompts,
        "max_new_tokens": max_new_tokens,
        "result": str(result_file),
    }
    job_file = output / "jobs" / f"{name}.json"
    job_file.parent.mkdir(exist_ok=True)
    result_file.parent.mkdir(exist_ok=True)
    write_json(job_file, job)
    what = "measuring the base model" if name == BASE_ROW else f"training {config['method']['name']}, then measuring"
    print(f"[{number + 1}/{count}] {name}: {what}", file=sys.stderr, flush=True)
    started = time.monotonic()
    code = run_process([sys.executable, "-m", "llm_tuning", "_compare-variant", str(job_file)], stop)
    if result_file.is_file():
        result = json.loads(result_file.read_text(encoding="utf-8"))
    else:
        reason = (
            f"killed by signal {-code}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
            if code < 0
            else f"exit status {code}"
        )
        result = {
            "name": name,
            "status": "failed",
            "error": f"the variant's process ended without a result: {reason}",
            "config": config,
        }
    result["elapsed_s"] = time.monotonic() - started
    ending = "done" if result["status"] == "completed" else f"{result['status']}: {result.get('error') or ''}"
    print(f"[{number + 1}/{count}] {name}: {ending} in {result['elapsed_s']:.0f} s", file=sys.stderr, flush=True)
    return result


def run_process(command: list[str], stop: list) -> int:
    """Run a row's process in its own session, so that a Ctrl-C at the terminal reaches this process only, which
    passes one SIGINT on: the row checkpoints and stops. A second Ctrl-C here aborts it."""
    # the row's own output (its progress, its trainable-parameters line) goes to this process's stderr (file
    # descriptor 2): stdout is the report's
    process = subprocess.Popen(command, start_new_session=True, stdout=2)
    forwarded = False
    try:
        while process.poll() is None:
            if stop and not forwarded:
                process.send_signal(signal.SIGINT)
                forwarded = True
            time.sleep(0.2)
    except KeyboardInterrupt:
        process.kill()
        process.wait()
        raise
    return process.returncode
