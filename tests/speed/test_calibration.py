"""`train.cpu_matmul: auto` picks the library measured faster on the run's own training pass, says why, measures
once per machine, and leaves the training exactly as it would have been without measuring."""

import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import lora_model, run_config, torch_equal
from llm_tuning import train
from llm_tuning.speed import calibration, cpu_matmul
from llm_tuning.speed.cpu_matmul import PARTS, everywhere, frozen_linears, library_of, offered_libraries

ALL = ("torch", "onednn", "openblas")
needs_all = pytest.mark.skipif(offered_libraries() != ALL, reason="auto offers oneDNN only on x86, OpenBLAS with numpy's")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_TUNING_CACHE", str(tmp_path))
    return tmp_path / "speed" / "cpu_matmul.json"


@pytest.fixture
def offered(monkeypatch):
    monkeypatch.setattr(calibration, "offered_libraries", lambda: ALL)


def timed(monkeypatch, faster: dict) -> list:
    """measure() replaced: 1 s for each part with every library but those in `faster` ((part, library): seconds);
    returns each call's candidates ({library: config})."""
    calls = []

    def fake_measure(model, one_pass, candidates):
        assert one_pass is no_pass
        calls.append(candidates)
        return {name: {part: faster.get((part, config[part]), 1.0) for part in PARTS} for name, config in candidates.items()}

    monkeypatch.setattr(calibration, "measure", fake_measure)
    return calls


def no_pass():
    raise AssertionError("the pass runs only inside measure")


@pytest.mark.parametrize(
    "faster, chosen",
    [
        ({("layers", "onednn"): 0.5, ("head", "openblas"): 0.7}, {"layers": "onednn", "head": "openblas"}),
        ({("layers", "openblas"): 0.9, ("layers", "onednn"): 0.95}, {"layers": "openblas", "head": "torch"}),
        ({("head", "onednn"): 0.8}, {"layers": "torch", "head": "onednn"}),
        ({("layers", "onednn"): 0.99, ("head", "openblas"): 0.98}, everywhere("torch")),  # within the margin: torch's
        ({("layers", "onednn"): 1.5}, everywhere("torch")),
    ],
)
def test_auto_takes_the_library_measured_fastest_for_each_part(tiny_llama, cache, monkeypatch, offered, faster, chosen):
    calls = timed(monkeypatch, faster)
    choice = calibration.choose_cpu_matmul(lora_model(tiny_llama), "auto", no_pass, 256, threads_per_pass=1)
    assert {part: choice[part] for part in PARTS} == chosen
    [candidates] = calls  # one set of passes times both parts
    assert candidates == {library: everywhere(library) for library in ALL}
    assert all(f"{part}: torch 1" in choice["why"] for part in PARTS) and "256 tokens" in choice["why"]
    assert "with 1 thread," in choice["why"]


def test_a_library_whose_products_are_wrong_is_never_chosen(tiny_llama, cache, monkeypatch, offered):
    calls = timed(monkeypatch, {("layers", "openblas"): 0.5, ("head", "openblas"): 0.5, ("head", "onednn"): 0.8})
    monkeypatch.setitem(cpu_matmul.PRODUCTS, "openblas", lambda x, weight: x @ weight.t() * 1.01)  # fast and wrong
    choice = calibration.choose_cpu_matmul(lora_model(tiny_llama), "auto", no_pass, 64, threads_per_pass=1)
    assert [list(candidates) for candidates in calls] == [["torch", "onednn"]]  # not even timed
    assert (choice["layers"], choice["head"]) == ("torch", "onednn")
    assert "left out, as their products differ from torch's here: openblas (relative error 1.0e-02)" in choice["why"]


def test_openblas_is_measured_only_with_one_thread_per_process(tiny_llama, cache, monkeypatch, offered):
    calls = timed(monkeypatch, {("layers", "openblas"): 0.5})
    choice = calibration.choose_cpu_matmul(lora_model(tiny_llama), "auto", no_pass, 64, threads_per_pass=2)
    assert [list(candidates) for candidates in calls] == [["torch", "onednn"]] and choice["layers"] == "torch"
    assert "with 2 threads," in choice["why"]


