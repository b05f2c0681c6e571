"""The training run, from config to run summary: check what can be checked first, read and encode the data,
load the base and apply the method, train with transformers' Trainer (or resume a run exactly where its last
complete checkpoint left it), then write the trained weights, the resolved config, a step log and a
machine-readable run summary into the run's folder, each written whole, and last its manifest."""

from __future__ import annotations

import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import set_seed

from ..config.load import as_config
from ..config.sections import Config
from ..data.encode import encode_examples
from ..data.split import read_data
from ..data.templates import get_template
from ..distributed import World, each_process, end_process_group, from_main, local_main_first, main_writes, start_process_group
from ..errors import UserError
from ..files import cache_dir, write_json
from ..memory.budget import check_fits
from ..memory.estimate import estimate
from ..memory.measure import peak_memory
from ..methods.method import Method
from ..methods.registry import get_method
from ..models.builtin import remote_code_note
from ..models.loading import ensure_pad_token, load_base_model, load_tokenizer
from ..models.quantization import check_quantization, prepare_for_training, require_bitsandbytes
from ..models.resolve import model_type, resolve_model_path
from ..params import count_parameters, trainable_line
from ..plots import loss_chart
from ..resume import RUN_RECORD_FILE, check_same_data, check_same_training, read_run_record, write_run_record
from ..rundir import (
    LOSS_CHART,
    SUMMARY_FILE,
    check_output_dir,
    checkpoint_folders,
    load_run_config,
    save_run_config,
    write_run_manifest,
)
from ..speed.activations import keep_fewer_activations
from ..speed.allocator import active_allocator, recorded_allocator
from ..speed.compile import compile_elementwise
from ..speed.cpu_kernels import cpu_kernels_choice, use_cpu_kernels, use_torch_ops
from ..speed.cpu_matmul import PARTS, multiply_as, recorded_matmul, use_torch_matmul
from ..speed.split_step import choose_split
from ..weights import save_trained
from .callbacks import DivergenceGuard, ProgressBar, StopOnInterrupt, interrupt_requests
from .checkpoints import reopen_run_folder, resumable_checkpoint
from .gradient_checkpointing import enable_checkpointing
from .precision import adam_epsilon, check_precision, set_trainable_dtype
from .sharding import check_sharding, gathered_state, sharding_of
from .summary import curves, data_counts, diagnose, training_figures, validation_figures, versions
from .trainer import build_trainer, cpu_matmul_choice


