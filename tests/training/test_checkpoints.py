"""Checkpoints written whole and checked on resume: a damaged or unsafe checkpoint is skipped with a line naming
what is wrong, a resume continues exactly (the same weights, losses and log as a run never stopped), and a
config or data that would train something else is refused. Kills at every moment: test_fault_injection.py."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from helpers import run_config, torch_equal
from llm_tuning import train
from llm_tuning.errors import UserError
from llm_tuning.files import MANIFEST_FILE, manifest_problem, write_manifest
from llm_tuning.speed.cpu_matmul import PARTS, everywhere
from llm_tuning.training import run
from llm_tuning.training.checkpoints import SeededLengthGroupedSampler, pickle_problem, rotate_checkpoints


def lora_config(model, data, output_dir, **train_settings) -> dict:
    """LoRA with dropout on 12 records (2 steps an epoch), a checkpoint every 3 steps, the loss logged every 2."""
    config = run_config(model, data, output_dir, train={"save_steps": 3, "logging_steps": 2, "save_total_limit": None})
    config["method"] |= {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1}
    config["train"].update(train_settings)
    return config


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama, many_records_path, tmp_path_factory):
    """12 steps, never stopped."""
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(lora_config(tiny_llama, many_records_path, output_dir, max_steps=12))
    return output_dir


@pytest.fixture(scope="module")
def stopped(tiny_llama, many_records_path, tmp_path_factory):
    """The same run stopped after 9 steps, with checkpoints 3, 6 and 9."""
    output_dir = tmp_path_factory.mktemp("stopped") / "run"
    train(lora_config(tiny_llama, many_records_path, output_dir, max_steps=9))
    return output_dir


@pytest.fixture
def resumable(stopped, tmp_path):
    """A copy of the stopped run to resume (and damage)."""
    return shutil.copytree(stopped, tmp_path / "run")


def resume(tiny_llama, many_records_path, output_dir) -> dict:
    return train(lora_config(tiny_llama, many_records_path, output_dir, max_steps=12, resume=True))


def assert_same_run(output_dir, reference) -> None:
    weights, expected = (load_file(d / "adapter_model.safetensors") for d in (output_dir, reference))
    assert weights.keys() == expected.keys() and all(torch_equal(weights[k], expected[k]) for k in weights)
    summary, expected_summary = (json.loads((d / "run_summary.json").read_text()) for d in (output_dir, reference))
    assert summary["loss_history"] == expected_summary["loss_history"]
    log, expected_log = (
        [{k: v for k, v in json.loads(line).items() if "runtime" not in k and "per_second" not in k} for line in lines]
        for lines in ((d / "log.jsonl").read_text().splitlines() for d in (output_dir, reference))
    )
    assert [e for e in log if "loss" in e] == [e for e in expected_log if "loss" in e]


def test_a_checkpoint_is_complete_with_its_manifest_and_keeps_no_pickled_arguments(stopped):
    checkpoint = stopped / "checkpoint-9"
    assert manifest_problem(checkpoint) is None
    names = sorted(p.name for p in checkpoint.iterdir())
    assert {MANIFEST_FILE, "llm_tuning_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth"} <= set(names)
    assert "training_args.bin" not in names
    assert not [p for p in stopped.iterdir() if "partial" in p.name]
    assert manifest_problem(stopped) is None  # the run's own manifest over its results
    assert json.loads((checkpoint / "llm_tuning_state.json").read_text())["last_logged_step"] == 8


def test_resumed_between_two_logging_steps_it_logs_and_trains_as_if_never_stopped(
    resumable, uninterrupted, tiny_llama, many_records_path, capsys
):
    summary = resume(tiny_llama, many_records_path, resumable)  # from checkpoint-9; the loss is logged at 8 and 10
    assert summary["resumed_from"] == str(resumable / "checkpoint-9") and summary["steps"] == 12
    assert "skipping" not in capsys.readouterr().err
    assert_same_run(resumable, uninterrupted)


def torch_save_that_creates(marker):
    """An object whose pickle, when loaded unsafely, creates `marker`."""

    class CreatesAFile:
        def __reduce__(self):
            return open, (str(marker), "w")

    return CreatesAFile()


def damage(checkpoint, how: str, tmp_path) -> str:
    """Damage `checkpoint` as `how` says; returns what the skip message must say."""
    if how == "truncated-weights":
        weights = checkpoint / "adapter_model.safetensors"
        size = weights.stat().st_size
        with open(weights, "r+b") as f:
            f.truncate(size - 100)
        return f"adapter_model.safetensors has {size - 100} bytes instead of {size} (truncated or changed)"
    if how == "missing-optimizer":
        (checkpoint / "optimizer.pt").unlink()
        return "optimizer.pt is missing"
    if how == "deleted-manifest":
        (checkpoint / MANIFEST_FILE).unlink()
        return "no manifest.json (it was not written whole)"
    # an optimizer state replaced by a pickle that runs code, with the manifest rewritten to match it
    torch.save(torch_save_that_creates(tmp_path / "created-by-the-pickle"), checkpoint / "optimizer.pt")
    write_manifest(checkpoint)
    return "optimizer.pt holds Python objects other than tensors; refused, not loaded ("


@pytest.mark.parametrize("how", ["truncated-weights", "missing-optimizer", "deleted-manifest", "unsafe-pickle"])
def test_a_damaged_checkpoint_is_skipped_with_its_problem_and_the_one_before_is_used(
    resumable, uninterrupted, tiny_llama, many_records_path, tmp_path, capsys, how
):
    problem = damage(resumable / "checkpoint-9", how, tmp_path)
    summary = resume(tiny_llama, many_records_path, resumable)
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipping")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipping {resumable / 'checkpoint-9'}: {problem}")
    assert summary["resumed_from"] == str(resumable / "checkpoint-6")
    assert not (tmp_path / "created-by-the-pickle").exists()
    assert manifest_problem(resumable / "checkpoint-9") is None  # written again, whole
    assert_same_run(resumable, uninterrupted)


def test_the_unsafe_pickle_would_have_run_code(tmp_path):
    path, marker = tmp_path / "optimizer.pt", tmp_path / "created"
    torch.save(torch_save_that_creates(marker), path)
    assert pickle_problem(path).startswith("optimizer.pt holds Python objects other than tensors; refused, not loaded")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what an unsafe loader does
    assert marker.exists()


def test_with_no_complete_checkpoint_resume_is_an_error(resumable, tiny_llama, many_records_path, capsys):
    for checkpoint in ("checkpoint-3", "checkpoint-6", "checkpoint-9"):
        (resumable / checkpoint / MANIFEST_FILE).unlink()
    with pytest.raises(UserError, match=f"train.resume is true but no checkpoint in {resumable} is complete"):
        resume(tiny_llama, many_records_path, resumable)
    assert capsys.readouterr().err.count("skipping") == 3


def test_a_config_that_trains_something_else_is_refused_and_nothing_is_touched(resumable, tiny_llama, many_records_path):
    config = lora_config(tiny_llama, many_records_path, resumable, max_steps=12, resume=True, learning_rate=0.02)
    config["method"]["r"] = 16
    with pytest.raises(
        UserError, match=r"train.resume: this config changes .*method.r: 4 -> 16; train.learning_rate: 0.01 -> 0.02\)"
    ):
        train(config)
    assert manifest_problem(resumable) is None  # the finished run's results are still whole


def test_changed_data_is_refused(tiny_llama, records_path, tmp_path):
    data = tmp_path / "data.jsonl"
    shutil.copy(records_path, data)
    config = run_config(tiny_llama, data, tmp_path / "run", train={"max_steps": 1, "save_steps": 1})
    train(config)
    data.write_text(data.read_text().replace("bonjour", "salut"))
    config["train"].update(resume=True, max_steps=2)
    with pytest.raises(UserError, match="the training data differs from what the run in .* trained on"):
        train(config)


def test_the_libraries_chosen_to_multiply_at_the_start_are_kept_on_resume(tiny_llama, records_path, tmp_path, monkeypatch):
    config = run_config(tiny_llama, records_path, tmp_path / "run", train={"max_steps": 1, "save_steps": 1})
    chosen = train(config)["speed_choices"]["cpu_matmul"]
    first = {part: chosen[part] for part in PARTS}
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())
    assert record["cpu_matmul"] == first and record["data_sha256"] and "allocator" in record
    other = {part: "torch" if library == "onednn" else "onednn" for part, library in first.items()}
    monkeypatch.setattr(run, "cpu_matmul_choice", lambda *args: {**other, "why": "x"})  # what measuring would choose now
    config["train"].update(resume=True, max_steps=2)
    resumed = train(config)["speed_choices"]["cpu_matmul"]
    assert resumed == {**first, "why": "as when the run started (run_record.json)"}


def test_a_run_recorded_with_one_library_resumes_with_it_for_every_part(tiny_llama, records_path, tmp_path, monkeypatch):
    config = run_config(tiny_llama, records_path, tmp_path / "run", train={"max_steps": 1, "save_steps": 1})
    train(config)
    path = tmp_path / "run" / "run_record.json"
    old_record = {**json.loads(path.read_text()), "cpu_matmul": "onednn"}  # as recorded before the head was chosen apart
    path.write_text(json.dumps(old_record))
    monkeypatch.setattr(run, "cpu_matmul_choice", lambda *args: {**everywhere("torch"), "why": "x"})
    config["train"].update(resume=True, max_steps=2)
    resumed = train(config)
    assert resumed["speed_choices"]["cpu_matmul"] == {**everywhere("onednn"), "why": "as when the run started (run_record.json)"}
    assert resumed["switched_linears"] == 2 * 7 + 1


def test_resumed_at_its_last_step_in_the_middle_of_an_epoch_it_trains_no_more(tiny_llama, many_records_path, tmp_path):
    # unpacked, 2 samples a step: 6 steps an epoch, and the last checkpoint at the last step, step 4
    config = lora_config(tiny_llama, many_records_path, tmp_path / "run", max_steps=4, save_steps=2, batch_size=2)
    config["data"]["packing"] = False
    train(config)
    finished = load_file(tmp_path / "run" / "adapter_model.safetensors")
    config["train"]["resume"] = True
    assert train(config)["steps"] == 4  # transformers alone trains a 5th step
    resumed = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert all(torch_equal(resumed[name], finished[name]) for name in finished)


def test_length_grouped_batches_do_not_depend_on_the_global_random_state():
    lengths = [5, 9, 3, 12, 7, 1, 8, 4, 6, 10, 2, 11]
    sampler = SeededLengthGroupedSampler(2, lengths, seed=42)
    torch.manual_seed(0)
    first = list(sampler)
    torch.manual_seed(1)
    assert list(sampler) == first  # transformers' own sampler draws its order from the global generator
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first)


def test_old_checkpoints_go_by_step_and_never_the_newest(tmp_path):
    for step in (3, 6, 9, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-15").mkdir()  # a damaged one from before a resume, numbered higher than the new one
    rotate_checkpoints(tmp_path, 2, tmp_path / "checkpoint-12")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-12", "checkpoint-15"]
    rotate_checkpoints(tmp_path, None, tmp_path / "checkpoint-12")
    assert len(list(tmp_path.iterdir())) == 2
