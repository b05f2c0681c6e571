"""Make tests/models/fixtures/chatglm3-tiny/: a tiny random ChatGLM3-shaped checkpoint, a small sentencepiece model, and
what THUDM's own code computes on them (token ids, chat inputs, logits, greedy answers), so that the tests check
llm-tuning's built-in ChatGLM against the original on every change.

THUDM's code (configuration_chatglm.py, modeling_chatglm.py, quantization.py and tokenization_chatglm.py of
THUDM/chatglm3-6b) does not run on transformers 5, and it is not part of this repository. Run this script in a scratch
environment with the transformers it was written for, giving the folder that holds those four files:

    python3 -m venv /tmp/glm-venv
    /tmp/glm-venv/bin/pip install torch==2.13.0 transformers==4.40.2 sentencepiece protobuf safetensors
    /tmp/glm-venv/bin/python scripts/chatglm3_reference.py --original-code DIR [--output tests/models/fixtures/chatglm3-tiny]

It imports nothing of llm-tuning. docs/models.md says what the tests compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
CODE_FILES = ("configuration_chatglm.py", "modeling_chatglm.py", "quantization.py", "tokenization_chatglm.py")
# ChatGLM3-6B's config.json with the sizes shrunk (same keys, same switches: grouped-query attention, qkv bias)
CONFIG = {
    "_name_or_path": "THUDM/chatglm3-6b",
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "auto_map": {
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
        "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
    },
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True,
    "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True,
    "ffn_hidden_size": 96,
    "fp32_residual_connection": False,
    "hidden_dropout": 0.0,
    "hidden_size": 64,
    "kv_channels": 16,
    "layernorm_epsilon": 1e-05,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "num_attention_heads": 4,
    "num_layers": 2,
    "original_rope": True,
    "padded_vocab_size": 768,
    "post_layer_norm": True,
    "rmsnorm": True,
    "seq_length": 256,
    "use_cache": True,
    "torch_dtype": "float32",
    "tie_word_embeddings": False,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
SENTENCEPIECE_VOCAB = 700  # + ChatGLM3's 9 special tokens, under padded_vocab_size
# ChatGLM3's tokenizer: BPE with byte fallback, no normalisation, a dummy prefix, whitespace kept as it is
SENTENCEPIECE_OPTIONS = dict(
    model_type="bpe",
    byte_fallback=True,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=True,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    character_coverage=0.9995,
)
TEXTS = [
    "Hello, world! How are you today?",
    "你好，请介绍一下你自己。",
    "def add(a, b):\n    return a + b\n",
    "Numbers 12345 and  two  spaces, a tab\tand an emoji 🙂.",
    "\n",
    " leading space and trailing space ",
    "混合 English 和中文 text 123。",
]
CHATS = [  # (query, history) as build_chat_input takes them, and the answer a training sample ends with
    ("Who are you?", [], "I am TuneBot."),
    ("你是谁？", [{"role": "system", "content": "You are a helpful assistant."}], "我是 TuneBot。"),
    (
        "And now?",
        [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"}],
        "Still here.\nSecond line.",
    ),
]


def corpus() -> list[str]:
    lines = []
    for line in (ROOT / "examples" / "data" / "demo.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        lines += [record["instruction"], record["input"], record["output"]]
    return [line for line in lines + TEXTS if line.strip()] * 3


def train_sentencepiece(folder: Path) -> Path:
    with tempfile.TemporaryDirectory() as work:
        text = Path(work, "corpus.txt")
        text.write_text("\n".join(line.replace("\n", " ") for line in corpus()), encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(text), model_prefix=str(Path(work, "tokenizer")), vocab_size=SENTENCEPIECE_VOCAB, **SENTENCEPIECE_OPTIONS
        )
        shutil.copy(Path(work, "tokenizer.model"), folder / "tokenizer.model")
    return folder / "tokenizer.model"


def random_weights(model) -> None:
    """Wide random values, so that logits differ clearly between positions; norms around 1, not exactly 1."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layernorm" in name:
                parameter.copy_(1 + 0.1 * torch.randn_like(parameter))
            elif name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn_like(parameter))
            else:
                parameter.copy_(0.2 * torch.randn_like(parameter))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original-code", required=True, type=Path, help="folder with THUDM's four .py files")
    parser.add_argument("--output", type=Path, default=ROOT / "tests" / "models" / "fixtures" / "chatglm3-tiny")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        for name in CODE_FILES:
            shutil.copy(args.original_code / name, folder / name)
        (folder / "config.json").write_text(json.dumps(CONFIG, indent=2))
        (folder / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "name_or_path": "THUDM/chatglm3-6b",
                    "remove_space": False,
                    "do_lower_case": False,
                    "tokenizer_class": "ChatGLMTokenizer",
                    "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
                },
                indent=2,
            )
        )
        train_sentencepiece(folder)
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True, torch_dtype=torch.float32)
        random_weights(model)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        model.save_pretrained(args.output, safe_serialization=True)
        for name in ("tokenizer.model", "tokenizer_config.json", "config.json"):
            shutil.copy(folder / name, args.output / name)
        for name in CODE_FILES:  # THUDM's code stays out of the fixture
            (args.output / name).unlink(missing_ok=True)
        reference(model, tokenizer, args.output)
    print(f"wrote {args.output}", file=sys.stderr)


def reference(model, tokenizer, output: Path) -> None:
    sp = tokenizer.tokenizer  # the original SPTokenizer
    expected = {
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "special_tokens": {token: tokenizer.get_command(token) for token in sp.special_tokens},
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "sentencepiece_size": sp.sp_model.vocab_size(),
        "texts": [
            {
                "text": text,
                "encode": sp.encode(text),
                "call": tokenizer(text)["input_ids"],
                "decode": tokenizer.decode(sp.encode(text)),
            }
            for text in TEXTS
        ],
        "chats": [],
    }
    logits = {}
    with torch.no_grad():
        for index, (query, history, answer) in enumerate(CHATS):
            prompt = tokenizer.build_chat_input(query, history=history, role="user")["input_ids"][0].tolist()
            sample = prompt + sp.encode("\n" + answer) + [tokenizer.eos_token_id]
            generated = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt) :]
            expected["chats"].append(
                {
                    "query": query,
                    "history": history,
                    "answer": answer,
                    "prompt": prompt,
                    "sample": sample,
                    "greedy": generated.tolist(),
                }
            )
            logits[f"chat{index}"] = model(torch.tensor([sample])).logits[0].contiguous()
        # a left-padded batch as the original tokenizer pads it (padding on the left, positions from 0 after the
        # padding); the last positions' logits, which attend to every real token of their row
        prompts = [c["prompt"] for c in expected["chats"]]
        batch = tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt")
        expected["padded_batch"] = {key: value.tolist() for key, value in batch.items()}
        logits["padded_batch_last4"] = model(**batch).logits[:, -4:].contiguous()
    (output / "expected.json").write_text(json.dumps(expected, ensure_ascii=False, indent=1), encoding="utf-8")
    save_file(logits, output / "expected_logits.safetensors")


if __name__ == "__main__":
    main()
