"""Packing: rows of whole samples, positions restarting per sample, no attention across samples, and the same
per-sample loss as unpacked training."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_tuning.data.encode import IGNORE_INDEX
from llm_tuning.data.packing import PackedCollator, pack_rows, packing_unsupported_reason, segment_lengths
from llm_tuning.speed.packed_attention import PACKED_ATTENTION, use_packed_attention


def random_samples(count: int, vocab: int, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(count):
        length = int(torch.randint(6, 30, (1,), generator=generator))
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        prompt = length // 3
        samples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return samples


def test_rows_hold_every_sample_once_within_max_length():
    samples = random_samples(40, 1000)
    rows = pack_rows(samples, max_length=64)
    assert all(len(row["input_ids"]) <= 64 for row in rows)
    packed = sorted(tuple(row["input_ids"][start : start + n]) for row in rows for start, n in zip(_starts(row), row["lengths"]))
    assert packed == sorted(tuple(s["input_ids"]) for s in samples)
    assert len(rows) <= -(-sum(len(s["input_ids"]) for s in samples) // 64) + 1  # first-fit decreasing fills rows
    for row in rows:
        assert row["position_ids"] == [p for n in row["lengths"] for p in range(n)]


def _starts(row):
    starts, at = [], 0
    for n in row["lengths"]:
        starts.append(at)
        at += n
    return starts


def per_sample_losses(model, batch: dict) -> list[float]:
    """Mean cross-entropy per labelled run of each sample (split at the sample boundaries)."""
    if "position_ids" in batch and model.config._attn_implementation == PACKED_ATTENTION:
        batch = dict(batch, packed_segments=segment_lengths(batch["position_ids"]))  # as LeanTrainer passes them
    logits = model(**batch, use_cache=False).logits.float()  # a cache would switch off packed-sequence masking
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], reduction="none")
    return losses, batch["labels"][:, 1:] != IGNORE_INDEX


def load(path, per_sample_attention: bool):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    if per_sample_attention:
        assert use_packed_attention(model)
    return model


@pytest.mark.parametrize("per_sample_attention", [False, True], ids=["block-diagonal mask", "per-sample attention"])
@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_packed_and_unpacked_samples_have_the_same_loss(tiny_models, architecture, per_sample_attention):
    model = load(tiny_models[architecture], per_sample_attention)
    samples = random_samples(6, model.config.vocab_size, seed=3)
    rows = pack_rows(samples, max_length=80)
    assert any(len(row["lengths"]) > 1 for row in rows)  # something really is packed
    batch = PackedCollator(pad_token_id=0)(rows)
    batch.pop("attention_mask")  # as LeanTrainer does: restarting positions make attention block-diagonal
    with torch.no_grad():
        losses, labelled = per_sample_losses(model, batch)
        packed = {}
        for r, row in enumerate(rows):
            for start, n in zip(_starts(row), row["lengths"]):
                ids = tuple(row["input_ids"][start : start + n])
                span = slice(start, start + n - 1)
                packed[ids] = losses[r, span][labelled[r, span]].mean().item()
        for sample in samples:
            one = {"input_ids": torch.tensor([sample["input_ids"]]), "labels": torch.tensor([sample["labels"]])}
            loss, mask = per_sample_losses(model, one)
            assert packed[tuple(sample["input_ids"])] == pytest.approx(loss[0][mask[0]].mean().item(), abs=1e-5)


@pytest.mark.parametrize("per_sample_attention", [False, True], ids=["block-diagonal mask", "per-sample attention"])
def test_a_sample_never_sees_the_one_before_it(tiny_llama, per_sample_attention):
    model = load(tiny_llama, per_sample_attention)
    first, second = random_samples(2, model.config.vocab_size, seed=5)
    row = pack_rows([first, second], max_length=100)[0]
    batch = PackedCollator(pad_token_id=0)([row])
    batch.pop("attention_mask")
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    boundary = row["lengths"][0]
    changed["input_ids"][0, :boundary] = (changed["input_ids"][0, :boundary] + 7) % model.config.vocab_size
    if per_sample_attention:
        batch["packed_segments"] = changed["packed_segments"] = segment_lengths(batch["position_ids"])
    with torch.no_grad():
        before, after = model(**batch, use_cache=False).logits, model(**changed, use_cache=False).logits
    assert not torch.allclose(before[0, :boundary], after[0, :boundary])  # the changed sample itself differs
    torch.testing.assert_close(before[0, boundary:], after[0, boundary:], atol=1e-6, rtol=0)  # the next one does not


def test_bloom_and_prompt_learning_train_unpacked(tiny_models):
    from peft import PrefixTuningConfig, get_peft_model

    bloom = AutoModelForCausalLM.from_pretrained(tiny_models["bloom"])
    assert "position ids" in packing_unsupported_reason(bloom)
    llama = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    assert packing_unsupported_reason(llama) is None
    prefix = get_peft_model(llama, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert "virtual tokens" in packing_unsupported_reason(prefix)


def test_per_sample_attention_gives_the_mask_paths_gradients(tiny_models):
    """Same loss and gradients as transformers' block-diagonal mask, on a packed batch with row padding and GQA."""
    samples = random_samples(7, 1000, seed=11)
    batch = PackedCollator(pad_token_id=0)(pack_rows(samples, max_length=60))
    batch.pop("attention_mask")
    assert any(n > 1 for n in map(len, segment_lengths(batch["position_ids"])))
    grads = []
    for per_sample in (False, True):
        model = load(tiny_models["llama"], per_sample).train()
        assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
        inputs = dict(batch, packed_segments=segment_lengths(batch["position_ids"])) if per_sample else batch
        model(**inputs, use_cache=False).loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_per_sample_attention_keeps_padding_masks_for_unpacked_batches(tiny_llama):
    """The switched model still honours an attention mask (unpacked, padded batches) exactly as sdpa does."""
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]]),
        "attention_mask": torch.tensor([[1] * 5, [1, 1, 1, 0, 0]]),
    }
    plain, switched = load(tiny_llama, False), load(tiny_llama, True)
    assert switched.config._attn_implementation == PACKED_ATTENTION
    with torch.no_grad():
        torch.testing.assert_close(switched(**batch).logits, plain(**batch).logits, atol=0, rtol=0)
