"""Bottleneck adapters: the identity before training, trained alone, reloaded to the same logits, on every family
and with every training mode the other methods have."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers import logits, run_config
from llm_tuning import train
from llm_tuning.config.load import load_config
from llm_tuning.errors import UserError
from llm_tuning.generation import Session
from llm_tuning.memory.estimate import estimate
from llm_tuning.methods import adapter
from llm_tuning.methods.registry import get_method


def adapted(path, *overrides):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    options = load_config(None, ["method.name=adapter", *overrides]).method
    return get_method("adapter").apply(model, options)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "bloom"])
@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_identity_at_initialisation(tiny_models, architecture, placement):
    base = AutoModelForCausalLM.from_pretrained(tiny_models[architecture], dtype=torch.float32).eval()
    model = adapted(tiny_models[architecture], f"method.placement={placement}", "method.bottleneck_size=4")
    assert torch.equal(logits(model), logits(base))
    per_layer = 1 if placement == "pfeiffer" else 2
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2 * per_layer * (2 * 32 * 4 + 4 + 32)
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".bottleneck_adapter." not in n)


def test_placement_is_after_each_sublayer_output(tiny_models):
    """houlsby: after the attention output projection and the MLP down projection; pfeiffer: the MLP only."""
    houlsby = [name for name, _ in adapter.adapted_projections(adapted(tiny_models["llama"]), adapter.Options())]
    assert houlsby == [f"model.layers.{i}.{part}" for i in (0, 1) for part in ("self_attn.o_proj", "mlp.down_proj")]
    bloom = adapted(tiny_models["bloom"], "method.placement=pfeiffer", "method.layers_to_transform=[1]")
    assert [n for n, p in bloom.named_parameters() if p.requires_grad][0].startswith("transformer.h.1.mlp.dense_4h_to_h.")


def test_the_adapter_changes_the_output_once_trained(tiny_models):
    model = adapted(tiny_models["llama"], "method.non_linearity=tanh")
    before = logits(model)
    for name, parameter in model.named_parameters():
        if name.endswith("up.weight"):
            torch.nn.init.normal_(parameter, std=0.1)
    assert not torch.allclose(logits(model), before)


def test_trains_saves_only_the_adapters_and_reloads(method_run):
    run = method_run("adapter", "llama")
    losses = [e["loss"] for e in run.summary["loss_history"]]
    assert losses[-1] < losses[0]
    files = {p.name for p in run.output_dir.iterdir()}
    assert {adapter.WEIGHTS_FILE, adapter.CONFIG_FILE} <= files and "adapter_config.json" not in files
    saved = load_file(run.output_dir / adapter.WEIGHTS_FILE)
    assert set(saved) == set(run.initial_state)  # the adapters' own tensors, nothing of the base
    assert run.summary["saved_bytes"] == (run.output_dir / adapter.WEIGHTS_FILE).stat().st_size
    reloaded = Session(adapter=run.output_dir).model
    assert torch.equal(logits(reloaded), logits(run.model))


@pytest.mark.parametrize(
    "settings",
    [
        {"train": {"gradient_checkpointing": True}},
        {"train": {"gradient_checkpointing": True, "checkpointing_reentrant": True}},
        {"data": {"packing": False}},
        {"model": {"dtype": "bfloat16"}, "train": {"precision": "bf16"}},
        {"model": {"quantization": "4bit"}},
    ],
    ids=["checkpointing", "reentrant", "unpacked", "bf16", "4bit"],
)
def test_trains_in_every_mode(tiny_llama, records_path, tmp_path, settings):
    sections = {"train": {"max_steps": 6, "logging_steps": 1}}
    for section, values in settings.items():
        sections[section] = {**sections.get(section, {}), **values}
    config = run_config(tiny_llama, records_path, tmp_path / "run", **sections)
    config["method"] = {"name": "adapter", "bottleneck_size": 8}
    losses = [e["loss"] for e in train(config)["loss_history"]]
    assert losses[-1] < losses[0], losses


def test_checkpointing_gives_the_same_losses(tiny_llama, records_path, tmp_path):
    def losses(checkpointing):
        config = run_config(
            tiny_llama,
            records_path,
            tmp_path / str(checkpointing),
            train={"max_steps": 4, "logging_steps": 1, "gradient_checkpointing": checkpointing},
        )
        config["method"] = {"name": "adapter", "bottleneck_size": 8}
        return [e["loss"] for e in train(config)["loss_history"]]

    assert losses(True) == pytest.approx(losses(False), abs=1e-6)


def test_estimate_counts_the_adapters_activations(tiny_llama):
    lora = estimate(None, [f"model.path={tiny_llama}"])
    with_adapters = estimate(None, [f"model.path={tiny_llama}", "method.name=adapter", "method.bottleneck_size=16"])
    assert with_adapters["trainable_params"] == 2 * 2 * (2 * 32 * 16 + 16 + 32)
    assert with_adapters["components"]["activations"] > 0
    assert with_adapters["components"]["activations"] != lora["components"]["activations"]


def test_unknown_layer_is_a_one_line_error(tiny_llama):
    with pytest.raises(UserError, match=r"'method.layers_to_transform': layer 5 does not exist; the model has 2"):
        adapted(tiny_llama, "method.layers_to_transform=[5]")
