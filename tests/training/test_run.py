import json
import os
import signal

import pytest

from helpers import add_trainer_callback, assert_only_trainable_tensors_changed, run_config
from llm_tuning import train
from llm_tuning.errors import UserError


def test_loss_falls_well_below_its_start(trained_run):
    losses = [e["loss"] for e in trained_run.summary["loss_history"]]
    assert len(losses) == 6  # every 5 of 30 steps
    assert losses[-1] < 0.75 * losses[0], losses


def test_every_lora_tensor_changes_and_no_base_tensor_does(trained_run):
    assert all("lora_" in name for name in trained_run.initial_state)
    assert_only_trainable_tensors_changed(trained_run)


def test_run_outputs_and_summary(trained_run, tiny_llama):
    out = trained_run.output_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.yaml", "log.jsonl", "run_summary.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-30"]  # save_total_limit 2
    summary = json.loads((out / "run_summary.json").read_text())
    for key in (
        "config",
        "trainable_params",
        "all_params",
        "loss_history",
        "train_runtime_s",
        "train_tokens",
        "tokens_per_s",
        "truncated_samples",
        "adjustments",
        "peak_memory_bytes",
    ):
        assert key in summary, key
    assert summary["status"] == "completed" and summary["steps"] == 30
    assert summary["template"] == "native" and summary["config"]["data"]["template"] == "native"
    assert summary["truncated_samples"] == 0
    assert 0 < summary["trainable_params"] < summary["all_params"]
    assert summary["peak_memory_bytes"] > 100 * 2**20
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged if "loss" in e] == [5, 10, 15, 20, 25, 30]


def test_train_tokens_count_non_padding_tokens(trained_run):
    from transformers import AutoTokenizer

    from llm_tuning.data.encode import encode_examples
    from llm_tuning.data.records import read_examples
    from llm_tuning.data.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(trained_run.model_path)
    config = trained_run.summary["config"]
    data = encode_examples(read_examples(config["data"]["path"]).examples, get_template("native", tokenizer), tokenizer, 64)
    # 4 records, batch 4: every step sees every record once.
    assert trained_run.summary["train_tokens"] == 30 * data.tokens


def test_prints_trainable_line_before_training(tiny_llama, records_path, tmp_path, capsys):
    train(run_config(tiny_llama, records_path, tmp_path / "run", train={"max_steps": 1}))
    out = capsys.readouterr().out
    assert "trainable params: " in out and " || all params: " in out and " || trainable%: " in out


