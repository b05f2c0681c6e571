import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import logits
from llm_tuning import merge
from llm_tuning.data.templates import PLAIN
from llm_tuning.errors import UserError
from llm_tuning.files import manifest_problem


def test_merged_model_matches_adapter_and_loads_without_llm_tuning(trained_run, tmp_path):
    out = merge(trained_run.output_dir, tmp_path / "merged")
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    assert manifest_problem(out) is None  # written whole, with its files' sizes and sha256
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged), logits(trained_run.model), atol=1e-4, rtol=0)


def test_plain_run_carries_its_template_into_the_merged_tokenizer(trained_plain_run, tmp_path):
    out = merge(trained_plain_run.output_dir, tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Who are you?"}]
    served = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    served = served["input_ids"] if hasattr(served, "keys") else served
    assert list(served) == PLAIN.prompt_ids(tokenizer, messages)


def test_merge_never_clobbers(trained_run, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty; pass --overwrite"):
        merge(trained_run.output_dir, taken)
    with pytest.raises(UserError, match="not a model merged by llm-tuning; refusing to delete it"):
        merge(trained_run.output_dir, taken, overwrite=True)
    assert (taken / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="run directory not found"):
        merge(tmp_path / "nothing", tmp_path / "out")


@pytest.mark.parametrize(
    "case, architecture",
    [
        ("ia3", "llama"),
        ("ia3", "bloom"),
        ("lora_dora_rslora", "llama"),
        ("full", "llama"),
        ("freeze", "bloom"),
        ("bitfit", "bloom"),
    ],
)
def test_merge_of_every_mergeable_method_matches(method_run, case, architecture, tmp_path):
    run = method_run(case, architecture)
    merged = AutoModelForCausalLM.from_pretrained(merge(run.output_dir, tmp_path / "merged"), dtype=torch.float32).eval()
    torch.testing.assert_close(logits(merged), logits(run.model), atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", ["prompt", "ptuning_mlp", "prefix", "adapter"])
def test_merge_of_methods_that_cannot_fold_is_refused_with_the_reason(method_run, case, tmp_path):
    run = method_run(case, "llama")
    with pytest.raises(
        UserError,
        match=(
            r"cannot be merged: its (virtual tokens|prefixes|adapters) (are extra|apply a non-linear function).*"
            r"(nothing to fold into the weights|cannot be folded into a weight); serve it with --adapter"
        ),
    ):
        merge(run.output_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
