import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from helpers import ZH_RECORD, logits
from llm_tuning import chat, generate
from llm_tuning.detokenize import INCOMPLETE
from llm_tuning.generation import GenerationOptions, Session, read_prompts


def test_reloaded_adapter_gives_identical_logits(trained_run):
    session = Session(adapter=trained_run.output_dir)
    assert torch.equal(logits(session.model), logits(trained_run.model))


def test_adapter_loads_with_plain_peft(trained_run):
    base = AutoModelForCausalLM.from_pretrained(trained_run.model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, trained_run.output_dir).eval()
    assert torch.equal(logits(model), logits(trained_run.model))
    untouched_base = AutoModelForCausalLM.from_pretrained(trained_run.model_path, dtype=torch.float32).eval()
    assert not torch.allclose(logits(untouched_base), logits(model), atol=1e-3)  # the adapter does something


def test_batched_generation_pads_left_and_matches_single(trained_run):
    prompts = ["Who are you?", "Translate to French\ngood morning, my dear friend", "你是谁？"]
    options = GenerationOptions(max_new_tokens=8)
    session = Session(adapter=trained_run.output_dir)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    batched = session.generate(conversations, options)
    single = [session.generate([c], options)[0] for c in conversations]
    assert batched == single
    assert any(batched)


def test_generate_function_with_base_and_adapter(trained_run):
    options = GenerationOptions(max_new_tokens=6)
    tuned = generate(prompts=["Who are you?"], adapter=trained_run.output_dir, options=options)
    base = generate({"model": {"path": str(trained_run.model_path)}}, ["Who are you?"], options=options)
    assert len(tuned) == len(base) == 1 and tuned != base


def test_chat_keeps_history_and_resets(trained_run, monkeypatch, capsys):
    seen = []
    stream = Session.stream

    def spy(self, conversation, options, write=None):
        seen.append([m["role"] for m in conversation])
        return stream(self, conversation, options, write)

    monkeypatch.setattr(Session, "stream", spy)
    lines = iter(["hello", "and again", "/reset", "fresh start", "/exit"])
    chat(adapter=trained_run.output_dir, options=GenerationOptions(max_new_tokens=4), read=lambda prompt: next(lines))
    assert seen == [["user"], ["user", "assistant", "user"], ["user"]]
    assert capsys.readouterr().out.count("assistant> ") == 3


def test_read_prompts(tmp_path):
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"instruction": "Add", "input": "1 and 2"}) + "\n")
    assert read_prompts(tmp_path / "p.txt") == ["one", "two"]
    assert read_prompts(tmp_path / "p.jsonl") == ["Add\n1 and 2"]


def test_answers_cut_by_max_new_tokens_end_on_a_whole_character(zh_run):
    session = Session(adapter=zh_run)
    question = [[{"role": "user", "content": ZH_RECORD["instruction"]}]]
    whole = session.generate(question, GenerationOptions(max_new_tokens=20))[0]
    assert whole.endswith(ZH_RECORD["output"])  # learned by heart: the cuts below fall inside its characters
    answers = [session.generate(question, GenerationOptions(max_new_tokens=limit))[0] for limit in range(1, 16)]
    assert not [answer for answer in answers if INCOMPLETE in answer]
    assert all(whole.startswith(answer) for answer in answers)
    for limit, answer in enumerate(answers, start=1):  # chat streams the same text, in whole characters
        pieces = []
        assert session.stream(question[0], GenerationOptions(max_new_tokens=limit), write=pieces.append) == answer
        assert "".join(pieces) == answer and all(INCOMPLETE not in piece for piece in pieces)
