"""A run's trained weights load only when the run's manifest says its results are complete."""

import shutil

import pytest
from transformers import AutoModelForCausalLM

from llm_tuning.errors import UserError
from llm_tuning.weights import is_peft_model, load_trained


def test_a_run_loads_only_with_its_results_whole(trained_run, tmp_path):
    run_dir = shutil.copytree(trained_run.output_dir, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint-*"))
    assert is_peft_model(load_trained(AutoModelForCausalLM.from_pretrained(trained_run.model_path), run_dir))
    weights = run_dir / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(UserError, match=r"run's results are not complete: adapter_model.safetensors has \d+ bytes instead of"):
        load_trained(AutoModelForCausalLM.from_pretrained(trained_run.model_path), run_dir)
    (run_dir / "manifest.json").unlink()
    with pytest.raises(UserError, match="no manifest.json .*; if its training stopped early, finish it with train.resume=true"):
        load_trained(AutoModelForCausalLM.from_pretrained(trained_run.model_path), run_dir)
