"""transformers' Trainer as llm-tuning runs it: the arguments from the config, packed rows or length-grouped
batches, the loss computed by training/loss.py on labelled tokens only, and checkpoints written whole
(training/checkpoints.py)."""

from __future__ import annotations

import inspect
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from ..config.sections import Config, TrainConfig
from ..data.encode import IGNORE_INDEX
from ..data.packing import PackedCollator, pack_rows, packed_forward_inputs, packing_unsupported_reason
from ..distributed import world
from ..methods.adapter import is_adapted
from ..rundir import LOG_FILE
from ..speed.calibration import MAX_TOKENS, choose_cpu_matmul
from ..speed.packed_attention import use_packed_attention
from ..speed.split_step import SplitStep
from ..weights import base_model
from .callbacks import JsonlLog, ProgressBar
from .checkpoints import CrashSafeCheckpoints
from .loss import chunked_loss_unsupported_reason, head_follows_cpu_matmul, labelled_loss
from .sharding import trainer_arguments

OPTIMIZERS = {"adamw": "adamw_torch_fused", "adamw_8bit": "adamw_bnb_8bit", "adafactor": "adafactor"}  # Trainer's names


class LeanTrainer(CrashSafeCheckpoints, Trainer):
    """transformers' Trainer with crash-safe checkpoints (CrashSafeCheckpoints), and two changes to the forward
    pass: packed batches go in without their attention mask (so restarting position ids make attention
    block-diagonal) and with their samples' lengths (`packed_segments`, for speed/packed_attention.packed_sdpa),
    and, when `loss_chunk_size` is set, the loss comes from the decoder's hidden states through
    LabelledCrossEntropy instead of full logits. On a CPU, each micro-batch's rows may be split over the cores, in
    forked copies of this process (speed/split_step.py)."""

    def __init__(
        self, *args, loss_chunk_size: int = 0, packed_attention: bool = False, keep_checkpoints: int | None = None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.loss_chunk_size = loss_chunk_size
        self.packed_attention = packed_attention
        self.keep_checkpoints = keep_checkpoints
        self.split: SplitStep | None = None  # set by split_over_cores
        self.micro_batch = (-1, 0)  # (optimizer step, micro-batches seen in it), for the split's dropout seeds

    def training_step(self, model, inputs, num_items_in_batch=None):
        step, seen = self.micro_batch
        self.micro_batch = (self.state.global_step, seen + 1 if step == self.state.global_step else 0)
        if self.split is None or num_items_in_batch is None:  # without the global count the parts' losses do not add up
            return super().training_step(model, inputs, num_items_in_batch)
        return self.split.step(model, inputs, num_items_in_batch, *self.micro_batch)

    def split_over_cores(self, parts: int) -> None:
        """Split each micro-batch's rows over `parts` processes (speed/split_step.py; 1: unsplit); the copies start at
        the first step and end with training."""
        if parts > 1:
            self.split = SplitStep(self.model, super().training_step, parts, self.args.seed)

    def train(self, *args, **kwargs):
        self.micro_batch = (-1, 0)  # a resumed run counts from its checkpoint's step
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.split:
                self.split.close()

    def split_private_bytes(self) -> int:
        """The largest memory the split's copies held alone (0 unsplit), to add to this process's peak RSS."""
        return self.split.private_bytes() if self.split else 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "position_ids" in inputs:  # packed rows
            inputs = packed_forward_inputs(inputs, with_segments=self.packed_attention)
        if not self.loss_chunk_size:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        causal_lm = base_model(extract_model_from_parallel(model))
        labels = inputs["labels"]
        decoder_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "use_cache")}
        if extract_model_from_parallel(model) is model:
            hidden = causal_lm.get_decoder()(**decoder_inputs, use_cache=False).last_hidden_state
        else:
            hidden = hidden_through_wrapper(model, causal_lm, decoder_inputs)
        loss = labelled_loss(hidden, causal_lm.get_output_embeddings(), labels, num_items_in_batch, self.loss_chunk_size)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            # num_items_in_batch counts the labelled tokens of every process, and DDP averages the gradients over the
            # processes: as in Trainer.compute_loss, the loss is scaled back so the gradient is the global mean
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss}) if return_outputs else loss  # evaluation asks for the loss only (no logits)


def hidden_through_wrapper(wrapper, causal_lm, decoder_inputs: dict):
    """The decoder's last hidden states from a forward pass through `wrapper` (DDP, FSDP), which must see the forward
    to reduce the gradients of the backward. The LM head computes the last position only (the loss needs none of
    its logits); the hidden states are taken from the decoder's output on the way."""
    captured = []
    hook = causal_lm.get_decoder().register_forward_hook(lambda module, args, output: captured.append(output[0]))
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(causal_lm.forward).parameters else {}
    try:
        wrapper(**decoder_inputs, use_cache=False, **keep_last)
    finally:
        hook.remove()
    return captured[-1]


