"""Integration on the real SmolLM2-135M-Instruct (provisioned from PyPI once and cached in LLM_TUNING_CACHE)."""

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llm_tuning import train
from llm_tuning.generation import Session

pytestmark = pytest.mark.slow


def test_short_lora_run_learns_and_reloads(tmp_path, records_path):
    summary = train(
        {
            "model": {"path": "smollm2-135m"},
            "method": {"name": "lora", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
            "data": {"path": str(records_path), "max_length": 96},  # 4 records, repeated every step
            "train": {
                "output_dir": str(tmp_path / "run"),
                "max_steps": 8,
                "batch_size": 4,
                "learning_rate": 2e-3,
                "lr_scheduler": "constant",
                "warmup_ratio": 0.0,
                "logging_steps": 1,
                "seed": 0,
            },
        }
    )
    assert summary["all_params"] == 134_515_008 + summary["trainable_params"]  # SmolLM2-135M plus the adapter
    losses = [e["loss"] for e in summary["loss_history"]]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert summary["template"] == "native" and summary["tokens_per_s"] > 0

    session = Session(adapter=tmp_path / "run")
    base = AutoModelForCausalLM.from_pretrained(summary["model_path"], dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, tmp_path / "run").eval()
    ids = session.tokenizer("Who are you?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(session.model(ids).logits, plain(ids).logits)
