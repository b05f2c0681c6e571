"""train.cpu_kernels: the C kernels give torch's results (the dropout bit for bit; the norms, gated products, packed
attention, the loss's softmax and LoRA B's backward to fp32 rounding, infinities and NaN included), in a whole model's
loss and gradients too; inputs they cannot take go to torch; without a compiler `auto` uses torch's ops and says why,
and a resumed run computes as it started."""

import json
import math

import pytest
import torch
from torch.nn import functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from helpers import lora_model
from llm_tuning import train
from llm_tuning.data.packing import PackedCollator, pack_rows, segment_lengths
from llm_tuning.errors import UserError
from llm_tuning.speed.activations import DropoutLinear, GatedProduct, keep_fewer_activations
from llm_tuning.speed.cpu_kernels import (
    SILU_PRODUCT,
    PackedAttention,
    RankInputLinear,
    cpu_kernels_choice,
    cross_entropy_gradient,
    dropout_apply,
    packed_attention,
    rms_norm_forward,
    use_cpu_kernels,
    use_torch_ops,
)
from llm_tuning.speed.cpu_kernels_build import kernels
from llm_tuning.speed.packed_attention import use_packed_attention

ROUNDING = {"atol": 2e-6, "rtol": 1e-5}


def test_rms_norm_forward_and_backward_equal_torch():
    torch.manual_seed(0)
    norm = LlamaRMSNorm(37, eps=1e-5)  # 37 columns: not a whole number of vectors
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = (torch.randn(3, 5, 37) * 4).requires_grad_()
    grad = torch.randn(3, 5, 37)
    norm(x).backward(grad)
    expected_x, expected_weight = x.grad.clone(), norm.weight.grad.clone()
    x.grad, norm.weight.grad = None, None
    out = rms_norm_forward(norm, x)
    torch.testing.assert_close(out, norm(x), **ROUNDING)
    assert out.grad_fn.name().startswith("RMSNorm")  # the kernel ran, not torch's fallback
    out.backward(grad)
    torch.testing.assert_close(x.grad, expected_x, **ROUNDING)
    torch.testing.assert_close(norm.weight.grad, expected_weight, **ROUNDING)


def test_silu_product_equals_torch_on_extreme_values():
    special = torch.tensor([-200.0, -100.0, -88.5, -87.5, -20.0, -1e-3, 0.0, 1e-3, 20.0, 88.5, 100.0, 200.0])
    gate = torch.cat([special, torch.tensor([float("nan"), float("inf"), -float("inf")]), torch.randn(1000) * 6])
    up, grad = torch.randn_like(gate), torch.randn_like(gate)
    forward, backward = SILU_PRODUCT
    torch.testing.assert_close(forward(gate, up), F.silu(gate) * up, equal_nan=True, **ROUNDING)
    grad_gate, grad_up = backward(grad, gate, up)
    torch.testing.assert_close(grad_gate, torch.ops.aten.silu_backward(grad * up, gate), equal_nan=True, **ROUNDING)
    torch.testing.assert_close(grad_up, grad * F.silu(gate), equal_nan=True, **ROUNDING)


def test_dropout_is_applied_bit_for_bit_as_torch_applies_it():
    torch.manual_seed(0)
    x = torch.randn(7, 33).requires_grad_()
    weight = torch.randn(4, 33).requires_grad_()
    grad = torch.randn(7, 4)
    results = []
    for apply_mask in (None, dropout_apply):
        torch.manual_seed(5)  # the same mask
        out = DropoutLinear.apply(x, weight, 0.1, False, apply_mask)
        out.backward(grad)
        results.append((out.detach(), x.grad.clone(), weight.grad.clone()))
        x.grad, weight.grad = None, None
    for plain, fused in zip(*results):
        assert torch.equal(plain, fused)


def test_inputs_the_kernels_cannot_take_go_to_torch():
    gate = torch.randn(6, 8).t()  # not contiguous
    up = torch.randn(8, 6)
    torch.testing.assert_close(GatedProduct.apply(gate, up, "SiLU", SILU_PRODUCT), F.silu(gate) * up)
    half = torch.randn(4, 16, dtype=torch.bfloat16)
    norm = LlamaRMSNorm(16).to(torch.bfloat16)
    assert torch.equal(rms_norm_forward(norm, half), norm(half))


def flash_per_sample(query, key, value, lengths):
    """What packed_sdpa computes without the kernel, for one row."""
    pieces = zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))
    attended = [F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True) for q, k, v in pieces]
    return torch.cat(attended, 2).transpose(1, 2)