def build_trainer(
    config: Config,
    model,
    tokenizer,
    samples: list[dict],
    adjustments: list[str],
    adam_epsilon: float,
    val_samples: list[dict] | None = None,
) -> LeanTrainer:
    """transformers' Trainer for the run: packed rows or length-grouped batches, the chunked loss where the model
    allows it (each fallback noted in `adjustments`), the progress bar and the step log."""
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
        optim=OPTIMIZERS[t.optimizer],
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
        save_total_limit=None,  # LeanTrainer deletes old checkpoints itself, once the new one is complete
        seed=t.seed,
        data_seed=t.seed,
        report_to=[] if t.report_to == "none" else [t.report_to],
        remove_unused_columns=False,  # our samples carry exactly what the model needs
        train_sampling_strategy="group_by_length" if config.data.packing and not packed else "random",
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,  # replaced by ProgressBar, which shows the loss
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,  # every trained tensor takes part in each step: skip DDP's graph search
        **trainer_arguments(config, model),
    )
    if packed:
        rows, collator = pack_rows(samples, config.data.max_length), PackedCollator(tokenizer.pad_token_id)
        val_rows = pack_rows(val_samples, config.data.max_length) if val_samples else None
    else:
        rows, collator = samples, DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
        val_rows = val_samples
    with adapters_pass_as_trainable(model):
        trainer = LeanTrainer(
            model=model,
            args=args,
            train_dataset=rows,
            eval_dataset=val_rows,
            data_collator=collator,
            loss_chunk_size=0 if loss_blocked else t.loss_chunk_size,
            packed_attention=packed and use_packed_attention(model),
            keep_checkpoints=t.save_total_limit,
        )
    trainer.remove_callback(PrinterCallback)
    if world().is_main:  # one progress bar and one step log for the job
        trainer.add_callback(ProgressBar())
        trainer.add_callback(JsonlLog(Path(t.output_dir, LOG_FILE)))
    return trainer


def cpu_matmul_choice(trainer: LeanTrainer, model, train: TrainConfig, parts: int) -> dict:
    """Which library multiplies `model`'s frozen layers in this training (`train.cpu_matmul`; speed/calibration.py):
    `auto` times passes of the first batch as each process will compute them; where the step is split in `parts`,
    one part's rows with one thread."""
    cpu_fp32 = trainer.args.device.type == "cpu" and train.precision == "fp32"  # FSDP/ZeRO move it later
    one_pass, tokens = first_batch_pass(trainer, MAX_TOKENS, parts)
    head_follows = partial(head_follows_cpu_matmul, trainer.loss_chunk_size)
    threads = 1 if parts > 1 else None
    return choose_cpu_matmul(model, train.cpu_matmul, one_pass, tokens, cpu_fp32, head_follows, threads_per_pass=threads)


def first_batch_pass(trainer: LeanTrainer, max_tokens: int, parts: int = 1):
    """A forward and backward pass of the first rows of the run's first micro-batch, or of its first part where the
    step is split in `parts` (as many as fit in `max_tokens`; a row longer than that alone, cut to its first
    `max_tokens` tokens), computed as a training step computes it, and its number of tokens: what
    speed/calibration.py times. The pass returns the seconds from the decoder's last hidden states to the loss: the LM
    head's part (with the chunked loss, the head's gradients are formed there too). Cut, since the passes are many
    and a pass grows faster than its tokens (attention); docs/speed.md says what the cut saves."""
    size = max(1, min(trainer.args.per_device_train_batch_size, len(trainer.train_dataset)) // parts)
    batch = trainer.data_collator([trainer.train_dataset[index] for index in range(size)])
    width = min(batch["input_ids"].shape[1], max_tokens)
    rows = min(size, max_tokens // width)  # at least one: the width is cut to max_tokens
    batch = {key: value[:rows, :width] for key, value in batch.items()}
    decoder = base_model(trainer.model).get_decoder()

    def one_pass() -> float:
        hidden_at = []
        hook = decoder.register_forward_hook(lambda *_: hidden_at.append(time.perf_counter()))
        try:
            loss = trainer.compute_loss(trainer.model, dict(batch))
        finally:
            hook.remove()
        head_seconds = time.perf_counter() - hidden_at[-1] if hidden_at else 0.0  # 0: the decoder was not seen
        loss.backward()
        return head_seconds

    return one_pass, rows * width


@contextmanager
def adapters_pass_as_trainable(model):
    """Let the Trainer accept a quantized base that carries our bottleneck adapters. Its check (trainer_utils.
    validate_quantization_for_training) refuses any quantized model that is not a peft model, although the
    adapters beside the frozen quantized weights are exactly what it asks for; it reads `is_quantized` once, in
    Trainer.__init__, so the model shows it as false for that moment only."""
    if not (getattr(model, "is_quantized", False) and is_adapted(model)):
        yield
        return
    model.is_quantized = False
    try:
        yield
    finally:
        model.is_quantized = True
