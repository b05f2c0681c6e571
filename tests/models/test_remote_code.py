"""A model whose own code fails on today's transformers (as ChatGLM3's does: `config.max_length`, `_pad(padding_side)`)
gets one line naming its code file and line, the exception and the transformers version, and what to try."""

import json
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoTokenizer

from helpers import qwen_tokenizer_dir
from llm_tuning import load_model
from llm_tuning.errors import UserError

CONFIGURATION = """from transformers import PretrainedConfig


class BrokenConfig(PretrainedConfig):
    model_type = "broken"
"""
MODELING = """from transformers import PreTrainedModel

from .configuration_broken import BrokenConfig


class BrokenForCausalLM(PreTrainedModel):
    config_class = BrokenConfig

    def __init__(self, config):
        super().__init__(config)
        self.max_sequence_length = config.max_length
"""


@pytest.fixture
def broken_model(tmp_path):
    """A remote-code model folder whose model __init__ reads an attribute transformers 5 no longer gives configs."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "configuration_broken.py").write_text(CONFIGURATION)
    (folder / "modeling_broken.py").write_text(MODELING)
    auto_map = {"AutoConfig": "configuration_broken.BrokenConfig", "AutoModelForCausalLM": "modeling_broken.BrokenForCausalLM"}
    config = {"model_type": "broken", "auto_map": auto_map, "transformers_version": "4.30.2", "vocab_size": 10}
    (folder / "config.json").write_text(json.dumps(config))
    AutoTokenizer.from_pretrained(qwen_tokenizer_dir()).save_pretrained(folder)
    save_file({"weight": torch.zeros(1)}, folder / "model.safetensors")
    return folder


def test_a_failing_model_code_is_one_line(broken_model):
    with pytest.raises(UserError) as caught:
        load_model(broken_model, trust_remote_code=True)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("the model's own code failed: modeling_broken.py line 11: AttributeError: ")
    assert "max_length" in message and f"(transformers {transformers.__version__})" in message
    assert "try a transformers version the model's authors support (its config.json was saved with 4.30.2)" in message


def test_the_command_prints_it_without_a_traceback(broken_model, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {broken_model}, trust_remote_code: true}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "llm_tuning", "params", str(config)], capture_output=True, text=True, env=_env(tmp_path)
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines and "modeling_broken.py line 11: AttributeError" in lines[0]


def _env(tmp_path) -> dict:
    import os

    return {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "LLM_TUNING_CACHE": str(tmp_path / "cache")}