def test_a_head_measured_only_with_the_libraries_training_would_multiply_it_with(tiny_llama, cache, monkeypatch, offered):
    calls = timed(monkeypatch, {("layers", "onednn"): 0.5, ("head", "onednn"): 0.5})
    model = lora_model(tiny_llama)
    not_onednn = lambda library: library != "onednn"  # noqa: E731 - as on glibc (loss.head_follows_cpu_matmul)
    choice = calibration.choose_cpu_matmul(model, "auto", no_pass, 64, head_follows=not_onednn, threads_per_pass=1)
    assert calls[0]["onednn"] == {"layers": "onednn", "head": "torch"}  # the head as training would multiply it
    assert (choice["layers"], choice["head"]) == ("onednn", "torch") and "head: torch 1.000 s, openblas" in choice["why"]
    calls.clear()
    choice = calibration.choose_cpu_matmul(model, "auto", no_pass, 64, head_follows=not_onednn, threads_per_pass=2)
    assert calls == [{"torch": everywhere("torch"), "onednn": {"layers": "onednn", "head": "torch"}}]
    assert "head:" not in choice["why"]  # torch's alone: nothing to compare


def test_measured_once_per_machine(tiny_llama, cache, monkeypatch, offered):
    calls = timed(monkeypatch, {("head", "onednn"): 0.5})
    model = lora_model(tiny_llama)
    first = calibration.choose_cpu_matmul(model, "auto", no_pass, 64)
    again = calibration.choose_cpu_matmul(model, "auto", no_pass, 64)
    assert len(calls) == 1 and again["layers"] == first["layers"] == "torch" and again["head"] == first["head"] == "onednn"
    assert again["why"].endswith("(measured before on this CPU, cached)") and "measuring took" not in again["why"]
    calibration.choose_cpu_matmul(model, "auto", no_pass, 50)  # about as many tokens (unpacked widths vary): cached
    assert len(calls) == 1
    threads = torch.get_num_threads()
    calibration.choose_cpu_matmul(model, "auto", no_pass, 64, threads_per_pass=threads + 1)  # another count: measured
    assert torch.get_num_threads() == threads  # and the threads set back
    calibration.choose_cpu_matmul(model, "auto", no_pass, 128)  # and another number of tokens
    assert len(calls) == 3 and cache.is_file()


def test_a_setting_is_obeyed_without_measuring(tiny_llama, cache, monkeypatch):
    calls = timed(monkeypatch, {("layers", "onednn"): 0.5})
    assert calibration.choose_cpu_matmul(lora_model(tiny_llama), "auto", no_pass, 64, cpu_fp32=False) == {
        **everywhere("torch"),
        "why": "training does not compute in fp32 on the CPU",
    }
    for setting in ALL:
        assert calibration.choose_cpu_matmul(lora_model(tiny_llama), setting, no_pass, 64) == {
            **everywhere(setting),
            "why": f"train.cpu_matmul={setting}",
        }
    assert not calls


@needs_all
@pytest.mark.parametrize("fast_layers, fast_head", [("onednn", "openblas"), ("openblas", "torch"), ("torch", "onednn")])
def test_the_passes_time_each_library_and_the_fastest_wins(tiny_llama, cache, fast_layers, fast_head):
    model = lora_model(tiny_llama)
    parts = frozen_linears(model)
    layer, (head,) = parts["layers"][0], parts["head"]
    seen = []

    def one_pass():  # as slow as the model's products make it: here, a pause under all libraries but one, per part
        libraries = tuple(library_of(linear) for linear in (layer, head))
        seen.append(libraries)
        time.sleep(0.06 * (libraries[0] != fast_layers))
        head_started = time.perf_counter()
        time.sleep(0.03 * (libraries[1] != fast_head))
        return time.perf_counter() - head_started

    choice = calibration.choose_cpu_matmul(model, "auto", one_pass, 64, threads_per_pass=1)
    assert (choice["layers"], choice["head"]) == (fast_layers, fast_head)
    assert seen == [(library, library) for library in ALL] * (1 + calibration.ROUNDS)  # a round that warms each up, first
    assert library_of(layer) == library_of(head) == "torch"  # back on torch's: the caller switches to the chosen ones


def test_the_passes_leave_random_state_gradients_and_mode_as_they_were(tiny_llama):
    model = lora_model(tiny_llama).eval()
    trained = [p for p in model.parameters() if p.requires_grad]
    earlier = torch.ones_like(trained[0])
    trained[0].grad = earlier  # a gradient from before the passes is kept, not added to
    ids = torch.randint(0, 100, (2, 16))

    def one_pass():
        assert model.training  # dropout on, as in a training step
        model(input_ids=ids, labels=ids).loss.backward()
        return 0.0

    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    calibration.measure(model, one_pass, {"torch": everywhere("torch")})
    assert torch.equal(torch.rand(4), expected)
    assert not model.training and trained[0].grad is earlier and torch.equal(earlier, torch.ones_like(earlier))
    assert all(p.grad is None for p in trained[1:])


@needs_all
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
    assert measured["switched_linears"] == sum(switched[part] for part in PARTS if chosen[part] != "torch")
