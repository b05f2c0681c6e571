"""GGUF export checked by llama.cpp itself: the file loads in llama-cpp-python, renders the training prompt from its
own chat template, stops at the trained stop token, and answers greedily as transformers does on the same weights."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import require_tool, run_config
from llm_tuning import train
from llm_tuning.cli import main
from llm_tuning.data.templates import get_template
from llm_tuning.errors import UserError
from llm_tuning.export import llama_cpp, verify
from llm_tuning.export.gguf import export_gguf

CONVERSATIONS = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "user", "content": "你是谁？"}],
    [
        {"role": "user", "content": "Add the numbers"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "2 and 3"},
    ],
]
NEW_TOKENS = 24


@pytest.fixture(autouse=True, scope="module")
def llama_cpp_installed():
    try:
        llama_cpp.converter_dir(), llama_cpp.version()
    except UserError as e:
        require_tool(False, str(e))


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory):
    """quant -> (GGUF path, merged model folder), each exported once."""
    root = tmp_path_factory.mktemp("gguf")
    files = {}

    def get(quant):
        if quant not in files:
            path = root / f"model-{quant}.gguf"
            export_gguf(path, adapter=trained_run.output_dir, quant=quant)
            files[quant] = path
        return files[quant]

    return get


@pytest.fixture(scope="session")
def merged(trained_run, tmp_path_factory):
    from llm_tuning import merge

    return merge(trained_run.output_dir, tmp_path_factory.mktemp("merged") / "model")


def prompts(folder):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = get_template("native", tokenizer)
    return tokenizer, template, [template.prompt_ids(tokenizer, c) for c in CONVERSATIONS]


@pytest.mark.parametrize("quant, dtype", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_llama_cpp_answers_as_transformers_does(exported, merged, quant, dtype):
    llm = verify.load_gguf(exported(quant), context=256)
    tokenizer, template, prompt_ids = prompts(merged)
    model = verify.rounded_like(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval(), dtype)
    stops = template.stop_ids(tokenizer)
    for conversation, ids in zip(CONVERSATIONS, prompt_ids):
        assert verify.chat_prompt_ids(llm, conversation) == ids  # the template travelled with the file
        expected = verify.transformers_greedy(model, ids, NEW_TOKENS, stops)
        answer = verify.llama_cpp_greedy(llm, ids, NEW_TOKENS)
        assert_same_answer_up_to_a_tie(model, ids, answer, expected, dtype, tokenizer.decode(ids))
    assert llm.token_eos() == template.answer_end_id(tokenizer)


def assert_same_answer_up_to_a_tie(model, prompt_ids, answer, expected, dtype, prompt):
    """llama.cpp's greedy answer is transformers', token for token, unless the two part where transformers' best token
    leads llama.cpp's by less than one rounding step of the file's type at the logits' scale (llama.cpp rounds the
    activations too, and adds in another order), after enough agreement that the weights are clearly the same."""
    agreed = next((i for i, (a, b) in enumerate(zip(answer, expected)) if a != b), min(len(answer), len(expected)))
    if answer == expected:
        return
    assert agreed >= 8 and agreed < min(len(answer), len(expected)), (prompt, answer, expected)
    logits = verify.transformers_prompt_logits(model, prompt_ids + expected[:agreed])  # at the next position
    margin = float(logits[expected[agreed]] - logits[answer[agreed]])
    assert 0 <= margin <= torch.finfo(dtype).eps * float(logits.abs().max()), (prompt, agreed, margin)


def test_q8_0_stays_close(exported, merged):
    llm = verify.load_gguf(exported("q8_0"), context=256)
    tokenizer, template, prompt_ids = prompts(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    shares, gaps = [], []
    for ids in prompt_ids:
        reference = verify.transformers_greedy(model, ids, NEW_TOKENS, template.stop_ids(tokenizer))
        shares.append(verify.same_tokens(verify.llama_cpp_greedy(llm, ids, NEW_TOKENS), reference))
        logits = verify.transformers_prompt_logits(model, ids)
        gaps.append(float((verify.llama_cpp_prompt_logits(llm, ids) - logits).abs().max() / logits.abs().max()))
    assert min(gaps) < 0.05 and sum(shares) / len(shares) >= 0.5, (shares, gaps)


def test_k_quant_goes_through_the_quantizer(exported, trained_run):
    path = exported("q4_k_m")
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["quant"] == "q4_k_m" and record["run"] == str(trained_run.output_dir) and record["llama_cpp_version"]
    llm = verify.load_gguf(path, context=128)
    assert llm.metadata["general.file_type"] == "15"  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert path.stat().st_size < exported("f16").stat().st_size
    assert len(verify.llama_cpp_greedy(llm, [9707, 11], 4)) >= 1


def test_an_existing_file_is_kept_and_nothing_is_left_behind(exported, trained_run, capsys):
    path = exported("f16")
    before = path.read_bytes()
    assert main(["export", "--adapter", str(trained_run.output_dir), "--output", str(path)]) == 2
    assert "exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []


def test_methods_that_cannot_merge_are_refused(method_run, tmp_path):
    with pytest.raises(UserError, match="method prefix cannot be merged: its prefixes are extra keys and values"):
        export_gguf(tmp_path / "x.gguf", adapter=method_run("prefix", "llama").output_dir)
    assert list(tmp_path.iterdir()) == []


def test_an_architecture_llama_cpp_cannot_convert_is_named(tmp_path, tiny_llama):
    from transformers import OPTConfig

    folder = tmp_path / "opt"
    config = OPTConfig(
        vocab_size=151665,
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=32,
        num_attention_heads=2,
        word_embed_proj_dim=16,
        max_position_embeddings=64,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(folder)
    with pytest.raises(UserError, match="llama.cpp's converter failed on .*opt: .*OPTForCausalLM.*not supported"):
        export_gguf(tmp_path / "opt.gguf", model=folder)
    assert not (tmp_path / "opt.gguf").exists()


def test_bad_arguments_are_one_line_errors(tmp_path, trained_run):
    with pytest.raises(UserError, match=r"--quant 'q9' is not one of: f32, f16, bf16, q8_0, q4_0"):
        export_gguf(tmp_path / "x.gguf", adapter=trained_run.output_dir, quant="q9")
    with pytest.raises(UserError, match="name the file FILE.gguf"):
        export_gguf(tmp_path / "x.bin", adapter=trained_run.output_dir)


def test_merge_makes_the_trained_stop_token_the_eos(tiny_llama, records_path, tmp_path):
    """A ChatML run on a tokenizer whose EOS is another token: the merged model stops at <|im_end|>."""
    from llm_tuning import merge

    config = run_config(tiny_llama, records_path, tmp_path / "run", data={"template": "chatml"}, train={"max_steps": 1})
    train(config)
    folder = merge(tmp_path / "run", tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token == "<|im_end|>"
    generation = json.loads((folder / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]


def test_cli_export_with_an_ollama_modelfile(trained_run, tmp_path, capsys):
    output = tmp_path / "tuned.gguf"
    assert main(["export", "--adapter", str(trained_run.output_dir), "--output", str(output), "--quant", "q8_0", "--ollama"]) == 0
    modelfile = (tmp_path / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./tuned.gguf\nTEMPLATE") and 'PARAMETER stop "<|im_end|>"' in modelfile
    record = json.loads((tmp_path / "tuned.gguf.json").read_text())
    assert record["modelfile"] == str(tmp_path / "Modelfile") and record["template"] == "native"
    assert "[1/3] merging" in capsys.readouterr().err


# llama.cpp's converter reads a ChatGLM3 vocabulary through the folder's own tokenization_chatglm.py (THUDM's, which the
# merge copies from the base); this stand-in gives it what it reads (the sentencepiece model, pieces by id), nothing more
CHATGLM_TOKENIZER_STAND_IN = """import os

