"""Fixtures shared by the tests: tiny random Llama, Qwen2 and BLOOM models saved as model folders, a small
data file, and trained runs shared by a session. The helpers they use are in helpers.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import (
    ARCHITECTURES,
    BH,
    BL,
    BV,
    CHATGLM3_TINY,
    METHOD_CASES,
    RECORDS,
    SERVER_KEY,
    ZH_RECORD,
    F,
    H,
    L,
    ServerProcess,
    TrainedRun,
    TrainingProcesses,
    V,
    run_config,
    save_tiny_model,
    train_capturing_model,
)
from llm_tuning.serving.models import ModelRegistry
from llm_tuning.training.run import train


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """architecture -> model folder (with the Qwen tokenizer and its ChatML template)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: save_tiny_model(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def tiny_llama_plain(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer has no chat template (so `auto` picks the plain template)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-plain") / "llama", "llama", chat_template=False)


@pytest.fixture(scope="session")
def records_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "records.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in RECORDS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def many_records_path(tmp_path_factory) -> Path:
    """The records three times over (12): several batches per epoch, so that a resume can fall inside one."""
    path = tmp_path_factory.mktemp("data") / "records12.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS * 3), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tiny_llama, records_path, tmp_path_factory) -> TrainedRun:
    """LoRA on the tiny Llama with its native (ChatML) template: 30 steps, a checkpoint every 10."""
    output_dir = tmp_path_factory.mktemp("runs") / "native"
    return train_capturing_model(run_config(tiny_llama, records_path, output_dir, train={"save_steps": 10}))


@pytest.fixture(scope="session")
def trained_plain_run(tiny_llama_plain, records_path, tmp_path_factory) -> TrainedRun:
    """A short LoRA run with the plain template (the tokenizer has no chat template)."""
    output_dir = tmp_path_factory.mktemp("runs") / "plain"
    return train_capturing_model(run_config(tiny_llama_plain, records_path, output_dir, train={"max_steps": 4}))


@pytest.fixture(scope="session")
def zh_run(tiny_llama, tmp_path_factory) -> Path:
    """A whole-model run (full, 20 steps) that learned ZH_RECORD's answer by heart; its run folder."""
    root = tmp_path_factory.mktemp("zh")
    data = root / "zh.jsonl"
    data.write_text(json.dumps(ZH_RECORD, ensure_ascii=False) + "\n", encoding="utf-8")
    config = run_config(tiny_llama, data, root / "zh-run", train={"max_steps": 20, "batch_size": 1})
    config["method"] = {"name": "full"}
    train(config)
    return root / "zh-run"


@pytest.fixture(scope="session")
def method_run(tiny_models, records_path, tmp_path_factory):
    """method_run(case, architecture) -> TrainedRun, trained once per session (12 steps) and shared."""
    runs: dict[tuple[str, str], TrainedRun] = {}

    def get(case: str, architecture: str, gradient_checkpointing: bool = False) -> TrainedRun:
        key = (case, architecture, gradient_checkpointing)
        if key not in runs:
            method, learning_rate = METHOD_CASES[case]
            output_dir = tmp_path_factory.mktemp("method-runs") / f"{case}-{architecture}"
            config = run_config(
                tiny_models[architecture],
                records_path,
                output_dir,
                train={
                    "max_steps": 12,
                    "logging_steps": 1,
                    "learning_rate": learning_rate,
                    "gradient_checkpointing": gradient_checkpointing,
                },
            )
            config["method"] = dict(method)
            runs[key] = train_capturing_model(config)
        return runs[key]

    return get


@pytest.fixture(scope="session")
def training_processes(tmp_path_factory) -> TrainingProcesses:
    """Runs `llm-tuning train` in child processes (forked, with a kill armed where asked)."""
    return TrainingProcesses(tmp_path_factory.mktemp("training-processes"))


@pytest.fixture(scope="session")
def chatglm_folder(tmp_path_factory) -> Path:
    """The tiny ChatGLM3 checkpoint as THUDM ships one: with its own code files, which must never run (they raise)."""
    folder = tmp_path_factory.mktemp("chatglm") / "chatglm3-tiny"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json", "generation_config.json"):
        (folder / name).write_bytes((CHATGLM3_TINY / name).read_bytes())
    for name in ("configuration_chatglm.py", "modeling_chatglm.py", "tokenization_chatglm.py"):
        (folder / name).write_text(f'raise RuntimeError("{name} ran: the built-in architecture must be used")\n')
    return folder


@pytest.fixture(scope="session")
def chatglm_run(chatglm_folder, records_path, tmp_path_factory) -> TrainedRun:
    """LoRA with its default target (query_key_value) on the tiny ChatGLM3, trust_remote_code as the tutorials set it."""
    config = run_config(chatglm_folder, records_path, tmp_path_factory.mktemp("runs") / "chatglm", train={"logging_steps": 1})
    config["model"]["trust_remote_code"] = True
    config["method"] = {"name": "lora", "r": 8, "lora_alpha": 16}
    return train_capturing_model(config)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    llama = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": H,
        "intermediate_size": F,
        "num_hidden_layers": L,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": V,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }
    bloom = {
        "architectures": ["BloomForCausalLM"],
        "model_type": "bloom",
        "hidden_size": BH,
        "n_layer": BL,
        "n_head": 16,
        "vocab_size": BV,
    }
    folders = {}
    for name, config in (("llama2-7b", llama), ("bloom-1b4", bloom)):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config))  # nothing else: no weights, no tokenizer
        folders[name] = root / name
    return folders


@pytest.fixture(scope="session")
def comparison(tiny_llama, tmp_path_factory):
    """A finished comparison on the tiny Llama: the base row, LoRA, bottleneck adapters, and BitFit, which fails
    (Llama has no biases). 20 records, 2 held out; 4 steps each."""
    from llm_tuning import compare

    root = tmp_path_factory.mktemp("compare")
    data = root / "records.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS * 5), encoding="utf-8")
    path = root / "compare.yaml"
    path.write_text(
        f"base:\n  model: {{path: {tiny_llama}}}\n  data: {{path: {data}, max_length: 64}}\n"
        "  train: {max_steps: 4, batch_size: 4, learning_rate: 1.0e-2, logging_steps: 1, save_steps: 1000}\n"
        "variants:\n  - {name: lora, method: {name: lora, r: 4, target_modules: all-linear}}\n"
        "  - {name: adapter, method: {name: adapter, bottleneck_size: 8}}\n  - {name: bitfit, method: {name: bitfit}}\n",
        encoding="utf-8",
    )
    report = compare(path, output=root / "out", eval_prompts=2, max_new_tokens=4)
    return path, root / "out", report


@pytest.fixture(scope="session")
def lora_registry(trained_run, method_run):
    """The tiny Llama ("llama") with two LoRA runs on it: my-run (trained_run) and second."""
    second = method_run("lora", "llama").output_dir
    return ModelRegistry(adapters=[f"my-run={trained_run.output_dir}", f"second={second}"])


@pytest.fixture(scope="session")
def served(trained_run, method_run, tmp_path_factory):
    """`llm-tuning serve` with two LoRA runs on the tiny Llama (my-run: trained_run; second: another LoRA run) and an
    API key, for the whole session."""
    second = method_run("lora", "llama").output_dir
    log = tmp_path_factory.mktemp("serve") / "server.log"
    server = ServerProcess(
        log, "--adapter", f"my-run={trained_run.output_dir}", "--adapter", f"second={second}", "--api-key", SERVER_KEY
    )
    yield server
    server.stop()
