"""`train.cpu_matmul: auto` picks the library measured faster here, says why, and measures once per machine."""

from collections import Counter

import pytest
import torch

from helpers import lora_model, run_config
from llm_tuning import train
from llm_tuning.speed import calibration


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_TUNING_CACHE", str(tmp_path))
    return tmp_path / "speed" / "cpu_matmul.json"


def timed(monkeypatch, seconds: dict) -> list:
    calls = []

    def fake_measure(shapes, rows):
        calls.append((dict(shapes), rows))
        return seconds

    monkeypatch.setattr(calibration, "measure", fake_measure)
    return calls


@pytest.mark.parametrize("onednn, library", [(0.5, "onednn"), (0.99, "torch"), (1.5, "torch")])
def test_auto_takes_the_library_measured_faster(tiny_llama, cache, monkeypatch, onednn, library):
    calls = timed(monkeypatch, {"torch": 1.0, "onednn": onednn})
    choice = calibration.choose_cpu_matmul(lora_model(tiny_llama), "auto", 256)
    assert choice["library"] == library and "oneDNN" in choice["why"] and "torch" in choice["why"]
    shapes, rows = calls[0]
    assert rows == 256 and shapes == {
        (64, 32): 4,
        (32, 64): 2,
        (32, 32): 4,
        (16, 32): 4,
        (151669, 32): 1,
    }  # gate, up; down; q, o; k, v; head


def test_measured_once_per_machine(tiny_llama, cache, monkeypatch):
    calls = timed(monkeypatch, {"torch": 1.0, "onednn": 0.5})
    model = lora_model(tiny_llama)
    first = calibration.choose_cpu_matmul(model, "auto", 64)
    again = calibration.choose_cpu_matmul(model, "auto", 64)
    assert len(calls) == 1 and again["library"] == first["library"]
    assert again["why"].endswith("(measured before on this CPU, cached)")
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)  # another thread count: measured again
    calibration.choose_cpu_matmul(model, "auto", 64)
    assert len(calls) == 2 and cache.is_file()


def test_a_setting_is_obeyed_without_measuring(tiny_llama, cache, monkeypatch):
    calls = timed(monkeypatch, {"torch": 1.0, "onednn": 0.5})
    for setting in ("torch", "onednn"):
        assert calibration.choose_cpu_matmul(lora_model(tiny_llama), setting, 64) == {
            "library": setting,
            "why": f"train.cpu_matmul={setting}",
        }
    assert not calls


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_real_measurement_times_both_libraries():
    seconds = calibration.measure(Counter({(64, 32): 2, (32, 64): 1}), rows=16)
    assert seconds["torch"] > 0 and seconds["onednn"] > 0


def test_the_run_summary_says_what_was_chosen_and_why(tiny_llama, records_path, tmp_path, cache):
    summary = train(run_config(tiny_llama, records_path, tmp_path / "run", train={"max_steps": 1}))
    choice = summary["speed_choices"]["cpu_matmul"]
    assert choice["library"] in ("torch", "onednn") and choice["why"]
    assert summary["onednn_linears"] > 0 if choice["library"] == "onednn" else summary["onednn_linears"] == 0
