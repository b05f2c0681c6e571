"""Lean activations: the rewritten gated MLP and LoRA dropout give the plain path's loss and gradients (same seed,
same dropout masks) while keeping fewer bytes for backward."""

import pytest
import torch
from torch.nn import functional as F

from helpers import lora_model
from llm_tuning.speed.activations import DropoutLinear, keep_fewer_activations, kept_by_dropout


def step(model, seed=1):
    """Loss, gradients and the bytes autograd keeps for backward (each storage counted once)."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    torch.manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, sum(storages.values())


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_same_loss_and_gradients_with_fewer_bytes_kept(tiny_models, architecture):
    plain, lean = lora_model(tiny_models[architecture]), lora_model(tiny_models[architecture])
    done = keep_fewer_activations(lean)
    layers = plain.config.num_hidden_layers
    assert done == [f"{layers} gated MLPs keep gate and up only", f"{7 * layers} LoRA dropouts keep a 1-byte mask"]
    loss_plain, grads_plain, kept_plain = step(plain)
    loss_lean, grads_lean, kept_lean = step(lean)
    assert torch.equal(loss_lean, loss_plain)  # same dropout masks: the same random draws in the same order
    assert grads_lean.keys() == grads_plain.keys() and any("lora_A" in n for n in grads_lean)
    for name in grads_plain:
        torch.testing.assert_close(grads_lean[name], grads_plain[name], atol=1e-6, rtol=1e-5, msg=name)
    # per layer and token, at least act(gate) (intermediate) and one float mask per adapted projection are gone
    tokens, config = 2 * 24, plain.config
    at_least = layers * tokens * 4 * (config.intermediate_size + 3 * config.hidden_size)
    assert kept_plain - kept_lean >= at_least


def test_evaluation_mode_has_no_dropout(tiny_llama):
    plain, lean = lora_model(tiny_llama).eval(), lora_model(tiny_llama)
    keep_fewer_activations(lean)
    lean.eval()
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(lean(input_ids=ids).logits, plain(input_ids=ids).logits, atol=0, rtol=0)


def test_leaves_alone_what_it_cannot_rewrite_exactly(tiny_llama):
    no_dropout = lora_model(tiny_llama, dropout=0.0)
    assert keep_fewer_activations(no_dropout) == ["2 gated MLPs keep gate and up only"]
    dora = lora_model(tiny_llama, use_dora=True)
    assert keep_fewer_activations(dora) == ["2 gated MLPs keep gate and up only"]  # DoRA's dropout path is its own


def test_mixed_precision_gradients_keep_the_parameters_dtype(tiny_llama):
    """Under autocast the forward runs in bf16; the rewritten backward meets that dtype and hands fp32 weights
    fp32 gradients, close to the plain path's."""
    plain, lean = lora_model(tiny_llama), lora_model(tiny_llama)
    keep_fewer_activations(lean)
    results = []
    for model in (plain, lean):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(step(model))
    (loss_plain, grads_plain, _), (loss_lean, grads_lean, _) = results
    assert torch.equal(loss_lean, loss_plain)
    for name, grad in grads_plain.items():
        assert grads_lean[name].dtype == torch.float32
        torch.testing.assert_close(grads_lean[name], grad, atol=1e-3, rtol=2e-2, msg=name)


def test_chatglms_fused_swiglu_keeps_gate_and_up_only(chatglm_folder):
    """ChatGLM's MLP computes gate and up in one projection (dense_h_to_4h); rewritten the same way."""
    plain, lean = lora_model(chatglm_folder), lora_model(chatglm_folder)
    done = keep_fewer_activations(lean)
    assert done[0] == "2 gated MLPs keep gate and up only"
    loss_plain, grads_plain, kept_plain = step(plain)
    loss_lean, grads_lean, kept_lean = step(lean)
    assert torch.equal(loss_lean, loss_plain)
    for name in grads_plain:
        torch.testing.assert_close(grads_lean[name], grads_plain[name], atol=1e-6, rtol=1e-5, msg=name)
    assert kept_plain - kept_lean >= 2 * 2 * 24 * 4 * plain.config.ffn_hidden_size  # act(gate) per layer and token


def test_fast_masks_drop_at_the_rate_asked_and_follow_torchs_seed():
    x = torch.zeros(999, 1001)  # an odd count: half of the last 64-bit word goes unused
    torch.manual_seed(3)
    first, second = kept_by_dropout(x, 0.1, fast=True), kept_by_dropout(x, 0.1, fast=True)
    assert first.shape == x.shape and first.dtype == torch.bool
    for mask in (first, second, first[-1:]):  # the last row too: every word's both halves are used
        assert abs((~mask).float().mean().item() - 0.1) < 5 * (0.1 * 0.9 / mask.numel()) ** 0.5
    assert not torch.equal(first, second)  # each mask from its own draws
    torch.manual_seed(3)
    assert torch.equal(kept_by_dropout(x, 0.1, fast=True), first)  # torch's seed decides every mask
    state = torch.get_rng_state()
    drawn = kept_by_dropout(x, 0.1, fast=True)
    torch.set_rng_state(state)  # as a resumed run restores it
    assert torch.equal(kept_by_dropout(x, 0.1, fast=True), drawn)
    torch.manual_seed(3)
    assert not torch.equal(kept_by_dropout(x, 0.1, fast=False), first)  # not torch's own masks


def test_fast_masks_train_as_dropout_with_those_masks(tiny_llama):
    """The forward and backward are dropout's with the mask drawn fast; a LoRA model says it draws so."""
    x, weight = torch.randn(3, 7, 16, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    torch.manual_seed(5)
    DropoutLinear.apply(x, weight, 0.25, True).square().sum().backward()
    torch.manual_seed(5)
    kept = kept_by_dropout(x, 0.25, fast=True)
    x_plain, weight_plain = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    F.linear(x_plain * kept.to(x.dtype).div_(0.75), weight_plain).square().sum().backward()
    torch.testing.assert_close(x.grad, x_plain.grad, atol=0, rtol=0)
    torch.testing.assert_close(weight.grad, weight_plain.grad)
    drawn_by_torch, drawn_fast = lora_model(tiny_llama), lora_model(tiny_llama)
    keep_fewer_activations(drawn_by_torch)
    assert keep_fewer_activations(drawn_fast, "fast")[1] == "14 LoRA dropouts keep a 1-byte mask, drawn fast on a CPU"
    loss_torch, loss_fast = step(drawn_by_torch)[0], step(drawn_fast)[0]
    assert torch.isfinite(loss_fast) and not torch.equal(loss_fast, loss_torch)  # the same seed, other masks
