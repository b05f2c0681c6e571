"""`llm-tuning train`: load the base, apply the method, encode the data, run transformers' Trainer, and
write the adapter, the resolved config, a step log and a machine-readable run summary."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .activations import keep_fewer_activations
from .allocator import active_allocator
from .callbacks import DivergenceGuard, JsonlLog, ProgressBar, StopOnInterrupt, interrupt_requests
from .config import RUN_CONFIG_FILE, Config, load_config, save_run_config
from .cpu_matmul import use_onednn_matmul, use_torch_matmul, wants_onednn
from .data.encode import IGNORE_INDEX, encode_examples
from .data.packing import PackedCollator, pack_rows, packing_unsupported_reason, use_packed_attention
from .data.records import ReadResult, read_examples
from .data.templates import get_template
from .errors import UserError
from .memory import check_fits, estimate, peak_memory
from .methods import get_method
from .models import ensure_pad_token, load_model, load_tokenizer, model_type, resolve_model_path
from .params import count_parameters, trainable_line
from .precision import adam_epsilon, check_precision, set_trainable_dtype
from .provision import cache_dir
from .quantization import check_quantization, prepare_for_training
from .weights import is_peft_model, save_trained

SUMMARY_FILE = "run_summary.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_PREFIX = "checkpoint-"


def train(config: Config | str | Path | dict | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Fine-tune as `config` says; returns the run summary (also written to OUTPUT_DIR/run_summary.json)."""
    if not isinstance(config, Config):
        config = load_config(config, overrides)
    method = get_method(config.method.name)
    output_dir = Path(config.train.output_dir)
    resume_from = preflight(config, method, output_dir)
    train_read, val_read = read_data(config)  # before anything slow, so bad data fails fast

    adjustments: list[str] = []
    resolved_path = resolve_model_path(config.model.path)
    tokenizer, template, data = prepare_data(config, resolved_path, train_read.examples, adjustments)
    val_data = (
        encode_examples(val_read.examples, template, tokenizer, config.data.max_length, config.data.system) if val_read else None
    )
    if val_data is not None and not val_data.samples:
        raise UserError(f"no validation samples left: every validation prompt fills data.max_length={config.data.max_length}")
    predicted = estimate(config, device="cuda" if _has_gpu() else "cpu")
    if config.train.check_memory:
        check_fits(config, predicted)
    model, epsilon = prepare_model(config, method, resolved_path, tokenizer, adjustments)
    lean = keep_fewer_activations(model) if config.train.lean_activations else []
    onednn_linears = use_onednn_matmul(model) if wants_onednn(config.train.cpu_matmul) else 0
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise UserError(f"method {config.method.name} leaves nothing to train on this model")
    print(trainable_line(trainable, total), flush=True)

    if config.train.overwrite and not resume_from and output_dir.exists():
        shutil.rmtree(output_dir)  # only now that data, model and method are known to be good
    output_dir.mkdir(parents=True, exist_ok=True)
    save_run_config(config, output_dir)
    trainer = build_trainer(
        config,
        model,
        tokenizer,
        data.samples,
        adjustments,
        optimizer=OPTIMIZERS[config.train.optimizer],
        adam_epsilon=epsilon,
        val_samples=val_data.samples if val_data else None,
    )
    guard = DivergenceGuard(model)
    trainer.add_callback(guard)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with interrupt_requests() as interrupted:
        trainer.add_callback(StopOnInterrupt(interrupted))
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    use_torch_matmul(model)  # validation and the caller's model compute as the saved weights will after reloading
    status = "diverged" if guard.problem else "interrupted" if interrupted else "completed"
    validation = validate(trainer, val_data) if val_data and status == "completed" else None
    saved_bytes = 0 if guard.problem else save_trained(model, output_dir)  # never save a diverged model

    state = trainer.state
    runtime = result.metrics.get("train_runtime", 0.0)
    summary = {
        "status": status,
        "config": config.to_dict(),
        "model_path": resolved_path,
        "template": template.name,
        "trainable_params": trainable,
        "all_params": total,
        "trainable_percent": 100 * trainable / total,
        "saved_bytes": saved_bytes,
        "optimizer": config.train.optimizer,
        "adam_epsilon": epsilon,
        "samples": len(data.samples),
        "packed_rows": len(trainer.train_dataset) if isinstance(trainer.data_collator, PackedCollator) else None,
        "truncated_samples": data.truncated,
        "dropped_samples": len(data.dropped),
        "skipped_records": len(train_read.skipped) + (len(val_read.skipped) if val_read else 0),
        "skipped_examples": (train_read.skipped + (val_read.skipped if val_read else []))[:20],
        "validation": validation,
        "steps": state.global_step,
        "loss_history": [{"step": e["step"], "loss": e["loss"]} for e in state.log_history if "loss" in e],
        "train_runtime_s": runtime,
        "train_tokens": int(state.num_input_tokens_seen),
        "tokens_per_s": state.num_input_tokens_seen / runtime if runtime else 0.0,
        "adjustments": adjustments,
        "lean_activations": lean,
        "onednn_linears": onednn_linears,
        "allocator": active_allocator(),
        "estimated_peak_memory_bytes": predicted["total_bytes"],
        "estimated_memory_components": predicted["components"],
        **peak_memory(),
        "started_at": started_at,
        "versions": _versions(),
    }
    if guard.problem:
        summary["diagnosis"] = diagnose(config, guard, epsilon, output_dir)
    Path(output_dir, SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    if guard.problem:
        raise UserError(summary["diagnosis"])
    print(
        f"{status}: {state.global_step} steps in {runtime:.0f} s; trained weights ({saved_bytes / 2**20:.1f} MiB) "
        f"and run summary in {output_dir}",
        file=sys.stderr,
    )
    return summary


def preflight(config: Config, method, output_dir: Path) -> Path | None:
    """Every check that needs no model: fails in a second instead of after loading. Returns the checkpoint to
    resume from, if any."""
    if config.train.eval_steps and not (config.data.val_ratio or config.data.val_path):
        raise UserError("train.eval_steps needs validation data: set data.val_ratio (e.g. 0.1) or data.val_path")
    check_precision(config, has_gpu=_has_gpu())
    check_quantization(config, method)
    if config.train.optimizer == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("train.optimizer adamw_8bit needs the bitsandbytes package: pip install bitsandbytes==0.50.2")
    if (
        config.train.gradient_checkpointing
        and config.train.checkpointing_reentrant
        and not getattr(method, "SUPPORTS_REENTRANT_CHECKPOINTING", True)
    ):
        raise UserError(
            f"method {config.method.name} does not work with reentrant checkpointing; set train.checkpointing_reentrant=false (non-reentrant)"
        )
    return check_output_dir(output_dir, overwrite=config.train.overwrite, resume=config.train.resume)


def read_data(config: Config) -> tuple[ReadResult, ReadResult | None]:
    """Training examples and the validation ones: data.val_path, or a data.val_ratio share of the shuffled data."""
    import random

    d = config.data
    if not d.path:
        raise UserError("config key 'data.path' is required: a data file, a list of them, a save_to_disk folder or a hub id")
    train_read = read_examples(d.path, d.columns, d.skip_invalid)
    if d.val_path:
        return train_read, read_examples(d.val_path, d.columns, d.skip_invalid)
    if not d.val_ratio:
        return train_read, None
    examples = list(train_read.examples)
    random.Random(d.seed).shuffle(examples)
    held_out = round(len(examples) * d.val_ratio)
    if held_out == 0 or held_out == len(examples):
        raise UserError(f"data.val_ratio={d.val_ratio} of {len(examples)} examples leaves an empty split; change data.val_ratio")
    return ReadResult(examples[held_out:], train_read.skipped), ReadResult(examples[:held_out])


def prepare_data(config: Config, resolved_path: str, examples, adjustments: list[str]):
    """The tokenizer (with a pad token, padding on the right), the template, and the encoded samples."""
    tokenizer = load_tokenizer(config.model, resolved_path)
    note = ensure_pad_token(tokenizer)
    if note:
        adjustments.append(note)
    tokenizer.padding_side = "right"  # training pads on the right: positions stay 0..n-1 for every sample
    template = get_template(config.data.template, tokenizer, model_type(resolved_path))
    config.data.template = template.name  # stored resolved, so generate/chat/merge format prompts the same way
    data = encode_examples(
        examples, template, tokenizer, config.data.max_length, config.data.system, cache=cache_dir() / "tokenized"
    )
    if data.dropped:
        adjustments.append(
            f"dropped {len(data.dropped)} samples whose prompt alone fills data.max_length={config.data.max_length} (first: {data.dropped[0]})"
        )
    if not data.samples:
        raise UserError(f"no trainable samples: every prompt fills data.max_length={config.data.max_length}; raise it")
    return tokenizer, template, data


def validate(trainer, val_data) -> dict:
    """Loss and perplexity on the validation samples, plus the losses logged during training."""
    import math

    history = [{"step": e["step"], "loss": e["eval_loss"]} for e in trainer.state.log_history if "eval_loss" in e]
    done_at_the_end = history and history[-1]["step"] == trainer.state.global_step
    loss = history[-1]["loss"] if done_at_the_end else trainer.evaluate()["eval_loss"]
    return {"samples": len(val_data.samples), "loss": loss, "perplexity": math.exp(min(loss, 700)), "history": history}


def prepare_model(config: Config, method, resolved_path: str, tokenizer, adjustments: list[str]):
    """The base with the method applied, trained tensors in their dtype, checkpointing set; and Adam's epsilon."""
    from transformers import set_seed

    set_seed(config.train.seed)  # before the method initialises its weights
    model = load_model(config.model, resolved_path)
    model.config.use_cache = False  # the generation cache is useless in training and costs memory
    if config.model.quantization != "none":
        model = prepare_for_training(model)
    model = method.apply(model, config.method, tokenizer)
    set_trainable_dtype(model, config, adjustments)
    epsilon = adam_epsilon(model, config, adjustments)
    if config.train.gradient_checkpointing:
        enable_checkpointing(model, reentrant=config.train.checkpointing_reentrant)
    return model, epsilon


OPTIMIZERS = {"adamw": "adamw_torch_fused", "adamw_8bit": "adamw_bnb_8bit", "adafactor": "adafactor"}  # Trainer's names


def diagnose(config: Config, guard, epsilon: float, output_dir: Path) -> str:
    checkpoint = last_checkpoint(output_dir)
    kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written before it"
    return (
        f"training diverged at step {guard.step}: {guard.problem} (model.dtype {config.model.dtype}, train.precision "
        f"{config.train.precision}, learning rate {config.train.learning_rate:g}, adam epsilon {epsilon:g}); nothing was saved "
        f"as the result and {kept}. Try a lower train.learning_rate, or bf16/fp32 instead of fp16"
    )


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def enable_checkpointing(model, reentrant: bool) -> None:
    """Gradient checkpointing on the transformers model (inside a peft wrapper, if any)."""
    base = model.get_base_model() if is_peft_model(model) else model
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    if reentrant:
        # Reentrant checkpointing only backpropagates into a layer whose input requires grad; with frozen
        # embeddings nothing would (PyTorch: "element 0 of tensors does not require grad").
        base.enable_input_require_grads()


def check_output_dir(output_dir: Path, overwrite: bool, resume: bool) -> Path | None:
    """Refuse to clobber a non-empty directory unless asked; returns the checkpoint to resume from, if any.
    Deletes nothing: with overwrite, the old run is removed only once the new one is ready to start."""
    if resume:
        checkpoint = last_checkpoint(output_dir)
        if checkpoint is None:
            raise UserError(f"train.resume is true but {output_dir} holds no {CHECKPOINT_PREFIX}* folder to resume from")
        return checkpoint
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"train.output_dir '{output_dir}' exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise UserError(
                f"train.output_dir '{output_dir}' is not empty; set train.overwrite=true to replace it or train.resume=true to continue it"
            )
        if not (output_dir / RUN_CONFIG_FILE).is_file():
            # overwrite deletes; only ever delete what an earlier run of ours wrote.
            raise UserError(f"train.output_dir '{output_dir}' is not empty and is not an llm-tuning run; refusing to delete it")
    return None


