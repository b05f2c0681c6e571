"""What a resumed run may change (how long, how often to log, evaluate and save) and may not (what it trains), and
the record of the choices a run made when it started."""

import pytest

from helpers import run_config
from llm_tuning.config.load import load_config
from llm_tuning.errors import UserError
from llm_tuning.resume import (
    MAY_CHANGE,
    check_same_data,
    check_same_training,
    config_differences,
    read_run_record,
    write_run_record,
)


@pytest.fixture
def trained(tiny_llama, records_path, tmp_path) -> dict:
    config = load_config(run_config(tiny_llama, records_path, tmp_path / "run"))
    config.data.template = "native"  # stored resolved, as a run stores it
    return config.to_dict()


def changed(trained: dict, **sections) -> dict:
    return {name: {**values, **sections.get(name, {})} for name, values in trained.items()}


def test_what_may_change_on_resume_is_not_a_difference(trained):
    new = changed(
        trained,
        train={"max_steps": 90, "logging_steps": 1, "save_steps": 7, "save_total_limit": None, "eval_steps": 3, "resume": True},
        data={"template": "auto"},  # resolves to what the run resolved
    )
    assert config_differences(trained, new) == []
    assert {"train.max_steps", "train.logging_steps", "train.check_memory", "data.val_path"} <= set(MAY_CHANGE)


def test_what_is_trained_may_not_change(trained, tmp_path):
    new = changed(
        trained,
        method={"r": 16},
        train={"learning_rate": 0.02, "seed": 7, "batch_size": 2, "max_steps": 60},
        data={"max_length": 128, "packing": False, "template": "chatml"},
    )
    assert config_differences(trained, new) == [
        "data.max_length: 64 -> 128",
        "data.packing: True -> False",
        "data.template: 'native' -> 'chatml'",
        "method.r: 8 -> 16",
        "train.batch_size: 4 -> 2",
        "train.learning_rate: 0.01 -> 0.02",
        "train.seed: 42 -> 7",
    ]
    with pytest.raises(UserError) as caught:
        check_same_training(trained, new, tmp_path / "run")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"train.resume: this config changes what the run in {tmp_path / 'run'} trains (data.max_length: 64")
    assert "only train.output_dir, train.max_steps" in message and message.endswith(
        "Use a new train.output_dir to train differently"
    )


def test_another_number_of_processes_keeps_the_global_batch(trained, tmp_path):
    """Started in 2 processes with accumulation 1 (global batch 8), a run resumes in 1 process only with accumulation
    2; the accumulation alone never changes the global batch."""
    check_same_training(trained, changed(trained, train={"gradient_accumulation_steps": 2}), tmp_path, 2, 1)
    with pytest.raises(UserError) as caught:
        check_same_training(trained, trained, tmp_path, 2, 1)
    assert str(caught.value) == (
        f"train.resume: the run in {tmp_path} started with a global batch of 8 samples per step (batch_size 4 x "
        "accumulation 1 x 2 processes), this one would take 4 (batch_size 4 x accumulation 1 x 1 processes); it must "
        "stay the same; in 1 process set train.gradient_accumulation_steps=2"
    )
    with pytest.raises(UserError, match="global batch of 4 samples"):
        check_same_training(trained, changed(trained, train={"gradient_accumulation_steps": 3}), tmp_path)


def test_data_with_other_content_is_refused(tmp_path):
    check_same_data({"data_sha256": "a" * 64}, "a" * 64, tmp_path)
    check_same_data({}, "b" * 64, tmp_path)  # a run recorded before fingerprints: nothing to compare
    with pytest.raises(UserError, match="the training data differs from what the run in .* trained on .*a data file changed"):
        check_same_data({"data_sha256": "a" * 64}, "b" * 64, tmp_path)


def test_the_run_record_is_read_back_and_a_damaged_one_is_an_error(tmp_path):
    assert read_run_record(tmp_path) == {}
    write_run_record(tmp_path, {"cpu_matmul": "onednn", "allocator": "glibc"})
    assert read_run_record(tmp_path) == {"cpu_matmul": "onednn", "allocator": "glibc"}
    (tmp_path / "run_record.json").write_text("{")
    with pytest.raises(UserError, match="run_record.json is damaged"):
        read_run_record(tmp_path)
