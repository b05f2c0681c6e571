"""training/sharding.py: what FSDP and DeepSpeed settings mean, and the one-line refusals of what cannot run here."""

import json

import pytest

from llm_tuning.config.load import load_config
from llm_tuning.errors import UserError
from llm_tuning.training.sharding import check_sharding, decoder_layer_class, sharding_of, trainer_arguments


def config(*overrides):
    return load_config(None, ["model.path=unused", *overrides])


def zero_file(tmp_path, text: str):
    path = tmp_path / "ds.json"
    path.write_text(text)
    return path


def test_the_choices_mean_what_each_process_holds(tmp_path):
    assert sharding_of(config()).kind == "ddp"
    full, grad_op = sharding_of(config("train.fsdp=full_shard")), sharding_of(config("train.fsdp=shard_grad_op"))
    assert (full.weights_sharded, full.states_sharded) == (True, True)
    assert (grad_op.weights_sharded, grad_op.states_sharded) == (False, True)
    offload = {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}
    zero3 = sharding_of(config(f"train.deepspeed={zero_file(tmp_path, json.dumps({'zero_optimization': offload}))}"))
    assert (zero3.kind, zero3.weights_sharded, zero3.optimizer_offloaded, zero3.weights_offloaded) == ("zero", True, True, True)


def test_fsdp_wraps_each_decoder_layer(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert decoder_layer_class(model) == "LlamaDecoderLayer"
    assert trainer_arguments(config(), model) == {}
    arguments = trainer_arguments(config("train.fsdp=shard_grad_op"), model)
    assert arguments == {
        "fsdp": "shard_grad_op auto_wrap",
        "fsdp_config": {"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]},
    }


def test_fsdp_on_a_cpu_is_refused_not_silently_ddp():
    """accelerate turns a CPU run into DDP whatever the Trainer's fsdp argument says: we say so instead."""
    with pytest.raises(UserError, match=r"^train.fsdp=full_shard needs GPUs: .* silently train with DDP"):
        check_sharding(config("train.fsdp=full_shard"), has_gpu=False)
    check_sharding(config("train.fsdp=full_shard"), has_gpu=True)
    with pytest.raises(UserError, match="^method adapter with train.fsdp: bottleneck adapters are saved from whole"):
        check_sharding(config("train.fsdp=full_shard", "method.name=adapter"), has_gpu=True)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"zero_optimization": {"stage": 2},\n "bf16": {enabled: true}}', r"ds.json:2: not valid JSON"),
        ('{"zero_optimization": {"stage": 1}}', r"sets zero_optimization.stage to 1; llm-tuning runs ZeRO stage 2 or 3"),
        ("[1, 2]", r"must hold a JSON object"),
    ],
)
def test_a_bad_deepspeed_file_is_named_with_what_is_wrong(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        sharding_of(config(f"train.deepspeed={zero_file(tmp_path, text)}"))


def test_deepspeed_needs_its_package_and_a_gpu(tmp_path, monkeypatch):
    path = zero_file(tmp_path, '{"zero_optimization": {"stage": 2}}')
    with pytest.raises(UserError, match="not found"):
        sharding_of(config(f"train.deepspeed={tmp_path / 'missing.json'}"))
    with pytest.raises(UserError, match="one of them, not both"):
        sharding_of(config(f"train.deepspeed={path}", "train.fsdp=full_shard"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "deepspeed" else object())
    with pytest.raises(UserError, match=r"pip install 'llm-tuning\[deepspeed\]'"):
        check_sharding(config(f"train.deepspeed={path}"), has_gpu=True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())
    with pytest.raises(UserError, match="GPUs only and none is visible here"):
        check_sharding(config(f"train.deepspeed={path}"), has_gpu=False)
