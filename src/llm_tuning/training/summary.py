"""What a run reports in run_summary.json beyond its settings: counts of its data, figures of its training,
the versions it ran with, and, for a diverged run, what went wrong and what to try."""

from __future__ import annotations

import math

import peft
import torch
import transformers

from .. import __version__
from ..config.sections import Config
from ..data.packing import PackedCollator
from ..rundir import last_checkpoint


def data_counts(data, train_read, val_read, trainer) -> dict:
    """Samples trained, packed rows, and what was cut, dropped or skipped on the way."""
    skipped = train_read.skipped + (val_read.skipped if val_read else [])
    return {
        "samples": len(data.samples),
        "packed_rows": len(trainer.train_dataset) if isinstance(trainer.data_collator, PackedCollator) else None,
        "truncated_samples": data.truncated,
        "dropped_samples": len(data.dropped),
        "skipped_records": len(skipped),
        "skipped_examples": skipped[:20],
    }


def training_figures(trainer, result) -> dict:
    """Steps, the logged losses, time and throughput (non-padding tokens)."""
    state = trainer.state
    runtime = result.metrics.get("train_runtime", 0.0)
    return {
        "steps": state.global_step,
        "loss_history": [{"step": e["step"], "loss": e["loss"]} for e in state.log_history if "loss" in e],
        "train_runtime_s": runtime,
        "train_tokens": int(state.num_input_tokens_seen),
        "tokens_per_s": state.num_input_tokens_seen / runtime if runtime else 0.0,
    }


def validation_figures(trainer, val_samples: int) -> dict:
    """Loss and perplexity on the validation samples, plus the losses logged during training."""
    history = [{"step": e["step"], "loss": e["eval_loss"]} for e in trainer.state.log_history if "eval_loss" in e]
    done_at_the_end = history and history[-1]["step"] == trainer.state.global_step
    loss = history[-1]["loss"] if done_at_the_end else trainer.evaluate()["eval_loss"]
    return {"samples": val_samples, "loss": loss, "perplexity": math.exp(min(loss, 700)), "history": history}


def curves(summary: dict, name: str) -> dict:
    """A run's training and validation losses by step, as plots.loss_chart takes them."""
    validation = (summary.get("validation") or {}).get("history") or []
    return {
        "name": name,
        "train": [(e["step"], e["loss"]) for e in summary["loss_history"]],
        "validation": [(e["step"], e["loss"]) for e in validation],
    }


def versions() -> dict:
    return {
        "llm_tuning": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def diagnose(config: Config, guard, epsilon: float, output_dir) -> str:
    """The one-line error of a diverged run: where, with which settings, what was kept, what to try."""
    checkpoint = last_checkpoint(output_dir)
    kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written before it"
    return (
        f"training diverged at step {guard.step}: {guard.problem} (model.dtype {config.model.dtype}, train.precision "
        f"{config.train.precision}, learning rate {config.train.learning_rate:g}, adam epsilon {epsilon:g}); nothing was saved "
        f"as the result and {kept}. Try a lower train.learning_rate, or bf16/fp32 instead of fp16"
    )
