"""`llm-tuning eval`: answer a test set, score the answers against the references, and measure the loss on the
references. Scores as LLaMA-Factory and ChatGLM's scripts compute them: text segmented with jieba (Chinese into
words, English into its words), sentence BLEU-4 with smoothing (nltk, method 3) and ROUGE-1/2/L F1
(rouge-chinese), all x 100; exact match after trimming whitespace, in %.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import jieba
import torch
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

from .data.encode import IGNORE_INDEX, encode_example
from .data.records import read_examples
from .errors import UserError
from .files import folder_written_whole, free_path
from .generation import GenerationOptions, Session

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"


def evaluate(
    config=None,
    data: str | Path | None = None,
    adapter: str | Path | None = None,
    output: str | Path | None = None,
    limit: int | None = None,
    compare_base: bool = False,
    overrides=(),
    options: GenerationOptions | None = None,
) -> dict:
    """Scores of the run (or of the base model of `config`) on `data`; writes predictions and metrics to `output`."""
    if data is None:
        raise UserError("eval needs --data FILE: records whose last assistant turn is the reference answer")
    examples = read_examples(data).examples[:limit]
    output = Path(output) if output else _default_output(adapter)
    if output.exists() and any(output.iterdir()):
        raise UserError(f"eval output '{output}' is not empty; pass --output to write somewhere new")
    options = options or GenerationOptions(max_new_tokens=256)
    session = Session(config, overrides, adapter)
    results = {"model": score(session, examples, options)}
    if compare_base and adapter is not None:
        del session  # one model in memory at a time
        results["base"] = score(Session(None, overrides, adapter, base_only=True), examples, options)
    write_results(output, examples, results)
    return {name: result["metrics"] for name, result in results.items()} | {"output": str(output)}


def score(session: Session, examples, options: GenerationOptions) -> dict:
    conversations = [list(e.messages[:-1]) for e in examples]
    references = [e.messages[-1]["content"] for e in examples]
    predictions = session.generate(conversations, options)
    metrics = text_metrics(predictions, references)
    metrics["loss"] = reference_loss(session, examples)
    metrics["perplexity"] = math.exp(min(metrics["loss"], 700))
    metrics["count"] = len(examples)
    return {"metrics": metrics, "predictions": predictions}


def text_metrics(predictions: list[str], references: list[str]) -> dict:
    jieba.setLogLevel(logging.WARNING)
    totals = {"bleu4": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "exact_match": 0.0}
    for prediction, reference in zip(predictions, references):
        hypothesis_words = [w for w in jieba.cut(prediction) if w.strip()]
        reference_words = [w for w in jieba.cut(reference) if w.strip()]
        if hypothesis_words and reference_words:
            rouge = Rouge().get_scores(" ".join(hypothesis_words), " ".join(reference_words))[0]
            totals["rouge1"] += rouge["rouge-1"]["f"] * 100
            totals["rouge2"] += rouge["rouge-2"]["f"] * 100
            totals["rougeL"] += rouge["rouge-l"]["f"] * 100
            totals["bleu4"] += (
                sentence_bleu([reference_words], hypothesis_words, smoothing_function=SmoothingFunction().method3) * 100
            )
        totals["exact_match"] += 100.0 * (prediction.strip() == reference.strip())
    return {name: round(total / max(len(references), 1), 4) for name, total in totals.items()}


def reference_loss(session: Session, examples) -> float:
    """Mean cross-entropy of every trained (assistant) token of the references, teacher-forced, one at a time."""
    total, count = 0.0, 0
    max_length = session.config.data.max_length
    with torch.no_grad():
        for example in examples:
            sample = encode_example(example, session.template, session.tokenizer, max_length, session.config.data.system)
            input_ids = torch.tensor([sample["input_ids"]], device=session.device)
            targets = torch.tensor(sample["labels"][1:], device=session.device)
            # prompt and P-tuning return logits for their virtual tokens first: the input's own are the last ones
            logits = session.model(input_ids=input_ids).logits[0, -input_ids.shape[1] : -1].float()
            total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((targets != IGNORE_INDEX).sum())
    return total / max(count, 1)


def write_results(output: Path, examples, results: dict) -> None:
    """predictions.jsonl and metrics.json, in a folder written whole."""
    lines = []
    for index, example in enumerate(examples):
        line = {
            "where": example.where,
            "prompt": example.messages[-2]["content"],
            "reference": example.messages[-1]["content"],
            "prediction": results["model"]["predictions"][index],
        }
        if "base" in results:
            line["base_prediction"] = results["base"]["predictions"][index]
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    metrics = results["model"]["metrics"] | ({"base": results["base"]["metrics"]} if "base" in results else {})
    with folder_written_whole(output) as folder:
        (folder / PREDICTIONS_FILE).write_text("".join(lines), encoding="utf-8")
        (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")


def _default_output(adapter) -> Path:
    if adapter is None:
        raise UserError("eval of a base model needs --output DIR")
    return free_path(Path(adapter) / "eval")
