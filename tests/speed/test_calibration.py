"""`train.cpu_matmul: auto` picks the library measured faster on the run's own training pass, says why, measures
once per machine, and leaves the training exactly as it would have been without measuring."""

import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import lora_model, run_config, torch_equal
from llm_tuning import train
from llm_tuning.speed import calibration
from llm_tuning.speed.cpu_matmul import is_frozen_cpu_linear, uses_onednn

needs_onednn = pytest.mark.skipif(
    not calibration.onednn_offered(), reason="auto measures oneDNN only where torch offers it on x86"
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_TUNING_CACHE", str(tmp_path))
    return tmp_path / "speed" / "cpu_matmul.json"


def timed(monkeypatch, seconds: dict) -> list:
    calls = []

    def fake_measure(model, one_pass):
        calls.append(one_pass)
        return seconds

    monkeypatch.setattr(calibration, "measure", fake_measure)
    return calls


def no_pass():
    raise AssertionError("the pass runs only inside measure")


@pytest.mark.parametrize("onednn, library", [(0.5, "onednn"), (0.99, "torch"), (1.5, "torch")])
def test_auto_takes_the_library_measured_faster(tiny_llama, cache, monkeypatch, onednn, library):
    calls = timed(monkeypatch, {"torch": 1.0, "onednn": onednn})
    choice = calibration.choose_cpu_matmul(lora_model(tiny_llama), "auto", no_pass, 256)
    assert choice["library"] == library and calls == [no_pass]
    assert "oneDNN" in choice["why"] and "torch" in choice["why"] and "256 tokens" in choice["why"]


def test_measured_once_per_machine(tiny_llama, cache, monkeypatch):
    calls = timed(monkeypatch, {"torch": 1.0, "onednn": 0.5})
    model = lora_model(tiny_llama)
    first = calibration.choose_cpu_matmul(model, "auto", no_pass, 64)
    again = calibration.choose_cpu_matmul(model, "auto", no_pass, 64)
    assert len(calls) == 1 and again["library"] == first["library"]
    assert again["why"].endswith("(measured before on this CPU, cached)") and "measuring took" not in again["why"]
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)  # another thread count: measured again
    calibration.choose_cpu_matmul(model, "auto", no_pass, 64)
    calibration.choose_cpu_matmul(model, "auto", no_pass, 128)  # and another number of tokens
    assert len(calls) == 3 and cache.is_file()


def test_a_setting_is_obeyed_without_measuring(tiny_llama, cache, monkeypatch):
    calls = timed(monkeypatch, {"torch": 1.0, "onednn": 0.5})
    assert calibration.choose_cpu_matmul(lora_model(tiny_llama), "auto", no_pass, 64, cpu_fp32=False) == {
        "library": "torch",
        "why": "training does not compute in fp32 on the CPU",
    }
    for setting in ("torch", "onednn"):
        assert calibration.choose_cpu_matmul(lora_model(tiny_llama), setting, no_pass, 64) == {
            "library": setting,
            "why": f"train.cpu_matmul={setting}",
        }
    assert not calls


@needs_onednn
@pytest.mark.parametrize("slow", ["onednn", "torch"])
def test_the_passes_time_each_library_and_the_faster_wins(tiny_llama, cache, slow):
    model = lora_model(tiny_llama)
    layer = next(m for m in model.modules() if is_frozen_cpu_linear(m))
    libraries = []

    def one_pass():  # as slow as the model's products make it: here, a pause under one of the libraries
        library = "onednn" if uses_onednn(layer) else "torch"
        libraries.append(library)
        time.sleep(0.05 if library == slow else 0.0)

    choice = calibration.choose_cpu_matmul(model, "auto", one_pass, 64)
    assert choice["library"] == ("torch" if slow == "onednn" else "onednn")
    assert sorted(libraries) == ["onednn"] * calibration.ROUNDS + ["torch"] * (calibration.ROUNDS + 1)  # + warm-up
    assert not uses_onednn(layer)  # back on torch's products: the caller switches to the chosen one


def test_the_passes_leave_random_state_gradients_and_mode_as_they_were(tiny_llama):
    model = lora_model(tiny_llama).eval()
    trained = [p for p in model.parameters() if p.requires_grad]
    earlier = torch.ones_like(trained[0])
    trained[0].grad = earlier  # a gradient from before the passes is kept, not added to
    ids = torch.randint(0, 100, (2, 16))

    def one_pass():
        assert model.training  # dropout on, as in a training step
        model(input_ids=ids, labels=ids).loss.backward()

    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    calibration.measure(model, one_pass)
    assert torch.equal(torch.rand(4), expected)
    assert not model.training and trained[0].grad is earlier and torch.equal(earlier, torch.ones_like(earlier))
    assert all(p.grad is None for p in trained[1:])


@needs_onednn
def test_a_run_that_measures_trains_exactly_as_one_told_the_answer(tiny_llama, records_path, tmp_path, cache):
    def run(name: str, cpu_matmul: str) -> dict:
        config = run_config(
            tiny_llama,
            records_path,
            tmp_path / name,
            method={"lora_dropout": 0.1},  # dropout draws from the random state the passes must leave untouched
            train={"max_steps": 3, "logging_steps": 1, "cpu_matmul": cpu_matmul},
        )
        return train(config)

    measured = run("measured", "auto")
    chosen = measured["speed_choices"]["cpu_matmul"]
    assert "measuring took" in chosen["why"]
    told = run("told", chosen["library"])
    assert [e["loss"] for e in measured["loss_history"]] == [e["loss"] for e in told["loss_history"]]
    trained, again = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("measured", "told"))
    assert all(torch_equal(trained[name], again[name]) for name in trained)
    assert measured["onednn_linears"] > 0 if chosen["library"] == "onednn" else measured["onednn_linears"] == 0
