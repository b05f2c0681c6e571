"""The built-in ChatGLM against THUDM's own code: the fixture's logits and greedy answers were computed by the original
modeling_chatglm.py (transformers 4.40.2, fp32) on the same tiny checkpoint; ours must give the same within 1e-5. Also:
the checkpoint's own key names and shapes, .bin shards read with weights_only, the cache, rope_ratio, and the
parameter count of ChatGLM3-6B's config."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import CHATGLM3_TINY, chatglm3_expected
from llm_tuning.errors import UserError
from llm_tuning.models.chatglm.configuration import ChatGLMConfig
from llm_tuning.models.chatglm.layers import ChatGLMRotaryEmbedding
from llm_tuning.models.chatglm.modeling import ChatGLMForConditionalGeneration
from llm_tuning.params import plan

TOLERANCE = 1e-5
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.fixture(scope="module")
def chatglm():
    return ChatGLMForConditionalGeneration.from_pretrained(CHATGLM3_TINY, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def expected_logits():
    return load_file(CHATGLM3_TINY / "expected_logits.safetensors")


def test_logits_equal_the_original_code(chatglm, expected_logits):
    with torch.no_grad():
        for index, chat in enumerate(chatglm3_expected()["chats"]):
            logits = chatglm(torch.tensor([chat["sample"]])).logits[0]
            torch.testing.assert_close(logits, expected_logits[f"chat{index}"], atol=TOLERANCE, rtol=0)


def test_a_left_padded_batch_equals_the_original_code(chatglm, expected_logits):
    """Padding on the left with the original tokenizer's attention mask and position ids."""
    batch = {key: torch.tensor(value) for key, value in chatglm3_expected()["padded_batch"].items()}
    with torch.no_grad():
        logits = chatglm(**batch).logits[:, -4:]
    torch.testing.assert_close(logits, expected_logits["padded_batch_last4"], atol=TOLERANCE, rtol=0)


def test_greedy_answers_equal_the_original_code(chatglm):
    for chat in chatglm3_expected()["chats"]:
        output = chatglm.generate(torch.tensor([chat["prompt"]]), max_new_tokens=8, do_sample=False)
        assert output[0, len(chat["prompt"]) :].tolist() == chat["greedy"]


def test_generation_with_the_cache_equals_generation_without(chatglm):
    expected = chatglm3_expected()
    batch = {key: torch.tensor(value) for key, value in expected["padded_batch"].items() if key != "position_ids"}
    with_cache = chatglm.generate(**batch, max_new_tokens=12, do_sample=False, use_cache=True)
    without = chatglm.generate(**batch, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without)
    # and the padded batch answers what each prompt answers alone (the first 8 tokens: the original's greedy ids)
    width = batch["input_ids"].shape[1]
    assert [row[width : width + 8] for row in with_cache.tolist()] == [chat["greedy"] for chat in expected["chats"]]


def test_the_checkpoints_own_names_and_shapes_load_unchanged(chatglm):
    stored = load_file(CHATGLM3_TINY / "model.safetensors")
    ours = chatglm.state_dict()
    assert set(stored) == set(ours)
    assert {name: tuple(t.shape) for name, t in stored.items()} == {name: tuple(t.shape) for name, t in ours.items()}
    assert "transformer.rotary_pos_emb.inv_freq" in stored and "transformer.output_layer.weight" in stored
    assert "transformer.encoder.layers.1.self_attention.query_key_value.bias" in stored
    for name, tensor in stored.items():
        assert torch.equal(tensor, ours[name]), name


def test_bin_shards_without_the_rotary_buffer_load_with_weights_only(tmp_path, chatglm, monkeypatch):
    """A .bin checkpoint (as THUDM ships ChatGLM3-6B), here without inv_freq (as some checkpoints are): same model,
    and torch.load is asked for weights only."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(CHATGLM3_TINY / name, folder / name)
    state = {k: v for k, v in load_file(CHATGLM3_TINY / "model.safetensors").items() if not k.endswith("inv_freq")}
    torch.save(state, folder / "pytorch_model.bin")
    calls = []
    load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    loaded = ChatGLMForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    assert calls and all(calls), calls
    ids = torch.tensor([chatglm3_expected()["chats"][0]["sample"]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, chatglm(ids).logits)


def test_chatglm3_6b_parameter_count_is_the_tutorials():
    """`llm-tuning params` on ChatGLM3-6B's config.json (examples/models/chatglm3-6b): LoRA's default target for
    chatglm is query_key_value, r=8, as the tutorial prints it."""
    counted = plan({"model": {"path": str(EXAMPLES / "models" / "chatglm3-6b"), "trust_remote_code": True}})
    assert (counted["trainable_params"], counted["all_params"]) == (1_949_696, 6_245_533_696)
    assert [m["name"].split(".")[-4] for m in counted["modules"]] == ["query_key_value", "query_key_value"]


def test_rope_ratio_scales_the_rotary_base():
    rotary = ChatGLMRotaryEmbedding(ChatGLMConfig(kv_channels=16, rope_ratio=50.0))
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.tensor([[0, 3]]))
    angles = 3 / (500000.0 ** (torch.arange(0, 8, 2, dtype=torch.float) / 8))
    torch.testing.assert_close(cos[0, 1], angles.cos())
    torch.testing.assert_close(sin[0, 1], angles.sin())
    assert torch.equal(rotary.inv_freq, ChatGLMRotaryEmbedding(ChatGLMConfig(kv_channels=16)).inv_freq)  # stored unscaled


def test_attention_without_grouped_queries():
    """multi_query_attention: false (one key/value head per query head, each head's q, k, v side by side)."""
    config = ChatGLMConfig(
        num_layers=1, padded_vocab_size=64, hidden_size=32, ffn_hidden_size=48, kv_channels=8, num_attention_heads=4
    )
    torch.manual_seed(0)
    model = ChatGLMForConditionalGeneration(config).eval()
    assert model.transformer.encoder.layers[0].self_attention.query_key_value.out_features == 3 * 32
    ids = torch.randint(0, 64, (2, 6))
    assert torch.equal(
        model.generate(ids, max_new_tokens=5, do_sample=False),
        model.generate(ids, max_new_tokens=5, do_sample=False, use_cache=False),
    )


def test_what_is_not_built_in_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"the first ChatGLM-6B \(position_encoding_2d\) is not built in"):
        ChatGLMForConditionalGeneration(ChatGLMConfig(position_encoding_2d=True))
    with pytest.raises(UserError, match="quantization_bit=4: THUDM's own int4/int8 quantized weights is not built in"):
        ChatGLMForConditionalGeneration(ChatGLMConfig(num_layers=1, quantization_bit=4))


def test_a_saved_model_keeps_the_original_config_keys(tmp_path, chatglm):
    chatglm.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    original = json.loads((CHATGLM3_TINY / "config.json").read_text())
    for key in ("num_layers", "padded_vocab_size", "ffn_hidden_size", "kv_channels", "multi_query_group_num", "seq_length"):
        assert saved[key] == original[key], key
    assert saved["model_type"] == "chatglm" and saved["auto_map"] == original["auto_map"]
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(CHATGLM3_TINY / "model.safetensors"))
