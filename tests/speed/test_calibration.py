"""`train.cpu_matmul: auto` picks the library measured faster on the run's own training pass, says why, measures
once per machine, and leaves the training exactly as it would have been without measuring."""

import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import lora_model, run_config, torch_equal
from llm_tuning import train
from llm_tuning.speed import calibration
from llm_tuning.speed.cpu_matmul import PARTS, everywhere, frozen_linears, uses_onednn

needs_onednn = pytest.mark.skipif(
    not calibration.onednn_offered(), reason="auto measures oneDNN only where torch offers it on x86"
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_TUNING_CACHE", str(tmp_path))
    return tmp_path / "speed" / "cpu_matmul.json"


def timed(monkeypatch, faster: dict) -> list:
    """measure() replaced: 1 s for every configuration but those in `faster` (label: seconds)."""
    calls = []

    def fake_measure(model, one_pass, parts):
        calls.append(one_pass)
        return {**dict.fromkeys(calibration.configurations(parts), 1.0), **faster}

    monkeypatch.setattr(calibration, "measure", fake_measure)
    return calls


def no_pass():
    raise AssertionError("the pass runs only inside measure")


@pytest.mark.parametrize(
    "faster, chosen",
    [
        ({"layers onednn, head onednn": 0.5, "layers torch, head onednn": 0.7}, everywhere("onednn")),
        ({"layers torch, head onednn": 0.9, "layers onednn, head onednn": 0.95}, {"layers": "torch", "head": "onednn"}),
        ({"layers onednn, head torch": 0.8, "layers onednn, head onednn": 1.2}, {"layers": "onednn", "head": "torch"}),
        ({"layers onednn, head onednn": 0.99}, everywhere("torch")),  # within the margin: torch's products stay
        ({"layers onednn, head onednn": 1.5}, everywhere("torch")),
    ],
)
def test_auto_takes_the_combination_measured_fastest(tiny_llama, cache, monkeypatch, faster, chosen):
    calls = timed(monkeypatch, faster)
    choice = calibration.choose_cpu_matmul(lora_model(tiny_llama), "auto", no_pass, 256)
    assert {part: choice[part] for part in PARTS} == chosen and calls == [no_pass]
    assert all(f"{name} " in choice["why"] for name in calibration.configurations(PARTS)) and "256 tokens" in choice["why"]


def test_a_head_that_keeps_torchs_products_is_not_measured(tiny_llama, cache, monkeypatch):
    measured = []
    monkeypatch.setattr(
        calibration,
        "measure",
        lambda model, one_pass, parts: (
            measured.append(parts) or {"layers torch, head torch": 1.0, "layers onednn, head torch": 0.5}
        ),
    )
    choice = calibration.choose_cpu_matmul(lora_model(tiny_llama), "auto", no_pass, 64, head_follows=False)
    assert measured == [("layers",)] and (choice["layers"], choice["head"]) == ("onednn", "torch")
    assert "head onednn" not in choice["why"]


def test_measured_once_per_machine(tiny_llama, cache, monkeypatch):
    calls = timed(monkeypatch, {"layers torch, head onednn": 0.5})
    model = lora_model(tiny_llama)
    first = calibration.choose_cpu_matmul(model, "auto", no_pass, 64)
    again = calibration.choose_cpu_matmul(model, "auto", no_pass, 64)
    assert len(calls) == 1 and again["layers"] == first["layers"] == "torch" and again["head"] == first["head"] == "onednn"
    assert again["why"].endswith("(measured before on this CPU, cached)") and "measuring took" not in again["why"]
    calibration.choose_cpu_matmul(model, "auto", no_pass, 50)  # about as many tokens (unpacked widths vary): cached
    assert len(calls) == 1
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)  # another thread count: measured again
    calibration.choose_cpu_matmul(model, "auto", no_pass, 64)
    calibration.choose_cpu_matmul(model, "auto", no_pass, 128)  # and another number of tokens
    assert len(calls) == 3 and cache.is_file()


def test_a_setting_is_obeyed_without_measuring(tiny_llama, cache, monkeypatch):
    calls = timed(monkeypatch, {"layers onednn, head onednn": 0.5})
    assert calibration.choose_cpu_matmul(lora_model(tiny_llama), "auto", no_pass, 64, cpu_fp32=False) == {
        **everywhere("torch"),
        "why": "training does not compute in fp32 on the CPU",
    }
    for setting in ("torch", "onednn"):
        assert calibration.choose_cpu_matmul(lora_model(tiny_llama), setting, no_pass, 64) == {
            **everywhere(setting),
            "why": f"train.cpu_matmul={setting}",
        }
    assert not calls


OTHER = {"torch": "onednn", "onednn": "torch"}


@needs_onednn
@pytest.mark.parametrize("slow_layers, slow_head", [("onednn", "onednn"), ("torch", "onednn"), ("onednn", "torch")])
def test_the_passes_time_each_combination_and_the_fastest_wins(tiny_llama, cache, slow_layers, slow_head):
    model = lora_model(tiny_llama)
    parts = frozen_linears(model)
    layer, (head,) = parts["layers"][0], parts["head"]
    seen = []

    def one_pass():  # as slow as the model's products make it: here, a pause under one library for each part
        libraries = tuple("onednn" if uses_onednn(linear) else "torch" for linear in (layer, head))
        seen.append(libraries)
        time.sleep(0.06 * (libraries[0] == slow_layers) + 0.03 * (libraries[1] == slow_head))

    choice = calibration.choose_cpu_matmul(model, "auto", one_pass, 64)
    assert (choice["layers"], choice["head"]) == (OTHER[slow_layers], OTHER[slow_head])
    combinations = [(layers, head) for layers in ("torch", "onednn") for head in ("torch", "onednn")]
    assert sorted(seen) == sorted(combinations * calibration.ROUNDS + [("torch", "torch")])  # + the warm-up
    assert not uses_onednn(layer) and not uses_onednn(head)  # back on torch's: the caller switches to the chosen ones


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
def test_a_run_that_measures_trains_exactly_as_one_that_finds_the_answer_cached(tiny_llama, records_path, tmp_path, cache):
    def run(name: str) -> dict:
        config = run_config(
            tiny_llama,
            records_path,
            tmp_path / name,
            method={"lora_dropout": 0.1},  # dropout draws from the random state the passes must leave untouched
            train={"max_steps": 3, "logging_steps": 1},
        )
        return train(config)

    measured = run("measured")
    chosen = measured["speed_choices"]["cpu_matmul"]
    assert "measuring took" in chosen["why"]
    told = run("told")
    assert told["speed_choices"]["cpu_matmul"]["why"].endswith("(measured before on this CPU, cached)")
    assert all(told["speed_choices"]["cpu_matmul"][part] == chosen[part] for part in PARTS)
    assert [e["loss"] for e in measured["loss_history"]] == [e["loss"] for e in told["loss_history"]]
    trained, again = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("measured", "told"))
    assert all(torch_equal(trained[name], again[name]) for name in trained)
    switched = {"layers": 2 * 7, "head": 1}  # tiny_llama: 2 layers of 7 frozen projections, and the LM head
    assert measured["onednn_linears"] == sum(switched[part] for part in PARTS if chosen[part] == "onednn")
