"""The fine-tuning recipe every LoRA tutorial uses, written plainly, as the reference llm-tuning is measured
against: transformers Trainer + peft, `DataCollatorForSeq2Seq` padding each batch to its longest sample, and the
model's own loss over full fp32 logits at every position.

    python benchmarks/tutorial_recipe.py MODEL_DIR DATA.json OUTPUT_DIR [--max-length 384] [--steps 40] [--bf16]

--bf16 loads the base in bfloat16 and trains with Trainer's bf16=True, as the tutorials do on a GPU.
Writes OUTPUT_DIR/adapter (peft) and OUTPUT_DIR/result.json (non-padding tokens, train time, peak RSS and, on a
GPU, peak GPU memory reserved, loss).
"""

import argparse
import json
import resource
import sys
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments


def process_func(example, tokenizer, max_length):
    """The tutorials' encoding: `Human: ... Assistant: ` prompt masked with -100, the answer plus EOS trained."""
    prompt = f"Human: {example['instruction']}\n{example['input']}\n\nAssistant: "
    instruction = tokenizer(prompt, add_special_tokens=False)
    response = tokenizer(example["output"], add_special_tokens=False)
    input_ids = instruction["input_ids"] + response["input_ids"] + [tokenizer.eos_token_id]
    attention_mask = instruction["attention_mask"] + response["attention_mask"] + [1]
    labels = [-100] * len(instruction["input_ids"]) + response["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": input_ids[:max_length], "attention_mask": attention_mask[:max_length], "labels": labels[:max_length]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("output_dir")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, target_modules=["q_proj", "v_proj"], r=8, lora_alpha=32, lora_dropout=0.1)
    model = get_peft_model(model, config)
    model.print_trainable_parameters()

    dataset = Dataset.from_list(json.loads(Path(args.data).read_text(encoding="utf-8")))
    tokenized = dataset.map(lambda e: process_func(e, tokenizer, args.max_length), remove_columns=dataset.column_names)

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=1e-4,
        logging_steps=min(10, args.steps),
        save_strategy="no",
        seed=args.seed,
        report_to=[],
        include_num_input_tokens_seen="non_padding",  # for the benchmark's token count only
        use_cpu=not torch.cuda.is_available(),
        bf16=args.bf16,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tokenized,
        data_collator=DataCollatorForSeq2Seq(tokenizer=tokenizer, padding=True),
    )
    result = trainer.train()
    model.save_pretrained(Path(args.output_dir, "adapter"))

    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    summary = {
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "train_runtime_s": result.metrics["train_runtime"],
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024),
        "final_loss": losses[-1],
        "steps": trainer.state.global_step,
    }
    if torch.cuda.is_available():
        summary["peak_gpu_bytes"] = torch.cuda.max_memory_reserved()
    Path(args.output_dir, "result.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
