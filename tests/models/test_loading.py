"""llm_tuning.load_model: the base model and tokenizer from a path and model.* options, as training loads them."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import llm_tuning
from helpers import INPUT, logits
from llm_tuning import load_model
from llm_tuning.errors import UserError


def test_load_model_returns_the_model_and_tokenizer_training_uses(tiny_llama_plain):
    model, tokenizer = load_model(tiny_llama_plain, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert tokenizer.pad_token_id is not None  # a pad token, as training adds one
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama_plain, dtype=torch.bfloat16)
    assert torch.equal(logits(model), logits(plain))
    assert tokenizer.decode(INPUT[0]) == "Hello, world! What are you?"


def test_load_model_checks_its_options_as_a_config_does(tiny_llama):
    with pytest.raises(UserError, match=r"unknown config key 'model.dtypes' \(did you mean 'model.dtype'\?\)"):
        load_model(tiny_llama, dtypes="float32")
    with pytest.raises(UserError, match="model.dtype"):
        load_model(tiny_llama, dtype="float64")


def test_load_model_is_public():
    assert llm_tuning.PUBLIC["load_model"] == "llm_tuning.models.loading" and "load_model" in llm_tuning.__all__
