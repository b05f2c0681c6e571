"""One row of a comparison, in a process of its own (so that its peak memory is its own): train the variant, or
take the base model as it is, then measure it on the held-out records. The runner starts it as
`python -m llm_tuning _compare-variant JOB.json` and reads the result file the job names."""

from __future__ import annotations

import gc
import json
import math
import traceback
from pathlib import Path

import torch

from ..data.records import read_examples
from ..errors import EXIT_INTERRUPTED, UserError, first_line
from ..evaluation import reference_loss, text_metrics
from ..files import write_json
from ..generation import GenerationOptions, Session
from ..methods.registry import get_method
from ..training.run import train

BASE_ROW = "base"


def run_job(job_file: str | Path) -> int:
    """Run the job described in `job_file`; write its result; the exit status says how it ended."""
    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    result = {"name": job["name"], "status": "failed", "error": None, "config": job["config"]}
    try:
        result.update(measure_row(job))
    except UserError as e:
        result["error"] = str(e)
    except (torch.OutOfMemoryError, MemoryError) as e:
        result["error"] = f"out of memory ({first_line(e)})"
    except Exception as e:  # a bug: keep the traceback on stderr, and the one line in the results
        traceback.print_exc()
        result["error"] = f"{type(e).__name__}: {first_line(e)}"
    write_json(Path(job["result"]), result)
    if result["status"] == "interrupted":
        return EXIT_INTERRUPTED
    return 0 if result["status"] == "completed" else 1


def measure_row(job: dict) -> dict:
    """Train (unless this is the base row), then measure on the held-out records."""
    config = job["config"]
    method = get_method(config["method"]["name"]) if job["name"] != BASE_ROW else None
    row = {"method": method.name if method else None, "mergeable": method.mergeable if method else None}
    if method is None:
        session = Session(config)
    else:
        summary = train(config)
        row.update(training_figures(summary))
        if summary["status"] != "completed":
            return {**row, "status": summary["status"]}
        gc.collect()  # the trained model goes before the saved one is loaded to be measured
        session = Session(adapter=config["train"]["output_dir"])
    row.update(heldout_figures(session, job))
    return {**row, "status": "completed"}


def training_figures(summary: dict) -> dict:
    history = summary["loss_history"]
    return {
        "trainable_params": summary["trainable_params"],
        "all_params": summary["all_params"],
        "trainable_percent": summary["trainable_percent"],
        "estimated_peak_memory_bytes": summary["estimated_peak_memory_bytes"],
        "estimated_memory_components": summary["estimated_memory_components"],
        "peak_memory_bytes": summary["peak_memory_bytes"],
        "tokens_per_s": summary["tokens_per_s"],
        "train_runtime_s": summary["train_runtime_s"],
        "train_loss": history[-1]["loss"] if history else None,
        "loss_history": history,
        "val_history": (summary.get("validation") or {}).get("history", []),
        "saved_bytes": summary["saved_bytes"],
        "adjustments": summary["adjustments"],
    }


def heldout_figures(session: Session, job: dict) -> dict:
    """Loss and perplexity on every held-out record (teacher-forced, per trained token), and BLEU-4 / ROUGE of the
    greedy answers to the first `prompts` of them."""
    examples = read_examples(job["heldout"]).examples
    asked = examples[: job["prompts"]]
    answers = session.generate([list(e.messages[:-1]) for e in asked], GenerationOptions(max_new_tokens=job["max_new_tokens"]))
    scores = text_metrics(answers, [e.messages[-1]["content"] for e in asked])
    loss = reference_loss(session, examples)
    return {
        "val_loss": loss,
        "perplexity": math.exp(min(loss, 700)),
        "bleu4": scores["bleu4"],
        "rougeL": scores["rougeL"],
        "text_scores": scores,
        "answers": answers,
    }