def test_non_empty_output_dir_is_refused_and_kept(tiny_llama, records_path, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    config = run_config(tiny_llama, records_path, out, train={"max_steps": 1})
    with pytest.raises(UserError, match="is not empty; set train.overwrite=true"):
        train(config)
    config["train"]["overwrite"] = True
    with pytest.raises(UserError, match="is not an llm-tuning run; refusing to delete it"):
        train(config)
    assert (out / "notes.txt").read_text() == "precious"


def test_overwrite_replaces_an_earlier_run_only_when_the_new_one_can_start(tiny_llama, records_path, tmp_path):
    config = run_config(tiny_llama, records_path, tmp_path / "run", train={"max_steps": 2, "save_steps": 1})
    train(config)
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_text('{"instruction": "a"}\n')
    broken = run_config(tiny_llama, bad_data, tmp_path / "run", train={"overwrite": True})
    with pytest.raises(UserError, match="missing field 'output'"):
        train(broken)
    assert (tmp_path / "run" / "adapter_model.safetensors").is_file()  # the earlier run survives a failed start
    config["train"].update(overwrite=True, max_steps=1)
    assert train(config)["steps"] == 1
    assert not (tmp_path / "run" / "checkpoint-2").exists()


def test_resume_continues_from_the_last_checkpoint(tiny_llama, records_path, tmp_path):
    config = run_config(tiny_llama, records_path, tmp_path / "run", train={"max_steps": 6, "save_steps": 3, "logging_steps": 1})
    first = train(config)
    assert first["steps"] == 6
    config["train"].update(resume=True, max_steps=9)
    second = train(config)
    assert second["steps"] == 9
    assert [e["step"] for e in second["loss_history"]] == list(range(1, 10))
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert logged == list(range(1, 10))


def test_resume_without_checkpoint_is_an_error(tiny_llama, records_path, tmp_path):
    config = run_config(tiny_llama, records_path, tmp_path / "empty", train={"resume": True})
    with pytest.raises(UserError, match="holds no checkpoint-\\* folder"):
        train(config)


def test_ctrl_c_saves_a_checkpoint_and_stops(tiny_llama, records_path, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    class PressCtrlC(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    add_trainer_callback(monkeypatch, PressCtrlC())
    out = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job
    summary = train(run_config(tiny_llama, records_path, out, train={"max_steps": 50}))
    assert summary["status"] == "interrupted" and summary["steps"] == 3
    assert (out / "checkpoint-3" / "adapter_model.safetensors").is_file()
    assert (out / "adapter_model.safetensors").is_file()
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored


def test_truncated_samples_are_counted(tiny_llama, records_path, tmp_path):
    summary = train(run_config(tiny_llama, records_path, tmp_path / "run", data={"max_length": 24}, train={"max_steps": 1}))
    assert summary["truncated_samples"] == 2  # the two records whose ChatML encoding exceeds 24 tokens


def test_tensorboard_logging(tiny_llama, records_path, tmp_path):
    out = tmp_path / "run"
    train(run_config(tiny_llama, records_path, out, train={"max_steps": 2, "logging_steps": 1, "report_to": "tensorboard"}))
    assert list(out.rglob("events.out.tfevents.*"))


def test_bitless_config_errors_before_loading_anything(tmp_path, records_path):
    with pytest.raises(UserError, match="'data.path' is required"):
        train({"train": {"output_dir": str(tmp_path / "x")}})
    with pytest.raises(UserError, match="model.path '.*nope': no such folder"):
        train(run_config(tmp_path / "nope", records_path, tmp_path / "run"))


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "bloom"])
def test_default_lora_trains_and_reloads_on_every_architecture(tiny_models, records_path, tmp_path, architecture):
    import torch

    from helpers import train_capturing_model
    from llm_tuning.generation import Session

    config = run_config(tiny_models[architecture], records_path, tmp_path / "run", train={"max_steps": 8, "logging_steps": 1})
    config["method"] = {"name": "lora", "r": 8, "lora_alpha": 16}  # peft's per-architecture default targets
    run = train_capturing_model(config)
    losses = [e["loss"] for e in run.summary["loss_history"]]
    assert losses[-1] < losses[0]
    assert_only_trainable_tensors_changed(run)
    ids = torch.tensor([[9707, 11, 1879, 0, 3555]])
    with torch.no_grad():
        assert torch.equal(Session(adapter=run.output_dir).model(input_ids=ids).logits, run.model(input_ids=ids).logits)


def test_several_sources_validation_split_and_skipped_records(tiny_llama, records_path, tmp_path):
    chats = tmp_path / "chats.jsonl"
    conversation = {
        "conversations": [
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello"},
            {"from": "human", "value": "and you?"},
            {"from": "gpt", "value": "I am TuneBot."},
        ]
    }
    chats.write_text(json.dumps(conversation) + "\n" + '{"conversations": []}\n' + json.dumps(conversation) + "\n")
    data = {"path": [str(records_path), str(chats)], "skip_invalid": True, "val_ratio": 0.2, "system": "Be brief."}
    summary = train(run_config(tiny_llama, records_path, tmp_path / "run", data=data, train={"max_steps": 10, "eval_steps": 5}))
    assert summary["samples"] == 5 and summary["validation"]["samples"] == 1  # 6 good examples, 20% held out
    assert (
        summary["skipped_records"] == 1
        and "chats.jsonl:2: 'conversations' must be a non-empty list" in summary["skipped_examples"][0]
    )
    validation = summary["validation"]
    assert [e["step"] for e in validation["history"]] == [5, 10]
    assert validation["perplexity"] == pytest.approx(__import__("math").exp(validation["loss"]))
    assert validation["history"][-1]["loss"] < validation["history"][0]["loss"] * 1.5  # finite, sensible


def test_eval_steps_without_validation_data_is_an_error(tiny_llama, records_path, tmp_path):
    with pytest.raises(UserError, match="train.eval_steps needs validation data: set data.val_ratio"):
        train(run_config(tiny_llama, records_path, tmp_path / "run", train={"eval_steps": 5}))
    assert not (tmp_path / "run").exists()


def test_a_run_reads_its_tokenizer_once(tiny_llama, records_path, tmp_path, monkeypatch):
    """The memory estimate takes the tokenizer training loaded: a large one takes seconds to read."""
    import transformers

    read = []
    original = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: read.append(a) or original(*a, **k))
    summary = train(run_config(tiny_llama, records_path, tmp_path / "run", train={"max_steps": 1}))
    assert summary["status"] == "completed" and summary["estimated_peak_memory_bytes"] > 0
    assert read == [(str(tiny_llama),)]
