"""train.compile: compiled RMSNorms and gated products give eager's loss and gradients to fp32 rounding, through a
change of sequence length, and a missing C++ compiler is refused before training. The only tests that compile."""

import pytest
import torch
from torch._dynamo.utils import counters

from helpers import lora_model
from llm_tuning.errors import UserError
from llm_tuning.speed.activations import keep_fewer_activations
from llm_tuning.speed.compile import compile_elementwise, rms_norm_forward


def step(model, length: int):
    torch.manual_seed(1)  # the same dropout masks in both models
    ids = torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(length))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.detach(), grads


def test_compiled_equals_eager_through_a_change_of_length(tiny_llama):
    eager, compiled = lora_model(tiny_llama), lora_model(tiny_llama)
    keep_fewer_activations(eager)
    keep_fewer_activations(compiled)
    layers = eager.config.num_hidden_layers
    assert compile_elementwise(compiled) == [f"{2 * layers + 1} RMSNorms", f"{layers} gated products"]
    norm = compiled.base_model.model.model.norm
    assert norm.forward.func is rms_norm_forward
    graphs = counters["stats"]["unique_graphs"]
    for length in (24, 17, 31):  # the second length recompiles with the length dynamic, the third reuses that
        loss_eager, grads_eager = step(eager, length)
        loss_compiled, grads_compiled = step(compiled, length)
        assert counters["stats"]["unique_graphs"] > graphs  # compiled, not silently eager
        torch.testing.assert_close(loss_compiled, loss_eager, atol=1e-6, rtol=1e-6)
        assert grads_compiled.keys() == grads_eager.keys() and any("lora_A" in n for n in grads_eager)
        for name in grads_eager:
            torch.testing.assert_close(grads_compiled[name], grads_eager[name], atol=1e-6, rtol=1e-5, msg=name)


def test_a_missing_cpp_compiler_is_refused_before_training(tiny_llama, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    model = lora_model(tiny_llama)
    with pytest.raises(UserError, match="train.compile.*'no-such-compiler' is not on PATH"):
        compile_elementwise(model)
    assert "forward" not in model.base_model.model.model.norm.__dict__  # nothing rewritten
