"""Every method trains, changes exactly what it trains, reloads to identical logits and serves."""

import pytest
import torch
from peft import PrefixTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM

from helpers import METHOD_CASES, assert_only_trainable_tensors_changed, run_config
from llm_tuning import train
from llm_tuning.config.load import load_config
from llm_tuning.errors import UserError
from llm_tuning.generation import GenerationOptions, Session
from llm_tuning.methods.registry import get_method

ARCHITECTURES = ("llama", "bloom")
CASES = [(case, arch) for case in METHOD_CASES for arch in ARCHITECTURES if not (case == "bitfit" and arch == "llama")]
IDS = torch.tensor([[9707, 11, 1879, 0, 3555, 525, 498, 30], [40, 1079, 264, 1273, 13, 151645, 0, 0]])
MASK = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits


@pytest.mark.parametrize("case, architecture", CASES)
def test_method_trains_only_what_it_should(method_run, case, architecture):
    run = method_run(case, architecture)
    losses = [e["loss"] for e in run.summary["loss_history"]]
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert_only_trainable_tensors_changed(run)


@pytest.mark.parametrize("case, architecture", CASES)
def test_method_reloads_to_identical_logits_and_serves(method_run, case, architecture):
    run = method_run(case, architecture)
    session = Session(adapter=run.output_dir)
    # Within float rounding: for P-tuning peft saves the encoder's output, which the reloaded model looks up
    # where the trained one computed it (the other methods reload bit for bit).
    torch.testing.assert_close(logits(session.model), logits(run.model), atol=1e-5, rtol=0)
    answers = session.generate(
        [[{"role": "user", "content": "Who are you?"}], [{"role": "user", "content": "hi"}]], GenerationOptions(max_new_tokens=3)
    )
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_native_methods_save_only_what_changed(method_run):
    run = method_run("freeze", "llama")
    files = {p.name for p in run.output_dir.iterdir() if p.is_file()}
    assert "trained_weights.safetensors" in files and "adapter_config.json" not in files
    from safetensors.torch import load_file

    saved = load_file(run.output_dir / "trained_weights.safetensors")
    assert set(saved) == set(run.initial_state)  # the last layer, the head and the final norm; nothing else
    assert run.summary["saved_bytes"] == (run.output_dir / "trained_weights.safetensors").stat().st_size


def test_bitfit_on_a_model_without_biases_is_an_error(tiny_llama, records_path, tmp_path):
    config = run_config(tiny_llama, records_path, tmp_path / "run")
    config["method"] = {"name": "bitfit"}
    with pytest.raises(UserError, match="method bitfit has nothing to train: LlamaForCausalLM has no bias parameters"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_bad_method_options_are_one_line_errors(tiny_llama, records_path, tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'method.r'.*valid keys in 'method': name, num_virtual_tokens"):
        load_config(None, ["method.name=prefix", "method.r=4"])
    with pytest.raises(UserError, match=r"'method.encoder_reparameterization_type'.*not one of: MLP, LSTM"):
        load_config(None, ["method.name=ptuning", "method.encoder_reparameterization_type=GRU"])
    config = run_config(tiny_llama, records_path, tmp_path / "run")
    config["method"] = {"name": "lora", "target_modules": ["no_such_module"]}
    with pytest.raises(UserError, match="method lora: Target modules .*no_such_module.* not found"):
        train(config)
    config["method"] = {"name": "freeze", "trainable_layers": 9}
    with pytest.raises(UserError, match="'method.trainable_layers': 9 but the model has 2 layers"):
        train(config)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("projection", [False, True])
def test_prefix_tuning_under_checkpointing_gives_the_same_loss_and_gradients(tiny_models, architecture, projection):
    """transformers 5 drops the prefix cache in checkpointed layers (peft + checkpointing fails with a size
    mismatch); with our fix the checkpointed run equals the plain one."""
    options = load_config(
        None,
        [
            "method.name=prefix",
            "method.num_virtual_tokens=5",
            f"method.prefix_projection={str(projection).lower()}",
            "method.encoder_hidden_size=16",
        ],
    ).method

    def loss_and_grads(checkpointing: bool, fixed: bool = True):
        model = AutoModelForCausalLM.from_pretrained(tiny_models[architecture], dtype=torch.float32)
        torch.manual_seed(0)
        if fixed:
            model = get_method("prefix").apply(model, options)
        else:  # peft alone
            model = get_peft_model(
                model,
                PrefixTuningConfig(
                    task_type="CAUSAL_LM", num_virtual_tokens=5, prefix_projection=projection, encoder_hidden_size=16
                ),
            )
        if checkpointing:
            model.get_base_model().activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        loss = model(input_ids=IDS, attention_mask=MASK, labels=IDS.masked_fill(MASK == 0, -100)).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain_loss, plain_grads = loss_and_grads(checkpointing=False)
    loss, grads = loss_and_grads(checkpointing=True)
    assert torch.equal(loss, plain_loss)
    assert plain_grads.keys() == grads.keys() and all(g is not None for g in grads.values())
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError):  # the upstream failure this fix is for
        loss_and_grads(checkpointing=True, fixed=False)


def test_prefix_tuning_trains_with_checkpointing_end_to_end(method_run):
    plain = method_run("prefix", "bloom")
    checkpointed = method_run("prefix", "bloom", gradient_checkpointing=True)
    assert [e["loss"] for e in checkpointed.summary["loss_history"]] == pytest.approx(
        [e["loss"] for e in plain.summary["loss_history"]], abs=1e-5
    )


def test_prefix_with_reentrant_checkpointing_is_refused(tiny_llama, records_path, tmp_path):
    config = run_config(
        tiny_llama, records_path, tmp_path / "run", train={"gradient_checkpointing": True, "checkpointing_reentrant": True}
    )
    config["method"] = {"name": "prefix"}
    with pytest.raises(UserError, match="does not work with reentrant checkpointing; set train.checkpointing_reentrant=false"):
        train(config)


def test_lora_with_reentrant_checkpointing_trains(tiny_llama, records_path, tmp_path):
    # Reentrant checkpointing with frozen embeddings needs input gradients, which train() enables.
    config = run_config(
        tiny_llama,
        records_path,
        tmp_path / "run",
        train={"max_steps": 6, "logging_steps": 1, "gradient_checkpointing": True, "checkpointing_reentrant": True},
    )
    losses = [e["loss"] for e in train(config)["loss_history"]]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("case", ["prompt", "ptuning_lstm", "prefix", "freeze"])
def test_chat_serves_every_kind_of_method(method_run, case, capsys):
    from llm_tuning import chat

    lines = iter(["hello", "and again", "/exit"])
    chat(
        adapter=method_run(case, "llama").output_dir, options=GenerationOptions(max_new_tokens=3), read=lambda prompt: next(lines)
    )
    assert capsys.readouterr().out.count("assistant> ") == 2