from sentencepiece import SentencePieceProcessor

SPECIAL = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]


class SentencePiece:
    def __init__(self, path):
        self.sp_model = SentencePieceProcessor(model_file=path)


class ChatGLMTokenizer:
    @classmethod
    def register_for_auto_class(cls, *args, **kwargs):
        pass

    @classmethod
    def from_pretrained(cls, folder, *args, **kwargs):
        return cls(os.path.join(folder, "tokenizer.model"))

    def __init__(self, path):
        self.tokenizer = SentencePiece(path)
        size = self.tokenizer.sp_model.vocab_size()
        self.special = {token: size + index for index, token in enumerate(SPECIAL)}

    def _convert_id_to_token(self, index):
        for token, token_id in self.special.items():
            if token_id == index:
                return token
        sp = self.tokenizer.sp_model
        return sp.IdToPiece(index) if 2 < index < sp.vocab_size() else ""

    def get_vocab(self):
        sp = self.tokenizer.sp_model
        return {**{sp.IdToPiece(i): i for i in range(sp.vocab_size())}, **self.special}
"""


def test_a_chatglm3_run_exports_and_llama_cpp_answers_as_transformers_does(chatglm_folder, records_path, tmp_path):
    base = tmp_path / "chatglm3"
    base.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"):
        (base / name).write_bytes((chatglm_folder / name).read_bytes())
    (base / "tokenization_chatglm.py").write_text(CHATGLM_TOKENIZER_STAND_IN)
    config = run_config(base, records_path, tmp_path / "run", model={"trust_remote_code": True}, train={"max_steps": 6})
    config["method"] = {"name": "lora", "r": 8, "lora_alpha": 16}
    train(config)
    path = tmp_path / "chatglm3.gguf"
    export_gguf(path, adapter=tmp_path / "run", quant="f16")
    from llm_tuning import load_model, merge

    model, tokenizer = load_model(merge(tmp_path / "run", tmp_path / "merged"))
    template = get_template("chatglm3", tokenizer)
    llm = verify.load_gguf(path, context=256)
    try:
        rounded = verify.rounded_like(model, torch.float16)
        for conversation in CONVERSATIONS[:2]:
            prompt = template.prompt_ids(tokenizer, conversation)
            expected = verify.transformers_greedy(rounded, prompt, 8, template.stop_ids(tokenizer))
            assert verify.llama_cpp_greedy(llm, prompt, 8) == expected
        text = "Who are you? 你是谁？"
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer(text, add_special_tokens=False)["input_ids"]
    finally:
        llm.close()
