"""Loss of a base model plus a peft adapter on held-out Alpaca records: the mean cross-entropy over every answer
token (EOS included), the records encoded the tutorials' way (tutorial_recipe.process_func), one at a time.

    python benchmarks/heldout_loss.py MODEL_DIR ADAPTER_DIR HELDOUT.json [--max-length 384]

Prints one JSON line: {"heldout_loss": ..., "heldout_tokens": ...}.
"""

import argparse
import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tutorial_recipe import process_func


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("adapter")
    parser.add_argument("data")
    parser.add_argument("--max-length", type=int, default=384)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, args.adapter).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for record in json.loads(Path(args.data).read_text(encoding="utf-8")):
            sample = process_func(record, tokenizer, args.max_length)
            labels = torch.tensor([sample["labels"]])
            logits = model(input_ids=torch.tensor([sample["input_ids"]])).logits[0, :-1].float()
            targets = labels[0, 1:]
            total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
    print(json.dumps({"heldout_loss": total / count, "heldout_tokens": count}))


if __name__ == "__main__":
    main()