def test_the_loss_softmax_equals_torchs_on_extreme_logits():
    torch.manual_seed(0)
    logits = torch.randn(5, 1001) * 30  # 1001 columns: not a whole number of vectors
    logits[1, :] = 0.0  # all equal
    logits[2, 7] = 1e4  # one dominates; the others underflow
    targets = torch.tensor([0, 1000, 7, 500, 3])
    log_probabilities = torch.log_softmax(logits, dim=-1)
    expected_grad = log_probabilities.exp()
    expected_grad[torch.arange(5), targets] -= 1.0
    ours = logits.clone()
    total = cross_entropy_gradient(ours, targets)
    assert total == pytest.approx(-log_probabilities[torch.arange(5), targets].sum().item(), rel=1e-6)
    torch.testing.assert_close(ours, expected_grad, **ROUNDING)
    nan = torch.full((1, 40), float("nan"))
    assert math.isnan(cross_entropy_gradient(nan, torch.tensor([3]))) and nan.isnan().all()  # NaN passes through


def test_lora_bs_backward_equals_torchs_with_torchs_own_forward():
    torch.manual_seed(0)
    x, weight, grad = torch.randn(3, 50, 8), torch.randn(37, 8), torch.randn(3, 50, 37)
    leaves = [(x.clone().requires_grad_(), weight.clone().requires_grad_()) for _ in range(2)]
    out_torch, out_ours = F.linear(*leaves[0]), RankInputLinear.apply(*leaves[1])
    assert torch.equal(out_ours, out_torch)
    out_torch.backward(grad)
    out_ours.backward(grad)
    for ours, theirs in zip(leaves[1], leaves[0]):
        assert ours.grad.shape == theirs.grad.shape
        torch.testing.assert_close(ours.grad, theirs.grad, **ROUNDING)


