"""Half precision without silent failures: the fp16-on-CPU error, fp32 trained weights, the fp16 epsilon rule,
and the guard that stops a diverging run without saving it."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import llm_tuning.models.quantization as quantization
from helpers import add_trainer_callback, run_config, train_capturing_model
from llm_tuning import train
from llm_tuning.errors import UserError


def test_fp16_mixed_precision_on_a_cpu_is_an_error(tiny_llama, records_path, tmp_path):
    config = run_config(tiny_llama, records_path, tmp_path / "run", train={"precision": "fp16"})
    with pytest.raises(UserError, match="fp16 mixed precision needs a GPU .* use train.precision=bf16 or fp32"):
        train(config)


def test_bf16_mixed_precision_trains(tiny_llama, records_path, tmp_path):
    run = train_capturing_model(
        run_config(tiny_llama, records_path, tmp_path / "run", train={"precision": "bf16", "max_steps": 8, "logging_steps": 1})
    )
    losses = [e["loss"] for e in run.summary["loss_history"]]
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in run.model.parameters())  # autocast: weights stay fp32


@pytest.mark.parametrize("method", [{"name": "lora"}, {"name": "freeze", "trainable_layers": 1}])
def test_half_precision_base_trains_fp32_weights(tiny_llama, records_path, tmp_path, method):
    config = run_config(
        tiny_llama,
        records_path,
        tmp_path / "run",
        model={"dtype": "bfloat16"},
        train={"precision": "bf16", "max_steps": 8, "logging_steps": 1},
    )
    config["method"] = method
    run = train_capturing_model(config)
    trained = [p for p in run.model.parameters() if p.requires_grad]
    frozen = [p for p in run.model.parameters() if not p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trained) and all(p.dtype == torch.bfloat16 for p in frozen)
    if method["name"] == "freeze":  # peft keeps its adapters in fp32 by itself; the model's own weights we cast
        assert any("to float32 (train.keep_trainable_fp32)" in a for a in run.summary["adjustments"])
    losses = [e["loss"] for e in run.summary["loss_history"]]
    assert losses[-1] < losses[0]


def test_fp16_trained_parameters_get_a_safe_adam_epsilon(tiny_llama, records_path, tmp_path):
    run = train_capturing_model(
        run_config(
            tiny_llama,
            records_path,
            tmp_path / "run",
            model={"dtype": "float16"},
            train={"keep_trainable_fp32": False, "max_steps": 4, "logging_steps": 1, "learning_rate": 1e-3},
        )
    )
    assert torch.finfo(torch.float16).tiny > 1e-8 and torch.tensor(1e-8, dtype=torch.float16) == 0  # why
    assert run.summary["adam_epsilon"] == pytest.approx(1e-4)
    assert any("raised train.adam_epsilon from 1e-08 to 0.0001" in a for a in run.summary["adjustments"])
    assert all(p.dtype == torch.float16 for p in run.model.parameters() if p.requires_grad)
    assert all(math.isfinite(e["loss"]) for e in run.summary["loss_history"])


def test_native_method_on_a_half_base_without_autocast_is_an_error(tiny_llama, records_path, tmp_path):
    config = run_config(tiny_llama, records_path, tmp_path / "run", model={"dtype": "bfloat16"})
    config["method"] = {"name": "freeze", "trainable_layers": 1}
    with pytest.raises(UserError, match="set train.precision=bf16 \\(mixed precision\\), or model.dtype=float32"):
        train(config)


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_llama, records_path, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    class ForceNaN(TrainerCallback):  # what an fp16 overflow does to the weights
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 3:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))

    add_trainer_callback(monkeypatch, ForceNaN())
    out = tmp_path / "run"
    config = run_config(tiny_llama, records_path, out, train={"max_steps": 20, "save_steps": 1, "save_total_limit": None})
    with pytest.raises(
        UserError,
        match=r"training diverged at step 3: trained parameters became NaN .*learning rate 0.01.*"
        r"the last good checkpoint is .*checkpoint-2\. Try a lower train.learning_rate",
    ):
        train(config)
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] == 3 and "diverged at step 3" in summary["diagnosis"]
    assert not (out / "adapter_model.safetensors").exists()  # never a saved adapter full of NaN
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    for tensor in load_file(out / "checkpoint-2" / "adapter_model.safetensors").values():
        assert torch.isfinite(tensor).all()


@pytest.mark.parametrize("optimizer", ["adafactor", "adamw_8bit"])
def test_optimizers_train(tiny_llama, records_path, tmp_path, optimizer):
    summary = train(
        run_config(
            tiny_llama,
            records_path,
            tmp_path / "run",
            train={"optimizer": optimizer, "max_steps": 6, "logging_steps": 1, "learning_rate": 1e-2},
        )
    )
    assert summary["optimizer"] == optimizer
    assert summary["loss_history"][-1]["loss"] < summary["loss_history"][0]["loss"]


def test_8bit_optimizer_without_bitsandbytes_names_the_install(tiny_llama, records_path, tmp_path, monkeypatch):
    monkeypatch.setattr(quantization.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="adamw_8bit needs the bitsandbytes package: pip install bitsandbytes"):
        train(run_config(tiny_llama, records_path, tmp_path / "run8", train={"optimizer": "adamw_8bit"}))