def last_checkpoint(output_dir: Path) -> Path | None:
    if not output_dir.is_dir():
        return None
    checkpoints = [
        p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return max(checkpoints, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]), default=None)


def build_trainer(
    config: Config,
    model,
    tokenizer,
    samples: list[dict],
    adjustments: list[str],
    optimizer: str = "adamw_torch_fused",
    adam_epsilon: float = 1e-8,
    val_samples: list[dict] | None = None,
):
    from transformers import DataCollatorForSeq2Seq, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from .loss import LeanTrainer, chunked_loss_unsupported_reason

    t = config.train
    packing_blocked = packing_unsupported_reason(model) if config.data.packing else None
    if packing_blocked:
        adjustments.append(f"data.packing: off ({packing_blocked}); batches grouped by length instead")
    packed = config.data.packing and not packing_blocked
    loss_blocked = chunked_loss_unsupported_reason(model) if t.loss_chunk_size else None
    if loss_blocked:
        adjustments.append(f"train.loss_chunk_size: full logits ({loss_blocked})")
    args = TrainingArguments(
        output_dir=t.output_dir,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=optimizer,
        adam_epsilon=adam_epsilon,
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        max_steps=t.max_steps or -1,
        num_train_epochs=t.num_epochs,
        eval_strategy="steps" if t.eval_steps and val_samples else "no",
        eval_steps=t.eval_steps,
        per_device_eval_batch_size=t.batch_size,
        prediction_loss_only=True,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        report_to=[] if t.report_to == "none" else [t.report_to],
        remove_unused_columns=False,  # our samples carry exactly what the model needs
        train_sampling_strategy="group_by_length" if config.data.packing and not packed else "random",
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,  # replaced by ProgressBar, which shows the loss
        use_cpu=not _has_gpu(),
    )
    if packed:
        rows, collator = pack_rows(samples, config.data.max_length), PackedCollator(tokenizer.pad_token_id)
        val_rows = pack_rows(val_samples, config.data.max_length) if val_samples else None
    else:
        rows, collator = samples, DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
        val_rows = val_samples
    trainer = LeanTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        eval_dataset=val_rows,
        data_collator=collator,
        loss_chunk_size=0 if loss_blocked else t.loss_chunk_size,
        packed_attention=packed and use_packed_attention(model),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressBar())
    trainer.add_callback(JsonlLog(Path(t.output_dir, LOG_FILE)))
    return trainer


def _versions() -> dict:
    import peft
    import torch
    import transformers

    return {
        "llm_tuning": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
