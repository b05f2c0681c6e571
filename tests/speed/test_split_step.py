"""The CPU step split over the cores: forked copies compute their rows' passes, and the gradients add up to the
unsplit step's."""

import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from helpers import run_config
from llm_tuning import train
from llm_tuning.speed import split_step
from llm_tuning.speed.split_step import SplitStep, part_seed, split_parts, split_rows, split_unsupported_reason
from llm_tuning.training.trainer import LeanTrainer


def squared_error_part(model, inputs, num_items_in_batch):
    """A training step's part as the Trainer's is: forward, backward, the detached loss (summed, over the global count)."""
    if bool((inputs["x"] == -1).any()):
        raise ValueError("row marked to fail")
    loss = (model(inputs["x"]).squeeze(-1) - inputs["y"]).pow(2).sum() / num_items_in_batch
    loss.backward()
    return loss.detach()


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def batch(rows: int) -> dict:
    torch.manual_seed(1)
    return {"x": torch.randn(rows, 3), "y": torch.randn(rows)}


def test_split_rows_keeps_every_row_once_in_order():
    inputs = {"input_ids": torch.arange(10).view(5, 2), "labels": torch.arange(10, 20).view(5, 2)}
    parts = split_rows(inputs, 2)
    assert [part["input_ids"].shape[0] for part in parts] == [2, 3]
    for key in inputs:
        assert torch.equal(torch.cat([part[key] for part in parts]), inputs[key])


@pytest.mark.parametrize("parts", [2, 3])
def test_a_split_step_gives_the_unsplit_loss_and_gradients(linear, parts):
    inputs = batch(6)
    expected_loss = squared_error_part(linear, inputs, torch.tensor(6))
    expected = [p.grad.clone() for p in linear.parameters()]
    linear.zero_grad(set_to_none=True)

    split = SplitStep(linear, squared_error_part, parts=parts, seed=0)
    try:
        loss = split.step(linear, inputs, torch.tensor(6), step=0, micro=0)  # the Trainer's count is a tensor
        assert torch.allclose(loss, expected_loss, atol=1e-6)
        for param, grad in zip(linear.parameters(), expected):
            assert torch.allclose(param.grad, grad, atol=1e-6)
        assert len(split.peaks) == parts - 1  # each copy's memory, counted
        assert split.private_bytes() == sum(split.peaks.values()) > 0
        with torch.no_grad():  # the copies see an optimizer step: the trained parameters are shared
            linear.weight += 1.0
        linear.zero_grad(set_to_none=True)
        second = split.step(linear, inputs, 6, step=1, micro=0)
        assert torch.allclose(second, squared_error_part(linear, inputs, 6), atol=1e-5)
    finally:
        split.close()
    assert not split.workers


def test_copies_forked_again_count_only_their_own_peaks(linear):
    split = SplitStep(linear, squared_error_part, parts=2, seed=0)
    try:
        split.step(linear, batch(4), 4, step=0, micro=0)
        first = set(split.peaks)
        split.close()  # as a train() ends; a later train() on the same trainer forks new copies
        split.step(linear, batch(4), 4, step=0, micro=0)
        assert len(split.peaks) == 1 and set(split.peaks) != first  # the ended copy's peak is not counted again
    finally:
        split.close()


def test_a_failing_copy_fails_the_step_with_its_error(linear):
    inputs = batch(4)
    inputs["x"][3] = -1  # in the copy's rows only
    split = SplitStep(linear, squared_error_part, parts=2, seed=0)
    try:
        with pytest.raises(
            RuntimeError, match="(?s)in squared_error_part.*llm-tuning part 1 of the split training step failed: ValueError: row"
        ):
            split.step(linear, inputs, 4, step=0, micro=0)
    finally:
        split.close()


def test_a_copy_that_dies_fails_the_step_instead_of_hanging(linear):
    split = SplitStep(linear, squared_error_part, parts=2, seed=0)
    try:
        split.step(linear, batch(4), 4, step=0, micro=0)
        process = split.workers[0][0]
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        with pytest.raises(RuntimeError, match=r"llm-tuning part 1 of the split training step ended \(exit code -9\)"):
            split.step(linear, batch(4), 4, step=1, micro=0)
    finally:
        split.close()


def test_each_part_of_each_micro_batch_draws_from_its_own_seed():
    seeds = {part_seed(42, step, micro, part) for step in range(50) for micro in range(4) for part in range(1, 4)}
    assert len(seeds) == 50 * 4 * 3
    assert part_seed(42, 3, 1, 1) != part_seed(43, 3, 1, 1)


