"""The labelled-positions loss gives the same loss and gradients as transformers' own, without full logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_tuning.data.encode import IGNORE_INDEX
from llm_tuning.speed.cpu_kernels import cross_entropy_gradient
from llm_tuning.training.loss import chunked_loss_unsupported_reason, labelled_loss


def batch_with_prompts(vocab: int, batch: int = 3, length: int = 20):
    torch.manual_seed(1)
    input_ids = torch.randint(0, vocab, (batch, length))
    labels = input_ids.clone()
    labels[:, :7] = IGNORE_INDEX  # the prompt
    labels[1, 15:] = IGNORE_INDEX  # right padding
    return input_ids, labels


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("architecture", ["llama", "bloom"])
@pytest.mark.parametrize("chunk_size", [4, 1024])
@pytest.mark.parametrize("softmax", ["torch", "C"])
def test_same_loss_and_gradients_as_full_logits(tiny_models, architecture, chunk_size, softmax):
    model = AutoModelForCausalLM.from_pretrained(
        tiny_models[architecture], dtype=torch.float32
    )  # everything trains, tied head too
    if softmax == "C":  # as train.cpu_kernels routes it
        model.get_output_embeddings().cross_entropy_kernel = cross_entropy_gradient
    input_ids, labels = batch_with_prompts(model.config.vocab_size)
    items = int((labels[:, 1:] != IGNORE_INDEX).sum()) + 5  # as Trainer passes it under gradient accumulation

    reference = model(input_ids=input_ids, labels=labels, num_items_in_batch=items).loss
    reference.backward()
    expected = grads(model)
    model.zero_grad()

    hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state
    loss = labelled_loss(hidden, model.get_output_embeddings(), labels, items, chunk_size=chunk_size)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), abs=1e-5)
    actual = grads(model)
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_mean_over_labelled_positions_without_a_count(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    input_ids, labels = batch_with_prompts(model.config.vocab_size)
    with torch.no_grad():
        reference = model(input_ids=input_ids, labels=labels).loss
        hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state
        assert labelled_loss(hidden, model.get_output_embeddings(), labels).item() == pytest.approx(reference.item(), abs=1e-5)


def test_prompt_learning_methods_keep_the_full_logits_path(tiny_llama):
    from peft import PromptTuningConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    assert chunked_loss_unsupported_reason(model) is None
    prompt = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert "prompt-learning" in chunked_loss_unsupported_reason(prompt)
