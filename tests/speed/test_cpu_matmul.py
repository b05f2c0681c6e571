"""oneDNN's and OpenBLAS's products for frozen linear layers (`train.cpu_matmul=onednn` or `openblas`): only frozen
fp32 CPU linears switch, and loss and gradients match torch's own products to fp32 rounding."""

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torch import nn
from transformers import AutoModelForCausalLM

from helpers import assert_only_trainable_tensors_changed, lora_model, run_config, train_capturing_model
from llm_tuning.data.encode import IGNORE_INDEX
from llm_tuning.speed import cpu_matmul
from llm_tuning.speed.cpu_matmul import (
    everywhere,
    library_of,
    multiply_as,
    numpy_uses_openblas,
    onednn_linear,
    openblas_linear,
    product_error,
    switched_linear_forward,
    threads,
)
from llm_tuning.training import loss as loss_module
from llm_tuning.training.loss import labelled_loss

LIBRARIES = [
    pytest.param("onednn", marks=pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")),
    pytest.param("openblas", marks=pytest.mark.skipif(not numpy_uses_openblas(), reason="numpy here has no OpenBLAS")),
]


def loss_and_gradients(model):
    torch.manual_seed(1)  # the same dropout masks
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(2))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_same_loss_and_gradients_as_torch_products(tiny_models, architecture, library):
    plain, switched = lora_model(tiny_models[architecture]), lora_model(tiny_models[architecture])
    layers = plain.config.num_hidden_layers
    assert multiply_as(switched, everywhere(library)) == 7 * layers + 1  # every frozen projection, and the LM head
    loss_plain, grads_plain = loss_and_gradients(plain)
    loss_switched, grads_switched = loss_and_gradients(switched)
    torch.testing.assert_close(loss_switched, loss_plain, atol=1e-5, rtol=1e-5)
    assert (
        grads_switched.keys() == grads_plain.keys() and len(grads_plain) == 2 * 7 * layers
    )  # lora_A and lora_B on each projection
    for name in grads_plain:
        torch.testing.assert_close(grads_switched[name], grads_plain[name], atol=1e-5, rtol=1e-4, msg=name)


