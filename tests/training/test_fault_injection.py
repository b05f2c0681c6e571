"""Fault injection: `llm-tuning train` killed with SIGKILL at chosen moments (helpers.KILL_MOMENTS: between steps,
while a checkpoint is written, while the results are saved ...), resumed, possibly several times, ends with the
same trained weights, loss history, validation and log as the run never interrupted; no kill leaves a damaged
checkpoint behind. A full disk stops the run with a one-line error and the checkpoint before it resumes.

Each run is a child process forked from a server that imported llm-tuning once (helpers.TrainingProcesses).
benchmarks/kill_resume.py does the same with many kills at random instants, from outside the process."""

import json
import random
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import DISK_FULL, DISK_FULL_BYTES, KILL_MOMENTS, run_config, torch_equal
from llm_tuning.files import manifest_problem
from llm_tuning.rundir import checkpoint_folders, last_checkpoint

FINAL_MOMENTS = ("final-weights", "summary")
CHECKPOINT_MOMENTS = ("checkpoint-write", "checkpoint-rename", "rotation")


def variant_config(name: str, tiny_models, records, output_dir) -> dict:
    """llama: packed rows, gradient accumulation, validation every 4 steps; bloom (no position ids): unpacked
    batches grouped by length. Both with LoRA dropout, a checkpoint every 3 steps and the loss logged every 2, so
    that most resumes fall between two logging steps and in the middle of an epoch."""
    train = {"save_steps": 3, "logging_steps": 2, "save_total_limit": 2}
    if name == "llama":
        config = run_config(tiny_models["llama"], records, output_dir, data={"val_ratio": 0.25, "max_length": 32})
        train |= {"max_steps": 10, "batch_size": 1, "gradient_accumulation_steps": 2, "eval_steps": 4}
        config["method"] |= {"r": 4, "lora_alpha": 8}
    else:
        config = run_config(tiny_models["bloom"], records, output_dir, data={"val_ratio": 0.25})
        train |= {"max_steps": 9, "batch_size": 2}
        config["method"] = {"name": "lora", "r": 4, "lora_alpha": 8}
    config["method"]["lora_dropout"] = 0.1
    config["train"].update(train)
    return config


def kill_schedule(seed: int, moments: tuple[str, ...], train: dict) -> list[tuple[str, int | None]]:
    """A step for each moment, drawn with `seed`, in the order a run reaches them: the kills' steps strictly
    increase, so that each one is reached after the resume that follows the one before."""
    rng = random.Random(seed)
    last, save, log = train["max_steps"], train["save_steps"], train["logging_steps"]
    while True:
        kills = []
        for moment in moments:
            if moment in FINAL_MOMENTS:
                kills.append((moment, None))
            elif moment in CHECKPOINT_MOMENTS:
                kills.append((moment, rng.choice(range(save, last + 1, save))))
            elif moment == "log":
                kills.append((moment, rng.choice(range(log, last + 1, log))))
            else:
                kills.append((moment, rng.randint(1, last)))
        kills.sort(key=lambda kill: last + 1 if kill[1] is None else kill[1])
        steps = [step for _, step in kills if step is not None]
        if len(set(steps)) == len(steps):
            return kills


def relaunch(config: dict) -> dict:
    """The config of the next launch: resume when a complete checkpoint exists, else start again."""
    resume = last_checkpoint(Path(config["train"]["output_dir"])) is not None
    return {**config, "train": {**config["train"], "resume": resume, "overwrite": not resume}}


def assert_checkpoints_whole(output_dir) -> None:
    for folder in checkpoint_folders(output_dir):
        assert manifest_problem(folder) is None, folder


def logged(output_dir) -> list[dict]:
    """The loss and validation lines of log.jsonl, without their timings."""
    lines = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in line.items() if "runtime" not in k and "per_second" not in k}
        for line in lines
        if "loss" in line or "eval_loss" in line
    ]


def assert_same_result(output_dir, reference) -> None:
    weights, expected = load_file(output_dir / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert weights.keys() == expected.keys()
    assert all(torch_equal(weights[name], expected[name]) for name in weights), "trained weights differ"
    summary, expected_summary = (json.loads((d / "run_summary.json").read_text()) for d in (output_dir, reference))
    assert summary["steps"] == expected_summary["steps"]
    assert summary["loss_history"] == expected_summary["loss_history"]
    assert summary["validation"] == expected_summary["validation"]
    assert logged(output_dir) == logged(reference)
    assert manifest_problem(output_dir) is None


@pytest.fixture(scope="module")
def references(training_processes, tiny_models, many_records_path, tmp_path_factory):
    """The uninterrupted run of each variant, trained in a child process as the killed ones are."""
    folders = {}
    for name in ("llama", "bloom"):
        folders[name] = tmp_path_factory.mktemp("reference") / name
        status, printed = training_processes.run(variant_config(name, tiny_models, many_records_path, folders[name]))
        assert status == 0, printed[-3000:]
    return folders


# Fixed seeds, and moments shared out so that CI kills at every one of them.
CASES = [
    ("llama", 0, ("checkpoint-write", "step")),
    ("bloom", 1, ("log", "checkpoint-rename", "final-weights")),
    ("llama", 2, ("rotation", "summary")),
]


@pytest.mark.parametrize("variant, seed, moments", CASES, ids=[f"{v}-seed{s}" for v, s, _ in CASES])
def test_killed_and_resumed_run_ends_bit_identical(
    training_processes, references, tiny_models, many_records_path, tmp_path, variant, seed, moments
):
    config = variant_config(variant, tiny_models, many_records_path, tmp_path / "run")
    kills = kill_schedule(seed, moments, config["train"])
    for kill in kills:
        status, printed = training_processes.run(relaunch(config), kill)
        assert status == -signal.SIGKILL, f"not killed at {kill}:\n{printed[-3000:]}"
        assert_checkpoints_whole(tmp_path / "run")
        assert "skipping" not in printed  # no kill leaves a damaged checkpoint to skip
    status, printed = training_processes.run(relaunch(config))
    assert status == 0, printed[-3000:]
    assert "skipping" not in printed
    assert_same_result(tmp_path / "run", references[variant])


def test_every_moment_is_killed_at_in_ci():
    assert {moment for _, _, moments in CASES for moment in moments} == set(KILL_MOMENTS)


def test_a_full_disk_stops_with_one_line_and_the_checkpoint_before_resumes(
    training_processes, references, tiny_models, many_records_path, tmp_path
):
    out = tmp_path / "run"
    config = variant_config("llama", tiny_models, many_records_path, out)
    status, printed = training_processes.run(relaunch(config), (DISK_FULL, 3))
    assert status == 2, printed[-3000:]
    errors = [line for line in printed.splitlines() if line.startswith("error:")]
    limit = f"File too large (the file size limit, ulimit -f, is {DISK_FULL_BYTES} bytes)"
    assert errors == [f"error: cannot write {out}/checkpoint-6: {limit}"]
    assert "Traceback" not in printed
    assert [p.name for p in out.iterdir() if p.name.startswith("checkpoint")] == ["checkpoint-3"]  # no .partial left
    assert_checkpoints_whole(out)
    status, printed = training_processes.run(relaunch(config))
    assert status == 0, printed[-3000:]
    assert_same_result(out, references["llama"])