def train(config: Config | str | Path | dict | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Fine-tune as `config` says; returns the run summary (also written to OUTPUT_DIR/run_summary.json). Started
    by torchrun or accelerate launch, each process runs this and the main one writes (distributed.py)."""
    config = as_config(config, overrides)
    here = start_process_group()
    try:
        return train_in_group(config, here)
    finally:
        end_process_group()


def train_in_group(config: Config, here: World) -> dict:
    method = get_method(config.method.name)
    output_dir = Path(config.train.output_dir)
    resume_from = preflight(config, method, output_dir, here.size)
    record = read_run_record(output_dir) if resume_from else {}
    train_read, val_read = read_data(config)  # before anything slow, so bad data fails fast

    adjustments: list[str] = []
    resolved_path = resolve_model_path(config.model.path)
    note = remote_code_note(config.model, resolved_path)
    if note:
        adjustments.append(note)
    with local_main_first():  # the others then read its tokenisation cache
        tokenizer, template, data = prepare_data(config, resolved_path, train_read.examples, adjustments)
    val_data = encode_validation(config, val_read, template, tokenizer)
    fingerprint = data.fingerprint()
    if resume_from:
        check_same_data(record, fingerprint, output_dir)
        if here.is_main:
            print(f"resuming from {resume_from}", file=sys.stderr, flush=True)
    predicted = estimate(config, device=_device(), processes=here.size, tokenizer=tokenizer)
    if config.train.check_memory:
        check_fits(config, predicted, sharing=1 if _device() == "cuda" else int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    model, epsilon = prepare_model(config, method, resolved_path, tokenizer, adjustments)
    lean = keep_fewer_activations(model, config.train.dropout_masks) if config.train.lean_activations else []
    fp32 = config.model.dtype == "float32" and config.train.precision == "fp32" and config.model.quantization == "none"
    started_with = record.get("cpu_kernels", "torch" if record else None)  # runs recorded before the kernels: torch's ops
    kernels = cpu_kernels_choice(config.train.cpu_kernels, _device() == "cpu", fp32, config.train.compile, started_with)
    kernels["routed"] = use_cpu_kernels(model) if kernels["chosen"] == "fused" else []
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise UserError(f"method {config.method.name} leaves nothing to train on this model")
    if here.is_main:
        print(trainable_line(trainable, total), flush=True)
    val_samples = val_data.samples if val_data else None
    trainer = build_trainer(config, model, tokenizer, data.samples, adjustments, adam_epsilon=epsilon, val_samples=val_samples)
    split = choose_split(config.train, model, here.size, trainer.args.device.type == "cpu", record, bool(trainer.loss_chunk_size))
    # which library multiplies is chosen once per run (speed/calibration.py): a resumed run multiplies as it started
    recorded = record.get("cpu_matmul")
    matmul = {**recorded_matmul(recorded), "why": f"as when the run started ({RUN_RECORD_FILE})"} if recorded else None
    if here.is_main and not matmul:  # the others multiply as the main process chose
        matmul = cpu_matmul_choice(trainer, model, config.train, split["parts"])
    matmul = from_main(matmul)
    switched_linears = multiply_as(model, matmul)
    compiled = compile_elementwise(model) if config.train.compile else []  # after the passes: training compiles alone
    trainer.split_over_cores(split["parts"])

    with main_writes() as writer:
        if writer:
            choices = {"data_sha256": fingerprint, "cpu_matmul": {p: matmul[p] for p in PARTS}, "split_parts": split["parts"]}
            open_run_folder(config, output_dir, resume_from, record, {**choices, "cpu_kernels": kernels["chosen"]}, here.size)
    guard = DivergenceGuard(model)
    trainer.add_callback(guard)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with interrupt_requests() as interrupted:
        trainer.add_callback(StopOnInterrupt(interrupted))
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            bar = trainer.pop_callback(ProgressBar)
            if bar:
                bar.close()
    use_torch_matmul(model)  # validation and the caller's model compute as the saved weights will after reloading
    use_torch_ops(model)
    status = "diverged" if guard.problem else "interrupted" if interrupted else "completed"
    validation = validation_figures(trainer, len(val_samples)) if val_samples and status == "completed" else None
    state = gathered_state(trainer)  # in every process: under FSDP or ZeRO each holds a shard
    with main_writes() as writer:
        saved_bytes = save_trained(model, output_dir, config.method, state) if writer and not guard.problem else 0
    peaks = each_process(peak_memory()["peak_memory_bytes"] + trainer.split_private_bytes())

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
        **data_counts(data, train_read, val_read, trainer),
        "validation": validation,
        **training_figures(trainer, result),
        "adjustments": adjustments,
        "lean_activations": lean,
        "switched_linears": switched_linears,
        "allocator": active_allocator(),
        "speed_choices": {
            "cpu_matmul": {k: v for k, v in matmul.items() if k != "seconds"},
            "allocator": active_allocator(),
            "compiled": compiled,
            "cpu_kernels": kernels,
            "split_step": split,
        },
        "estimated_peak_memory_bytes": predicted["total_bytes"],
        "estimated_memory_components": predicted["components"],
        **peak_memory(),
        "peak_memory_bytes": max(peaks),  # the largest process's, with the private memory of its step's copies
        "split_copies_private_bytes": trainer.split_private_bytes(),
        "peak_memory_bytes_per_process": peaks,
        "world_size": here.size,
        "global_batch_size": config.train.batch_size * config.train.gradient_accumulation_steps * here.size,
        "sharding": sharding_of(config).describe() if here.size > 1 else None,
        "started_at": started_at,
        "resumed_from": str(resume_from) if resume_from else None,
        "versions": versions(),
    }
    if guard.problem:
        summary["diagnosis"] = diagnose(config, guard, epsilon, output_dir)
    with main_writes() as writer:
        if writer:
            write_results(config, output_dir, summary)
    if guard.problem:
        raise UserError(summary["diagnosis"])
    if here.is_main:
        print(
            f"{status}: {summary['steps']} steps in {summary['train_runtime_s']:.0f} s; trained weights "
            f"({saved_bytes / 2**20:.1f} MiB) and run summary in {output_dir}",
            file=sys.stderr,
        )
    return summary


def open_run_folder(config: Config, output_dir: Path, resume_from, record: dict, choices: dict, processes: int):
    """Make (or reopen) the run's folder, with its config and the record of its run-time `choices`."""
    if config.train.overwrite and not resume_from and output_dir.exists():
        shutil.rmtree(output_dir)  # only now that data, model and method are known to be good
    output_dir.mkdir(parents=True, exist_ok=True)
    reopen_run_folder(output_dir, resume_from)
    save_run_config(config, output_dir)
    if not record:
        write_run_record(output_dir, {**choices, **recorded_allocator(), "world_size": processes})
    elif record.get("world_size", 1) != processes:
        write_run_record(output_dir, {**record, "world_size": processes})  # the next resume compares with this one


def write_results(config: Config, output_dir: Path, summary: dict) -> None:
    """The run summary, the loss chart and, last, the manifest that says the run's folder is complete."""
    write_json(output_dir / SUMMARY_FILE, summary)
    if summary["loss_history"]:
        loss_chart(
            [curves(summary, Path(output_dir).name)],
            output_dir / LOSS_CHART,
            title=f"{config.method.name} on {Path(config.model.path).name}",
        )
    write_run_manifest(output_dir)


def preflight(config: Config, method: Method, output_dir: Path, processes: int = 1) -> Path | None:
    """Every check that needs no model: fails in a second instead of after loading. Returns the checkpoint to
    resume from, if any."""
    if config.train.eval_steps and not (config.data.val_ratio or config.data.val_path):
        raise UserError("train.eval_steps needs validation data: set data.val_ratio (e.g. 0.1) or data.val_path")
    check_precision(config, has_gpu=torch.cuda.is_available())
    check_sharding(config, has_gpu=torch.cuda.is_available())
    check_quantization(config, method)
    if config.train.optimizer == "adamw_8bit":
        require_bitsandbytes("train.optimizer adamw_8bit")
    if (
        config.train.gradient_checkpointing
        and config.train.checkpointing_reentrant
        and not method.supports_reentrant_checkpointing
    ):
        raise UserError(
            f"method {config.method.name} does not work with reentrant checkpointing; "
            "set train.checkpointing_reentrant=false (non-reentrant)"
        )
    if not config.train.resume:
        check_output_dir(output_dir, overwrite=config.train.overwrite)
        return None
    if checkpoint_folders(output_dir):  # a config that trains something else is refused before checking checkpoints
        started = read_run_record(output_dir).get("world_size", 1)
        check_same_training(load_run_config(output_dir).to_dict(), config.to_dict(), output_dir, started, processes)
    return resumable_checkpoint(output_dir)


def prepare_data(config: Config, resolved_path: str, examples, adjustments: list[str]):
    """The tokenizer (with a pad token, padding on the right), the template, and the encoded samples."""
    tokenizer = load_tokenizer(config.model, resolved_path)
    note = ensure_pad_token(tokenizer)
    if note:
        adjustments.append(note)
    tokenizer.padding_side = "right"  # training pads on the right: positions stay 0..n-1 for every sample
    template = get_template(config.data.template, tokenizer, model_type(resolved_path))
    config.data.template = template.name  # stored resolved, so generate/chat/merge format prompts the same way
    max_length = config.data.max_length
    data = encode_examples(examples, template, tokenizer, max_length, config.data.system, cache=cache_dir() / "tokenized")
    if data.dropped:
        adjustments.append(
            f"dropped {len(data.dropped)} samples whose prompt alone fills data.max_length={max_length} (first: "
            f"{data.dropped[0]})"
        )
    if not data.samples:
        raise UserError(f"no trainable samples: every prompt fills data.max_length={max_length}; raise it")
    return tokenizer, template, data


def encode_validation(config: Config, val_read, template, tokenizer):
    """The validation samples, encoded as the training ones (None without validation data)."""
    if val_read is None:
        return None
    val_data = encode_examples(val_read.examples, template, tokenizer, config.data.max_length, config.data.system)
    if not val_data.samples:
        raise UserError(f"no validation samples left: every validation prompt fills data.max_length={config.data.max_length}")
    return val_data


def prepare_model(config: Config, method: Method, resolved_path: str, tokenizer, adjustments: list[str]):
    """The base with the method applied, trained tensors in their dtype, checkpointing set; and Adam's epsilon."""
    set_seed(config.train.seed)  # before the method initialises its weights
    model = load_base_model(config.model, resolved_path)
    model.config.use_cache = False  # the generation cache is useless in training and costs memory
    if config.model.quantization != "none":
        model = prepare_for_training(model)
    model = method.apply(model, config.method, tokenizer)
    set_trainable_dtype(model, config, adjustments)
    epsilon = adam_epsilon(model, config, adjustments)
    if config.train.gradient_checkpointing:
        enable_checkpointing(model, reentrant=config.train.checkpointing_reentrant)
    return model, epsilon


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