def chunked_loss_and_gradients(model, chunk_size: int):
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    causal_lm = model.get_base_model()
    loss = labelled_loss(
        causal_lm.get_decoder()(input_ids=ids).last_hidden_state, causal_lm.get_output_embeddings(), labels, chunk_size=chunk_size
    )
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def count_head_products(monkeypatch, reuses_large_blocks: bool) -> list:
    """The shapes of the products the chunked loss asks oneDNN or OpenBLAS for."""
    head_products = []
    for name, product in (("onednn_linear", onednn_linear), ("openblas_linear", openblas_linear)):
        counted = lambda *args, product=product, **kwargs: head_products.append(args[0].shape) or product(*args, **kwargs)  # noqa: E731
        monkeypatch.setattr(loss_module, name, counted)
    monkeypatch.setattr(loss_module, "malloc_reuses_large_blocks", lambda: reuses_large_blocks)
    return head_products


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("chunk_size", [7, 1024])
def test_chunked_loss_multiplies_a_switched_head_with_its_library(tiny_llama, monkeypatch, chunk_size, library):
    plain, switched = lora_model(tiny_llama), lora_model(tiny_llama)
    multiply_as(switched, everywhere(library))
    head_products = count_head_products(monkeypatch, reuses_large_blocks=True)  # as on tcmalloc
    loss_plain, grads_plain = chunked_loss_and_gradients(plain, chunk_size)
    assert head_products == []
    loss_switched, grads_switched = chunked_loss_and_gradients(switched, chunk_size)
    chunks = -(-2 * 19 // chunk_size)  # 2 rows x 19 labelled positions (targets are labels[:, 1:], 4 of them prompt)
    assert len(head_products) == 2 * chunks  # logits and the hidden states' gradient, per chunk
    torch.testing.assert_close(loss_switched, loss_plain, atol=1e-5, rtol=1e-5)
    assert grads_switched.keys() == grads_plain.keys() and grads_plain
    for name in grads_plain:
        torch.testing.assert_close(grads_switched[name], grads_plain[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("library", LIBRARIES)
def test_on_glibc_the_chunked_loss_keeps_onednn_off_the_head(tiny_llama, monkeypatch, library):
    model = lora_model(tiny_llama)
    multiply_as(model, everywhere(library))
    head_products = count_head_products(monkeypatch, reuses_large_blocks=False)
    chunked_loss_and_gradients(model, chunk_size=7)
    # oneDNN writes fresh tensors only: torch's product writes into one reused buffer instead; OpenBLAS writes into it
    assert len(head_products) == (0 if library == "onednn" else 2 * 6)


def test_only_frozen_float32_linears_switch(tiny_llama):
    model = lora_model(tiny_llama)
    multiply_as(model, everywhere("openblas"))
    adapters = [m for n, m in model.named_modules() if "lora_A" in n or "lora_B" in n]
    assert adapters and all("forward" not in vars(m) for m in adapters if isinstance(m, nn.Linear))  # trained: torch's
    full = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)  # every weight trains
    assert multiply_as(full, everywhere("openblas")) == 0
    half = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).requires_grad_(False)
    assert multiply_as(half, everywhere("openblas")) == 0


@pytest.mark.parametrize("library", LIBRARIES)
def test_other_inputs_take_torch_path(library):
    linear = nn.Linear(8, 4).requires_grad_(False)
    x = torch.randn(3, 8)
    torch.testing.assert_close(switched_linear_forward(linear, library, x), linear(x), atol=1e-6, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast picks bf16 products itself
        assert switched_linear_forward(linear, library, x).dtype == torch.bfloat16
    assert torch.equal(switched_linear_forward(linear.double(), library, x.double()), linear(x.double()))


@pytest.mark.parametrize("library", LIBRARIES)
def test_training_with_another_librarys_products(tiny_llama, records_path, tmp_path, library):
    run = train_capturing_model(
        run_config(tiny_llama, records_path, tmp_path / "run", train={"max_steps": 8, "logging_steps": 1, "cpu_matmul": library})
    )
    assert run.summary["switched_linears"] == 2 * 7 + 1
    losses = [e["loss"] for e in run.summary["loss_history"]]
    assert losses[-1] < losses[0]
    assert_only_trainable_tensors_changed(run)
    # after training the model is back on torch's products: no linear keeps another library's forward
    assert all(library_of(module) == "torch" for module in run.model.modules())


@pytest.mark.skipif(not numpy_uses_openblas(), reason="numpy here has no OpenBLAS")
def test_openblas_computes_with_as_many_threads_as_torch(tiny_llama):
    def openblas_threads() -> list[int]:
        return [found["num_threads"] for found in threadpool_info() if found["internal_api"] == "openblas"]

    torch_threads, blas_threads = torch.get_num_threads(), openblas_threads()
    try:
        with threads(1):  # as each part of a split step computes
            assert torch.get_num_threads() == 1 and openblas_threads() == [1] * len(blas_threads)
        assert (torch.get_num_threads(), openblas_threads()) == (torch_threads, blas_threads)
        torch.set_num_threads(1)  # as under torchrun
        multiply_as(lora_model(tiny_llama), everywhere("openblas"))
        assert openblas_threads() == [1] * len(blas_threads)  # not one per core: they would fight torch's for them
    finally:
        torch.set_num_threads(torch_threads)
        threadpool_limits(limits=blas_threads[0], user_api="blas")


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_library_that_multiplies_right_shows_only_rounding_error(library):
    weight = torch.randn(2100, 96, generator=torch.Generator().manual_seed(3))  # more rows than are checked
    assert product_error(library, weight) < 1e-5


@pytest.mark.parametrize(
    "broken",
    [
        lambda x, weight: x @ weight.t() * 1.01,  # slightly wrong
        lambda x, weight: torch.full((x.shape[0], weight.shape[0]), float("nan")),  # not finite
        lambda x, weight: x @ weight.t() + (weight.stride(0) == 1),  # wrong on the transposed view alone (backward)
        lambda x, weight: 1 / 0,  # fails
    ],
)
def test_a_library_that_multiplies_wrong_is_caught(monkeypatch, broken):
    monkeypatch.setitem(cpu_matmul.PRODUCTS, "openblas", broken)
    assert product_error("openblas", torch.randn(64, 32)) > 1e-3