def test_a_parameter_without_a_gradient_in_the_copy_gets_none_not_zeros():
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"used": torch.nn.Linear(3, 1), "unused": torch.nn.Linear(3, 1)})

    def part(module, inputs, num_items_in_batch):
        return squared_error_part(module["used"], inputs, num_items_in_batch)

    split = SplitStep(model, part, parts=2, seed=0)
    try:
        split.step(model, batch(4), 4, step=0, micro=0)
    finally:
        split.close()
    assert all(p.grad is not None for p in model["used"].parameters())
    assert all(p.grad is None for p in model["unused"].parameters())  # AdamW skips it, as without the split


def test_the_split_applies_only_where_it_pays(linear, monkeypatch):
    def reason(model, batch_size=4, processes=1, on_cpu=True, chunked_loss=True):
        return split_unsupported_reason(model, batch_size, processes, on_cpu, chunked_loss)

    assert reason(linear, on_cpu=False) == "not on a CPU"
    assert reason(linear, chunked_loss=False).startswith("the model's own loss")
    assert reason(linear, processes=2) == "the run already has a process per device"
    assert reason(linear, batch_size=1) == "a micro-batch of one row"
    assert reason(linear) == "more than 5% of the parameters train"
    linear.weight.requires_grad_(False)
    big = torch.nn.Sequential(linear, torch.nn.Linear(1, 100, bias=False).requires_grad_(False))
    assert reason(big) in (None, "one thread")
    assert split_parts(big, 4, 1, True, True)[0] == (1 if torch.get_num_threads() < 2 else min(4, torch.get_num_threads()))
    monkeypatch.setattr(split_step, "shared_memory_free", lambda: 0)  # a full (or a container's tiny) /dev/shm
    if torch.get_num_threads() >= 2:
        assert reason(big).startswith("/dev/shm has less than")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # as on a 2-core machine, whatever this one has
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_split_run_trains_as_the_unsplit_one(tiny_llama, records_path, tmp_path, two_threads, accumulation):
    """Without dropout the parts' gradients add up to the whole batch's: the same adapters, to fp32 rounding."""
    summaries = {}
    for split in (True, False):
        train_section = {"max_steps": 3, "batch_size": 4, "logging_steps": 1, "split_step": split, "cpu_matmul": "torch"}
        config = run_config(
            tiny_llama,
            records_path,
            tmp_path / str(split),
            method={"lora_dropout": 0.0},
            train={**train_section, "batch_size": 4 // accumulation, "gradient_accumulation_steps": accumulation},
        )
        summaries[split] = train(config)
    assert summaries[True]["speed_choices"]["split_step"]["parts"] == 2
    assert summaries[True]["peak_memory_bytes"] > summaries[True]["split_copies_private_bytes"] > 0
    assert summaries[False]["speed_choices"]["split_step"] == {"parts": 1, "why": "train.split_step: false"}
    assert summaries[False]["split_copies_private_bytes"] == 0
    losses = {split: [entry["loss"] for entry in summary["loss_history"]] for split, summary in summaries.items()}
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    adapters = {split: load_file(tmp_path / str(split) / "adapter_model.safetensors") for split in summaries}
    assert adapters[True].keys() == adapters[False].keys()
    for name, weight in adapters[True].items():
        assert torch.allclose(weight, adapters[False][name], atol=1e-5), name


def test_a_micro_batch_of_one_row_runs_unsplit(linear):
    split = SplitStep(linear, squared_error_part, parts=2, seed=0)
    inputs = batch(1)
    loss = split.step(linear, inputs, 1, step=0, micro=0)
    assert not split.workers  # no copy was started for it
    grads = [p.grad.clone() for p in linear.parameters()]
    linear.zero_grad(set_to_none=True)
    assert torch.allclose(loss, squared_error_part(linear, inputs, 1))
    assert all(torch.equal(p.grad, g) for p, g in zip(linear.parameters(), grads))


def test_training_ends_its_copies_even_when_it_fails(tiny_llama, records_path, tmp_path, two_threads, monkeypatch):
    started = []
    split_step_of = LeanTrainer.training_step

    def failing_at_the_second_step(self, *args, **kwargs):
        if self.state.global_step == 1:
            started.extend(process for process, _, _ in self.split.workers)
            raise RuntimeError("failed on purpose")
        return split_step_of(self, *args, **kwargs)

    monkeypatch.setattr(LeanTrainer, "training_step", failing_at_the_second_step)
    config = run_config(tiny_llama, records_path, tmp_path / "run", train={"max_steps": 3, "batch_size": 4})
    with pytest.raises(RuntimeError, match="failed on purpose"):
        train(config)
    assert started and not any(process.is_alive() for process in started)  # none is left running
