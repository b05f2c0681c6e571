"""Several runs on one base, each by name; runs that cannot share a server are refused before anything loads."""

import shutil
from pathlib import Path

import pytest

from helpers import ZH_RECORD, answer_all, chat_job
from llm_tuning.errors import UserError
from llm_tuning.generation import GenerationOptions, Session
from llm_tuning.serving.batching import Batcher
from llm_tuning.serving.models import ModelRegistry, parse_adapter, plan


def test_adapter_arguments_name_the_run(tmp_path):
    assert parse_adapter(f"tuned={tmp_path}") == ("tuned", tmp_path)
    assert parse_adapter(str(tmp_path)) == (tmp_path.name, tmp_path)
    odd = tmp_path / "a=b"
    odd.mkdir()
    assert parse_adapter(str(odd)) == ("a=b", odd)  # a folder whose name has '=' is a folder


def test_lists_the_base_by_its_folder_name_and_each_run(lora_registry):
    assert list(lora_registry.served) == ["llama", "my-run", "second"]
    assert lora_registry.served["my-run"].parent == "llama" and lora_registry.context_length == 512


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("config and adapter", "not both"),
        ("other base", "differ in base model"),
        ("other template", r"differ in template \(native and chatml\)"),
        ("other kind", r"differ in kind \(LORA and PREFIX_TUNING\)"),
        ("whole model and adapter", "served alone"),
        ("bottleneck and adapter", "bottleneck adapters.*served alone"),
        ("same name", "two models would be named 'twin'"),
        ("named like the base", "two models would be named 'llama'"),
        ("no weights", "holds no trained weights"),
    ],
)
def test_runs_that_cannot_share_a_server_are_refused(
    case, fragment, trained_run, trained_plain_run, method_run, zh_run, tmp_path
):
    lora = str(trained_run.output_dir)
    config, adapters = None, [lora]
    if case == "config and adapter":
        config = {"model": {"path": str(trained_run.model_path)}}
    elif case == "other base":
        adapters.append(str(trained_plain_run.output_dir))
    elif case == "other template":  # a copy of the run that says it trained with the ChatML format
        shutil.copytree(lora, tmp_path / "chatml")
        config_file = tmp_path / "chatml" / "config.yaml"
        config_file.write_text(config_file.read_text().replace("template: native", "template: chatml"))
        adapters.append(str(tmp_path / "chatml"))
    elif case == "other kind":
        adapters.append(str(method_run("prefix", "llama").output_dir))
    elif case == "whole model and adapter":
        adapters = [str(zh_run), lora]
    elif case == "bottleneck and adapter":
        adapters = [lora, str(method_run("adapter", "llama").output_dir)]
    elif case == "same name":
        adapters = [f"twin={lora}", f"twin={method_run('lora', 'llama').output_dir}"]
    elif case == "named like the base":
        adapters = [f"llama={lora}"]
    else:
        (tmp_path / "config.yaml").write_text((Path(lora) / "config.yaml").read_text())
        adapters = [str(tmp_path)]
    with pytest.raises(UserError, match=fragment):
        plan(config, (), adapters)


def test_a_whole_model_run_is_served_alone_and_answers_as_generate(zh_run):
    registry = ModelRegistry(adapters=[str(zh_run)])
    assert list(registry.served) == ["zh-run"]  # its base's weights are gone: the base is not served
    text, finish, tokens = answer_all(Batcher(registry), [chat_job(registry, "zh-run", ZH_RECORD["instruction"], 30)])[0]
    conversation = [[{"role": "user", "content": ZH_RECORD["instruction"]}]]
    assert text == Session(adapter=zh_run).generate(conversation, GenerationOptions(max_new_tokens=30))[0]
    assert text.endswith(ZH_RECORD["output"]) and finish == "stop" and tokens < 30


def test_prompt_learning_runs_share_a_base_too(method_run):
    run = method_run("prefix", "llama").output_dir
    registry = ModelRegistry(adapters=[f"prefix={run}"])
    answers = answer_all(Batcher(registry), [chat_job(registry, name, "Who are you?", 8) for name in ("prefix", "llama")])
    conversation, options = [[{"role": "user", "content": "Who are you?"}]], GenerationOptions(max_new_tokens=8)
    assert answers[0][0] == Session(adapter=run).generate(conversation, options)[0]
    assert answers[1][0] == Session(adapter=run, base_only=True).generate(conversation, options)[0] != answers[0][0]


def test_a_bottleneck_adapter_run_is_served_alone(method_run):
    run = method_run("adapter", "llama").output_dir
    registry = ModelRegistry(adapters=[f"bottleneck={run}"])
    assert list(registry.served) == ["bottleneck"]  # its hooks change the base for good
    text = answer_all(Batcher(registry), [chat_job(registry, "bottleneck", "Who are you?", 8)])[0][0]
    conversation = [[{"role": "user", "content": "Who are you?"}]]
    assert text == Session(adapter=run).generate(conversation, GenerationOptions(max_new_tokens=8))[0]
