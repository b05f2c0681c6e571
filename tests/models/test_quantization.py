"""Quantized bases (bitsandbytes, on the CPU): adapters train on 8-bit and 4-bit bases, and merge goes into
the unquantized base in full precision."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from helpers import logits, run_config, train_capturing_model
from llm_tuning import merge, train
from llm_tuning.errors import UserError

pytest.importorskip("bitsandbytes")

QUANTIZATIONS = {
    "8bit": {"quantization": "8bit"},
    "nf4-double": {"quantization": "4bit", "quant_type": "nf4", "double_quant": True},
    "fp4": {"quantization": "4bit", "quant_type": "fp4", "double_quant": False},
}


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_lora_trains_on_a_quantized_base(tiny_llama, records_path, tmp_path, quantization):
    run = train_capturing_model(
        run_config(
            tiny_llama,
            records_path,
            tmp_path / "run",
            model=QUANTIZATIONS[quantization],
            train={"max_steps": 10, "logging_steps": 1},
        )
    )
    losses = [e["loss"] for e in run.summary["loss_history"]]
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    linear = run.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(linear).__name__ == ("Linear8bitLt" if quantization == "8bit" else "Linear4bit")


@pytest.mark.parametrize(
    "method",
    [
        {"name": "ia3"},
        {"name": "prompt", "num_virtual_tokens": 4},
        {"name": "prefix", "num_virtual_tokens": 4},
        {"name": "ptuning", "num_virtual_tokens": 4, "encoder_hidden_size": 16},
    ],
)
def test_other_adapters_train_on_a_4bit_base(tiny_llama, records_path, tmp_path, method):
    config = run_config(
        tiny_llama,
        records_path,
        tmp_path / "run",
        model=QUANTIZATIONS["nf4-double"],
        train={"max_steps": 4, "logging_steps": 1, "learning_rate": 5e-2},
    )
    config["method"] = method
    summary = train(config)
    assert summary["status"] == "completed" and summary["saved_bytes"] > 0


def test_merge_of_a_quantized_run_goes_into_the_full_precision_base(tiny_llama, records_path, tmp_path):
    run = train_capturing_model(
        run_config(tiny_llama, records_path, tmp_path / "run", model=QUANTIZATIONS["nf4-double"], train={"max_steps": 6})
    )
    merged = AutoModelForCausalLM.from_pretrained(merge(run.output_dir, tmp_path / "merged"), dtype=torch.float32).eval()
    assert not any("4bit" in type(m).__name__ for m in merged.modules())
    full_precision = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), run.output_dir
    ).eval()
    torch.testing.assert_close(logits(merged), logits(full_precision), atol=1e-4, rtol=0)


def test_training_a_quantized_base_itself_is_refused(tiny_llama, records_path, tmp_path):
    config = run_config(tiny_llama, records_path, tmp_path / "run", model={"quantization": "4bit"})
    config["method"] = {"name": "freeze"}
    with pytest.raises(UserError, match="trains the base's own weights, which are frozen when quantized .*use lora, ia3"):
        train(config)
