"""ChatGLM3 through llm-tuning as the tutorials use it (model.trust_remote_code: true, the folder's own code beside the
weights): the built-in architecture is used and its code never runs, training lowers the loss with LoRA's default
target, packing, checkpointing and quantized bases work, and a merged folder reloads, with the original's files kept."""

import json

import pytest
import torch
from peft import PeftModel

from helpers import chatglm3_expected, run_config, train_capturing_model
from llm_tuning import load_model, merge
from llm_tuning.generation import GenerationOptions, Session
from llm_tuning.memory.estimate import estimate
from llm_tuning.models.builtin import architecture_of
from llm_tuning.models.chatglm.modeling import ChatGLMForConditionalGeneration
from llm_tuning.training import trainer as trainer_module


def losses(run) -> list[float]:
    return [entry["loss"] for entry in run.summary["loss_history"]]


def test_training_uses_the_built_in_model_and_the_loss_falls(chatglm_run):
    summary = chatglm_run.summary
    assert summary["status"] == "completed" and summary["template"] == "chatglm3"
    assert any("the model's own code is not run" in note and "ChatGLM" in note for note in summary["adjustments"])
    assert isinstance(chatglm_run.model.get_base_model(), ChatGLMForConditionalGeneration)
    trained = {name.split(".")[-4] for name, p in chatglm_run.model.named_parameters() if p.requires_grad}
    assert trained == {"query_key_value"}  # peft's default LoRA target for chatglm
    assert sum(losses(chatglm_run)[-5:]) < 0.5 * sum(losses(chatglm_run)[:5]), losses(chatglm_run)


def test_packed_rows_attend_per_sample(chatglm_folder, records_path, tmp_path, monkeypatch):
    """Packing on (the default): positions restart per sample and speed/packed_attention reaches ChatGLM's attention."""
    switched = []
    use = trainer_module.use_packed_attention
    monkeypatch.setattr(trainer_module, "use_packed_attention", lambda model: switched.append(use(model)) or switched[-1])
    config = run_config(chatglm_folder, records_path, tmp_path / "run", train={"max_steps": 2})
    assert train_capturing_model(config).summary["status"] == "completed"
    assert switched == [True]


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing_gives_the_same_losses(chatglm_folder, records_path, tmp_path, chatglm_run, reentrant):
    config = run_config(
        chatglm_folder,
        records_path,
        tmp_path / "run",
        train={"max_steps": 4, "logging_steps": 1, "gradient_checkpointing": True, "checkpointing_reentrant": reentrant},
    )
    config["method"] = {"name": "lora", "r": 8, "lora_alpha": 16}
    run = train_capturing_model(config)
    assert losses(run) == pytest.approx(losses(chatglm_run)[:4], rel=1e-4)


@pytest.mark.parametrize(
    "quantization", [{"quantization": "8bit"}, {"quantization": "4bit", "quant_type": "nf4"}], ids=["8bit", "4bit"]
)
def test_lora_trains_on_a_quantized_chatglm(chatglm_folder, records_path, tmp_path, quantization):
    pytest.importorskip("bitsandbytes")
    config = run_config(
        chatglm_folder, records_path, tmp_path / "run", model=quantization, train={"max_steps": 8, "logging_steps": 1}
    )
    run = train_capturing_model(config)
    assert sum(losses(run)[-3:]) < sum(losses(run)[:3]), losses(run)
    layer = run.model.get_base_model().transformer.encoder.layers[0].mlp.dense_h_to_4h
    assert type(layer).__name__ == ("Linear8bitLt" if quantization["quantization"] == "8bit" else "Linear4bit")


def test_merge_writes_a_folder_that_reloads_with_the_originals_files(chatglm_run, chatglm_folder, tmp_path):
    merged = merge(chatglm_run.output_dir, tmp_path / "merged")
    for name in ("tokenizer.model", "tokenizer_config.json", "modeling_chatglm.py", "configuration_chatglm.py"):
        assert (merged / name).read_bytes() == (chatglm_folder / name).read_bytes(), name
    config = json.loads((merged / "config.json").read_text())
    assert config["model_type"] == "chatglm" and config["num_layers"] == 2 and "auto_map" in config
    model, tokenizer = load_model(merged, trust_remote_code=True)
    base = ChatGLMForConditionalGeneration.from_pretrained(chatglm_folder, dtype=torch.float32).eval()
    ids = torch.tensor([chatglm3_expected()["chats"][0]["sample"]])
    with torch.no_grad():
        before = base(ids).logits
        adapted = PeftModel.from_pretrained(base, chatglm_run.output_dir).eval()
        torch.testing.assert_close(model.eval()(ids).logits, adapted(ids).logits, atol=1e-4, rtol=0)
        assert not torch.allclose(before, adapted(ids).logits, atol=1e-3)  # the merge changed something
    assert tokenizer("你好")["input_ids"][:2] == [701, 703]


def test_generate_and_chat_answer_in_the_chatglm3_format(chatglm_run):
    session = Session(adapter=chatglm_run.output_dir)
    assert session.template.name == "chatglm3"
    prompt = [{"role": "user", "content": "Who are you?"}]
    assert session.template.prompt_ids(session.tokenizer, prompt) == chatglm3_expected()["chats"][0]["prompt"]
    answers = session.generate([prompt, [{"role": "user", "content": "你是谁？"}]])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    options = GenerationOptions(max_new_tokens=6)
    assert session.stream(prompt, options, write=lambda text: None) == session.generate([prompt], options)[0]


def test_the_estimate_counts_chatglms_layers(chatglm_folder, records_path, tmp_path):
    config = run_config(chatglm_folder, records_path, tmp_path / "run")
    config["method"] = {"name": "lora"}
    lean = estimate(config)
    plain = estimate({**config, "train": {**config["train"], "lean_activations": False}})
    assert 0 < lean["components"]["activations"] < plain["components"]["activations"]  # the fused SwiGLU is rewritten
    assert lean["trainable_params"] == 2 * 8 * (64 + 128)  # LoRA r=8 on query_key_value, two layers


def test_the_first_chatglm_is_not_taken_for_a_built_in_one(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "chatglm", "position_encoding_2d": True, "vocab_size": 130528})
    )
    assert architecture_of(str(tmp_path)) is None
