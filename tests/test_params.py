"""`llm-tuning params` counts from config.json alone (meta device) and agrees with hand derivations."""

import json

import pytest

from helpers import BH, BL, BLOOM_LAYER_BIASES, LLAMA_7B, LLAMA_LAYER, F, H, L, V
from llm_tuning.cli import main
from llm_tuning.errors import UserError
from llm_tuning.params import plan


def count(folder, *overrides):
    report = plan(None, [f"model.path={folder}", *overrides])
    return report["trainable_params"], report["all_params"]


def test_known_answers(shapes):
    assert count(shapes["bloom-1b4"], "method.name=full") == (1_303_111_680, 1_303_111_680)
    assert count(shapes["bloom-1b4"]) == (1_572_864, 1_304_684_544)  # default LoRA: query_key_value, r 8
    assert count(shapes["llama2-7b"]) == (4_194_304, 6_742_609_920)  # default LoRA: q_proj, v_proj, r 8
    assert LLAMA_7B == 6_742_609_920 - 4_194_304


@pytest.mark.parametrize(
    "overrides, trainable, added",
    [
        (["method.name=full"], LLAMA_7B, 0),
        (["method.name=freeze", "method.trainable_layers=2"], 2 * LLAMA_LAYER, 0),
        (["method.name=freeze", "method.trainable_layers=1", "method.train_lm_head=true"], LLAMA_LAYER + V * H + H, 0),
        (["method.name=freeze", "method.trainable_layers=null", "method.trainable_modules=[mlp]"], L * 3 * H * F, 0),
        (["method.name=prompt", "method.num_virtual_tokens=20"], 20 * H, 20 * H),
        (
            ["method.name=ptuning", "method.num_virtual_tokens=20", "method.encoder_hidden_size=512"],
            20 * H + (H * 512 + 512) + (512 * 512 + 512) + (512 * H + H),
            None,
        ),
        (["method.name=prefix", "method.num_virtual_tokens=20"], 20 * L * 2 * H, 20 * L * 2 * H),
        (
            [
                "method.name=prefix",
                "method.num_virtual_tokens=20",
                "method.prefix_projection=true",
                "method.encoder_hidden_size=512",
            ],
            20 * H + (H * 512 + 512) + (512 * 2 * L * H + 2 * L * H),
            None,
        ),
        (
            ["method.name=lora", "method.r=16", "method.target_modules=all-linear"],
            L * 16 * (4 * (H + H) + 2 * (H + F) + (F + H)),
            None,
        ),
        (["method.name=lora", r"method.target_modules=.*\.(q|k)_proj"], L * 2 * 8 * (H + H), None),
        (
            ["method.name=lora", "method.target_modules=[q_proj, k_proj]", "method.layers_to_transform=[0, 1]"],
            2 * 2 * 8 * (H + H),
            None,
        ),
        (["method.name=ia3"], L * (H + H + F), None),  # k_proj and v_proj outputs, down_proj input
        # bottleneck adapters: 2 x hidden x bottleneck + bottleneck + hidden each; 2 per layer (houlsby), 1 (pfeiffer)
        (["method.name=adapter"], L * 2 * (2 * H * (H // 16) + H // 16 + H), L * 2 * (2 * H * (H // 16) + H // 16 + H)),
        (["method.name=adapter", "method.placement=pfeiffer", "method.bottleneck_size=64"], L * (2 * H * 64 + 64 + H), None),
        (["method.name=adapter", "method.layers_to_transform=[0, 31]"], 2 * 2 * (2 * H * 256 + 256 + H), None),
        # modules_to_save trains (and adds) a full copy of the head beside the default LoRA
        (["method.name=lora", "method.modules_to_save=[lm_head]"], L * 2 * 8 * (H + H) + V * H, L * 2 * 8 * (H + H) + V * H),
    ],
)
def test_derivations_for_every_method_on_llama2_7b(shapes, overrides, trainable, added):
    counted, total = count(shapes["llama2-7b"], *overrides)
    assert counted == trainable
    if added is not None:
        assert total == LLAMA_7B + added


def test_bitfit_on_bloom_counts_every_bias(shapes):
    all_biases = BL * BLOOM_LAYER_BIASES + 2 * BH  # + the embedding norm's and ln_f's
    assert count(shapes["bloom-1b4"], "method.name=bitfit")[0] == all_biases
    lora = BL * 8 * (BH + 3 * BH)
    assert count(shapes["bloom-1b4"], "method.bias=all")[0] == lora + all_biases


def test_inconsistent_peft_options_are_one_line_errors(shapes):
    with pytest.raises(UserError, match="method lora: `layers_to_transform` cannot be used when `target_modules` is a str"):
        count(shapes["llama2-7b"], r"method.target_modules=.*q_proj", "method.layers_to_transform=[0]")


def test_bitfit_on_llama_is_an_error(shapes):
    with pytest.raises(UserError, match="has no bias parameters"):
        count(shapes["llama2-7b"], "method.name=bitfit")


def test_prompt_text_init_needs_a_tokenizer_or_a_count(shapes, tiny_llama):
    with pytest.raises(UserError, match="needs the model's tokenizer"):
        count(shapes["llama2-7b"], "method.name=prompt", "method.prompt_tuning_init_text=Be nice.")
    trainable, _ = count(tiny_llama, "method.name=prompt", "method.prompt_tuning_init_text=Be nice.")
    assert trainable == 3 * 32  # "Be nice." is 3 tokens for the Qwen tokenizer; hidden 32


def test_cli_prints_peft_line_and_breakdown(shapes, capsys):
    assert main(["params", "--json", str(_empty_config(shapes)), f"model.path={shapes['bloom-1b4']}"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["modules"] == [
        {
            "name": "base_model.model.transformer.h.*.self_attention.query_key_value.lora_A.default.weight",
            "tensors": 24,
            "params": 24 * 8 * BH,
        },
        {
            "name": "base_model.model.transformer.h.*.self_attention.query_key_value.lora_B.default.weight",
            "tensors": 24,
            "params": 24 * 3 * BH * 8,
        },
    ]
    assert main(["params", f"model.path={shapes['llama2-7b']}"]) == 0  # no config file: defaults plus overrides
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "trainable params: 4,194,304 || all params: 6,742,609,920 || trainable%: 0.0622"


def _empty_config(shapes):
    path = shapes["llama2-7b"].parent / "empty.yaml"
    path.write_text("{}\n")
    return path