def test_packed_attention_equals_torchs_flash_kernel_per_sample(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # as in a part of a split step
    torch.manual_seed(0)
    segments = [[1, 70, 9], [33, 47]]  # a sample of one token, one longer than a block of query rows, a short one
    tokens, heads, kv_heads, dim = 80, 6, 2, 16
    memory = {name: torch.randn(2, tokens, count, dim) for name, count in (("q", heads), ("k", kv_heads), ("v", kv_heads))}
    inputs = {name: t.transpose(1, 2).requires_grad_() for name, t in memory.items()}  # transformers' layout
    out = packed_attention(inputs["q"], inputs["k"], inputs["v"], segments, dim**-0.5)
    assert out.grad_fn.name().startswith("PackedAttention") and out.shape == (2, tokens, heads, dim)
    grad = torch.randn_like(out)
    out.backward(grad)
    ours = {name: t.grad for name, t in inputs.items()}
    reference = {name: t.detach().clone().requires_grad_() for name, t in inputs.items()}
    expected = torch.cat([flash_per_sample(*(reference[n][r : r + 1] for n in "qkv"), segments[r]) for r in range(2)])
    expected.backward(grad)
    torch.testing.assert_close(out, expected, **ROUNDING)
    for name in "qkv":
        torch.testing.assert_close(ours[name], reference[name].grad, msg=name, **ROUNDING)


def test_packed_attention_leaves_to_torch_what_it_does_not_compute(monkeypatch):
    query, key = torch.randn(1, 4, 10, 8), torch.randn(1, 2, 10, 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # torch's flash kernel shares the heads out to its threads
    assert packed_attention(query, key, key, [[4, 6]], None) is None
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert packed_attention(query.double(), key.double(), key.double(), [[4, 6]], None) is None
    assert packed_attention(query, key, key, [[4, 5]], None) is None  # lengths that do not fill the row
    assert packed_attention(query, key, key, [[4, 6]], None) is not None


def packed_batch(model):
    """A packed batch of several samples per row, with the sample lengths LeanTrainer passes."""
    generator = torch.Generator().manual_seed(2)
    samples = []
    for length in (9, 40, 23, 17, 30, 5):
        ids = torch.randint(0, model.config.vocab_size, (length,), generator=generator).tolist()
        samples.append({"input_ids": ids, "labels": ids})
    batch = PackedCollator(pad_token_id=0)(pack_rows(samples, max_length=64))
    batch.pop("attention_mask")
    return {**batch, "packed_segments": segment_lengths(batch["position_ids"]), "use_cache": False}


def test_a_model_trains_as_with_torch_ops(tiny_llama, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # packed attention computes where torch has one thread
    models = {kind: lora_model(tiny_llama) for kind in ("torch", "fused")}
    for model in models.values():
        keep_fewer_activations(model)
        assert use_packed_attention(model)
    layers = models["torch"].config.num_hidden_layers
    routed = use_cpu_kernels(models["fused"])
    assert routed == [
        f"{2 * layers + 1} RMSNorms",
        f"{layers} gated products",
        f"{7 * layers} LoRA dropouts",
        f"{7 * layers} LoRA B layers",
        f"{layers} packed attentions",
        "1 loss softmax",
    ]
    attended = []
    monkeypatch.setattr(PackedAttention, "apply", lambda *a, apply=PackedAttention.apply: attended.append(1) or apply(*a))
    results = {}
    for kind, model in models.items():
        torch.manual_seed(1)  # the same dropout masks in both
        loss = model(**packed_batch(model)).loss
        loss.backward()
        results[kind] = loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert len(attended) == layers  # the fused model's attention ran in C, and only its
    torch.testing.assert_close(results["fused"][0], results["torch"][0], atol=1e-6, rtol=1e-6)
    grads_torch, grads_fused = results["torch"][1], results["fused"][1]
    assert grads_fused.keys() == grads_torch.keys() and any("lora_A" in n for n in grads_torch)
    for name in grads_torch:
        torch.testing.assert_close(grads_fused[name], grads_torch[name], atol=1e-6, rtol=1e-5, msg=name)
    use_torch_ops(models["fused"])  # as after training: it computes as the saved weights will after reloading
    with torch.no_grad():
        logits = [model.eval()(**packed_batch(model)).logits for model in models.values()]
    assert torch.equal(logits[0], logits[1])


def test_without_a_compiler_auto_uses_torch_and_fused_refuses(monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler")
    assert cpu_kernels_choice("auto", on_cpu=True, fp32=True, compiled=False) == {
        "chosen": "torch",
        "why": "no C compiler was found (CC, or cc, gcc, clang on PATH)",
    }
    with pytest.raises(UserError, match="train.cpu_kernels': the fused kernels cannot run here: no C compiler"):
        cpu_kernels_choice("fused", on_cpu=True, fp32=True, compiled=False)
    monkeypatch.delenv("CC")
    assert cpu_kernels_choice("auto", on_cpu=True, fp32=False, compiled=False)["chosen"] == "torch"
    assert cpu_kernels_choice("auto", on_cpu=True, fp32=True, compiled=False)["chosen"] == "fused"


def test_a_compiler_that_fails_leaves_auto_on_torchs_ops(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_TUNING_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # found on PATH, fails every build
    kernels.cache_clear()
    try:
        chosen = cpu_kernels_choice("auto", on_cpu=True, fp32=True, compiled=False)
        assert chosen["chosen"] == "torch" and "building cpu_kernels.c with" in chosen["why"]
        with pytest.raises(UserError, match="building cpu_kernels.c with .*false failed"):
            cpu_kernels_choice("fused", on_cpu=True, fp32=True, compiled=False)
    finally:
        kernels.cache_clear()


def test_the_run_summary_says_what_was_fused_and_a_resume_keeps_it(tiny_llama, tmp_path, monkeypatch):
    data = tmp_path / "data.jsonl"
    data.write_text('{"instruction": "say hi", "output": "hi there"}\n' * 8, encoding="utf-8")
    config = {
        "model": {"path": str(tiny_llama)},
        "method": {"name": "lora", "r": 4, "lora_dropout": 0.1},
        "data": {"path": str(data)},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 2, "save_steps": 1},
    }
    chosen = train(config)["speed_choices"]["cpu_kernels"]
    assert chosen["chosen"] == "fused" and any("RMSNorms" in line for line in chosen["routed"])
    monkeypatch.setenv("CC", "no-such-compiler")  # `auto` would now choose torch's ops; the resumed run keeps its own
    kernels.cache_clear()
    try:
        with pytest.raises(UserError, match=r"started with the fused CPU kernels \(run_record.json\) .* but no C compiler"):
            train({**config, "train": {**config["train"], "max_steps": 3, "resume": True}})
    finally:
        kernels.cache_clear()


def test_a_run_recorded_before_the_kernels_resumes_on_torchs_ops(tiny_llama, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text('{"instruction": "say hi", "output": "hi there"}\n' * 8, encoding="utf-8")
    config = {
        "model": {"path": str(tiny_llama)},
        "method": {"name": "lora", "r": 4},
        "data": {"path": str(data)},
        "train": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 2, "save_steps": 1},
    }
    train(config)
    record_file = tmp_path / "run" / "run_record.json"
    record = json.loads(record_file.read_text())
    record_file.write_text(json.dumps({k: v for k, v in record.items() if k != "cpu_kernels"}))
    resumed = train({**config, "train": {**config["train"], "max_steps": 3, "resume": True}})
    assert resumed["speed_choices"]["cpu_kernels"] == {
        "chosen": "torch",
        "why": "as when the run started (run_record.json)",
        "routed": [],
    }
