"""The fixed sections of a run's config, `model`, `data` and `train`, and the whole `Config`. Every field
carries its help text and constraints (`schema.option`); the `method` section is the chosen method's own
options class (methods/)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .schema import option
from .sources import SECTIONS


@dataclass
class ModelConfig:
    path: str = option("smollm2-135m", "Base model: a local Hugging Face folder, a built-in alias (smollm2-135m) or a hub id.")
    trust_remote_code: bool = option(
        False, "Run the model's own Python code from its folder or hub repository. Only for models you trust."
    )
    dtype: str = option(
        "float32",
        "The dtype the base model is loaded in (bf16/fp16 matrix products are very slow on most CPUs).",
        choices=("float32", "bfloat16", "float16"),
    )
    quantization: str = option(
        "none",
        "Load the base quantized with bitsandbytes: `8bit` (LLM.int8) or `4bit` (QLoRA); only adapters train on it.",
        choices=("none", "8bit", "4bit"),
    )
    int8_threshold: float = option(
        6.0, "8bit: outlier threshold; activations above it are computed in higher precision.", min=0.0
    )
    quant_type: str = option("nf4", "4bit: the data type, NormalFloat4 or FP4.", choices=("nf4", "fp4"))
    double_quant: bool = option(True, "4bit: also quantize the quantization constants (saves ~0.4 bits per parameter).")
    compute_dtype: str = option(
        "auto",
        "4bit: the dtype matrix products run in (`auto`: model.dtype).",
        choices=("auto", "float32", "bfloat16", "float16"),
    )


@dataclass
class DataConfig:
    path: str | list[str] | None = option(
        None,
        "Training data, one source or a list: Alpaca records (instruction, input, output), ShareGPT `conversations` or "
        "OpenAI-style `messages`, in .json, .jsonl, .csv or .parquet, a `save_to_disk` folder, or a hub dataset id (org/name).",
    )
    columns: dict[str, str] | None = option(
        None,
        "Map our field names to the data's own, e.g. {instruction: context, output: target} (also input, system, messages, "
        "conversations).",
    )
    template: str = option(
        "auto",
        "Prompt format: `plain` (`Human: {instruction}\\n{input}\\n\\nAssistant: `), `native` (the tokenizer's chat template), "
        "`llama2`, `llama3`, `chatglm3`, `chatml`; `auto`: native when the tokenizer has a chat template, else the model "
        "family's format, else plain.",
        choices=("auto", "plain", "native", "llama2", "llama3", "chatglm3", "chatml"),
    )
    system: str | None = option(None, "System prompt for every example that has none of its own.")
    skip_invalid: bool = option(
        False,
        "Skip bad records (missing or non-string fields, empty answers, broken lines) instead of stopping; they are counted "
        "in the run summary.",
    )
    val_ratio: float = option(0.0, "Share of the (shuffled) examples held out for validation.", min=0.0, max=0.5)
    val_path: str | list[str] | None = option(None, "Validation data (same formats as path); takes the place of val_ratio.")
    seed: int = option(42, "Seed of the shuffle before the validation split.")
    max_length: int = option(512, "Longest sample in tokens; longer samples are cut there and get no EOS.", min=8)
    packing: bool = option(
        True,
        "Pack several samples into each row of up to max_length tokens (no compute on padding; attention stays inside each "
        "sample). A micro-batch is then batch_size rows. Methods with virtual tokens or prefixes, and models without position "
        "ids (BLOOM), train unpacked, batches grouped by length.",
    )


@dataclass
class TrainConfig:
    output_dir: str = option("runs/default", "Where the adapter, checkpoints, log and run summary go.")
    max_steps: int | None = option(None, "Optimizer steps to run; when set it takes precedence over num_epochs.", min=1)
    num_epochs: float = option(1.0, "Passes over the data (when max_steps is not set).", min=0.0)
    batch_size: int = option(4, "Samples per micro-batch.", min=1)
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step.", min=1)
    learning_rate: float = option(2.0e-4, "Peak learning rate (AdamW).", min=0.0)
    lr_scheduler: str = option(
        "cosine",
        "Learning-rate schedule after warmup.",
        choices=("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"),
    )
    warmup_ratio: float = option(
        0.03, "Share of the steps spent warming up the learning rate linearly from 0.", min=0.0, max=0.99
    )
    weight_decay: float = option(0.0, "AdamW weight decay.", min=0.0)
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 turns clipping off).", min=0.0)
    eval_steps: int | None = option(
        None,
        "Validation loss every N optimizer steps (with data.val_ratio or data.val_path); without it, once at the end.",
        min=1,
    )
    logging_steps: int = option(5, "Log the loss every N optimizer steps.", min=1)
    save_steps: int = option(50, "Write a checkpoint every N optimizer steps.", min=1)
    save_total_limit: int | None = option(
        2, "Keep at most this many checkpoints (the oldest deleted once a new one is complete); null keeps all.", min=1
    )
    seed: int = option(42, "Random seed for initialisation, dropout and data order.")
    overwrite: bool = option(False, "Allow writing into a non-empty output_dir (its old contents are deleted).")
    resume: bool = option(
        False,
        "Continue from the newest complete checkpoint in output_dir, exactly where it was; a config that changes what is "
        "trained is refused (docs/checkpoints.md lists what may change).",
    )
    precision: str = option(
        "fp32",
        "Mixed precision for forward and backward: `bf16`, `fp16` (GPU only; with loss scaling) or none (`fp32`).",
        choices=("fp32", "bf16", "fp16"),
    )
    keep_trainable_fp32: bool = option(
        True, "Keep trained parameters in float32 on a half-precision base (recommended; false trains them in model.dtype)."
    )
    optimizer: str = option(
        "adamw",
        "`adamw` (PyTorch), `adamw_8bit` (bitsandbytes, needs that package) or `adafactor`.",
        choices=("adamw", "adamw_8bit", "adafactor"),
    )
    adam_epsilon: float = option(
        1.0e-8, "AdamW epsilon; raised to 1e-4 automatically when trained parameters are float16.", min=0.0
    )
    loss_chunk_size: int = option(
        512,
        "Compute the LM head and the loss only at labelled positions, this many at a time, never holding full-vocabulary "
        "logits for the batch; 0 = transformers' own loss over full logits.",
        min=0,
    )
    lean_activations: bool = option(
        True,
        "Keep fewer tensors for backward with the same results: gated MLPs keep gate and up only (the activation is "
        "recomputed), LoRA dropout keeps a 1-byte mask and the shared input.",
    )
    dropout_masks: str = option(
        "fast",
        "How LoRA's dropout masks are drawn where lean activations rewrite it: `fast` on a CPU draws each mask from numpy's "
        "PCG64, seeded by one draw from torch's generator (repeatable from the seed, exact on resume, the drop rate exact "
        "to 2**-32; torch draws its CPU masks one element at a time); `torch` draws torch's own masks, as peft's "
        "dropout does. On a GPU both are torch's.",
        choices=("fast", "torch"),
    )
    cpu_matmul: str = option(
        "auto",
        "Which library multiplies frozen fp32 linear layers on a CPU: `torch` (MKL on x86), `onednn`, `openblas` (numpy's; "
        "its threads fight torch's unless the step is split over the cores), or `auto`: for the model's layers and for "
        "its LM head apart, the one measured faster on a training pass of the run's first batch at start-up, among those "
        "whose products match exact ones on the model's own weights (cached per CPU; the run summary's `speed_choices` "
        "says which and why; docs/speed.md).",
        choices=("auto", "torch", "onednn", "openblas"),
    )
    cpu_kernels: str = option(
        "auto",
        "On a CPU in fp32, compute the Llama-family RMSNorms and, with lean activations, the gated MLP's silu(gate) * up "
        "and LoRA dropout's mask, each in one pass of C instead of a chain of torch's ops, and packed rows' attention "
        "with one thread in C and numpy's OpenBLAS instead of torch's flash kernel per sample; built for this CPU at the "
        "first run and cached: `fused`, `torch` (torch's ops), or `auto`: fused where a C compiler is found. Results "
        "equal torch's to fp32 rounding (docs/speed.md).",
        choices=("auto", "fused", "torch"),
    )
    split_step: bool = option(
        True,
        "On a CPU, share each micro-batch's rows out between this process and a forked copy of it per further core, each "
        "pass single-threaded, where that applies (one process, a micro-batch of 2 rows or more, the chunked loss, at most "
        "5% of the parameters trained); false lets the cores' threads share every operation instead (docs/speed.md).",
    )
    compile: bool = option(
        False,
        "Compile the elementwise work around the matrix products (Llama-family RMSNorms; with lean activations, the gated "
        "MLP's activation and product) with torch.compile; on a CPU it needs a C++ compiler. The first steps pay the "
        "compilation, so it pays only on long runs (docs/speed.md).",
    )
    gradient_checkpointing: bool = option(
        False,
        "Recompute each layer's activations in the backward pass instead of keeping them: less memory, about a third more "
        "compute.",
    )
    checkpointing_reentrant: bool = option(
        False,
        "Use torch's reentrant checkpointing (input gradients are enabled automatically); the default non-reentrant kind is "
        "the one that works with every method.",
    )
    check_memory: bool = option(
        True, "Before training, refuse a run whose estimated peak memory exceeds what is free, and say what would fit."
    )
    fsdp: str = option(
        "none",
        "Shard across processes with PyTorch FSDP, each decoder layer a unit: `full_shard` (weights, gradients and "
        "optimizer states), `shard_grad_op` (gradients and optimizer states), or `none` (DDP: a full copy per process; "
        "docs/distributed.md).",
        choices=("none", "full_shard", "shard_grad_op"),
    )
    deepspeed: str | None = option(
        None,
        "A DeepSpeed JSON config (ZeRO stage 2 or 3, optional offload; examples/deepspeed/) to train through DeepSpeed "
        "instead of DDP or FSDP; needs a GPU and the `deepspeed` extra.",
    )
    report_to: str = option(
        "none", "Also log to TensorBoard (`tensorboard`, needs the tensorboard package).", choices=("none", "tensorboard")
    )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = None  # the options dataclass of the chosen method, see methods.registry.method_options
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
