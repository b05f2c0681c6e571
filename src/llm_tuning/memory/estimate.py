"""Estimate a training run's peak memory from its config alone (the model built on the meta device, no weights).

Peak = weights (by dtype and quantization) + gradients of what trains + optimizer states + activations
(saved for the backward pass; with checkpointing one layer input per layer plus one layer recomputed)
+ logits and loss buffers (batch x sequence x vocabulary) + the framework's overhead (the process baseline
on a CPU; CUDA context and allocator slack on a GPU). The coefficients marked "measured" were fitted on
this project's CPU benchmark (benchmarks/memory_estimate.py); docs/memory.md gives its accuracy.
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import nn

from ..config.load import as_config
from ..config.sections import Config
from ..methods.adapter import BottleneckAdapter
from ..methods.registry import get_method
from ..methods.selection import decoder_layers
from ..params import meta_model, tokenizer_if_any
from ..speed.activations import is_gated_mlp
from ..speed.allocator import active_allocator
from ..speed.split_step import split_parts
from ..training.loss import chunked_loss_unsupported_reason
from ..training.sharding import Sharding, sharding_of

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# 4-bit: 0.5 byte per weight plus the block constants: fp32 absmax per 64 weights, or with double quantization
# an 8-bit absmax per 64 plus fp32 constants per 256 blocks.
FOUR_BIT_BYTES = {False: 0.5 + 4 / 64, True: 0.5 + 1 / 64 + 4 / (64 * 256)}
OPTIMIZER_BYTES_PER_PARAM = {"adamw": 8, "adamw_8bit": 2}  # two moments, fp32 or 8-bit; adafactor is per shape
# measured (fitted with the allocator factors below on benchmarks/memory_estimate.py's fitted runs): the process
# before training, python + torch + transformers + peft + llm-tuning + a tokenizer, by malloc (glibc with large
# blocks on huge pages)
CPU_BASELINE_BYTES = {"glibc": 730 * 2**20, "tcmalloc": 620 * 2**20}
CUDA_CONTEXT_BYTES = 500 * 2**20  # typical CUDA context + cuBLAS workspace, as nvidia-smi counts it
CUDA_ALLOCATOR_SLACK = 1.10  # reserved over allocated in PyTorch's caching allocator
LOGITS_COPIES = 3.5  # measured: logits, their log-softmax for the loss, the gradients of both, transients
CHUNKED_LOGITS_COPIES = 1  # one chunk's fp32 logits, turned into their gradient in place (training/loss.py)
# measured on a CPU: the allocator keeps freed blocks of the forward pass's temporaries, so the process holds more
# than autograd saves: on glibc with torch's large blocks on huge pages, and on tcmalloc, which reuses freed blocks
# by size (speed/allocator.py)
CPU_ALLOCATOR_FACTORS = {"glibc": 1.6, "tcmalloc": 1.5}
# measured on the speed benchmark's run (SmolLM2-135M, LoRA, 4 x 384 tokens, tcmalloc): a split step's copy's baseline
SPLIT_COPY_BASELINE_BYTES = 96 * 2**20


def cpu_malloc(allocator: str | None = None) -> str:
    """The malloc whose measured figures apply: `allocator`, by default this process's; glibc's for any other."""
    allocator = allocator or active_allocator()
    return allocator if allocator in CPU_ALLOCATOR_FACTORS else "glibc"


# attention output projections: their input (the attention output) is kept by attention's own backward
OUTPUT_PROJECTIONS = {"o_proj", "out_proj", "dense", "c_proj", "wo"}


def estimate(
    config: Config | str | Path | dict | None = None,
    overrides=(),
    device: str = "cpu",
    allocator: str | None = None,
    processes: int = 1,
    tokenizer=None,
) -> dict:
    """Predicted peak memory of the training run `config` describes, by component, in bytes; on a CPU, for the
    malloc `allocator` (tcmalloc, glibc; by default the one this process runs on). With `processes` > 1, what each
    of that many training processes holds, under the sharding the config sets (training/sharding.py). `tokenizer`:
    the model's, where the caller has loaded it already (a method may need it); else it is loaded here."""
    config = as_config(config, overrides)
    path, model_config, model = meta_model(config)
    base_bytes, quantized_params = weight_bytes(model, config)  # before the method adds its own tensors
    method = get_method(config.method.name)
    model = method.apply(model, config.method, tokenizer if tokenizer is not None else tokenizer_if_any(config, path))
    trained = [p for p in model.parameters() if p.requires_grad]
    trained_count = sum(p.numel() for p in trained)
    added = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not method.trains_base)
    shape = model_config.get_text_config()
    tokens = config.train.batch_size * (config.data.max_length + virtual_input_tokens(model))
    malloc = cpu_malloc(allocator) if device == "cpu" else None
    activations = activation_bytes(shape, config, tokens, model) * (CPU_ALLOCATOR_FACTORS[malloc] if malloc else 1.0)
    chunked = bool(config.train.loss_chunk_size) and chunked_loss_unsupported_reason(model) is None  # as trainer.py
    components = {
        "weights": base_bytes + 4 * added,
        "gradients": 4 * trained_count,
        "optimizer": optimizer_bytes(trained, config.train.optimizer),
        "activations": activations,
        "logits": logits_bytes(config, chunked, tokens, shape.vocab_size),
        "overhead": CPU_BASELINE_BYTES[malloc] if malloc else CUDA_CONTEXT_BYTES,
    }
    if method.trains_base:
        # The model's own weight gradients are allocated layer by layer in the backward pass while that layer's
        # activations are freed: the smaller of the two is not held on top of the other (measured: full, freeze).
        components["overlap"] = -min(components["gradients"], activations)
    parts = split_parts(model, config.train.batch_size, processes, device == "cpu", chunked)[0] if config.train.split_step else 1
    if parts > 1:  # activations are shared out; each copy: its loss buffer, its gradients twice (its own, the shared ones)
        per_copy = components["logits"] + 2 * components["gradients"] + SPLIT_COPY_BASELINE_BYTES
        components["split_copies"] = (parts - 1) * per_copy
    if quantized_params and device == "cpu":
        # measured: bitsandbytes' CPU kernels keep dequantized copies of the weights for the backward pass
        components["dequantized"] = quantized_params * 4
    if device == "cuda":
        allocated = sum(v for k, v in components.items() if k != "overhead")
        components["overhead"] += int(allocated * (CUDA_ALLOCATOR_SLACK - 1))
    assumptions, host_bytes = {}, 0
    if processes > 1:
        host_bytes = share_between_processes(components, assumptions, sharding_of(config), processes, model)
    components = {k: int(v) for k, v in components.items()}
    return {
        "device": device,
        "processes": processes,
        "total_bytes": sum(components.values()),
        "components": components,
        "assumptions": assumptions,
        "host_bytes": int(host_bytes),
        "trainable_params": trained_count,
        "tokens_per_micro_batch": tokens,
    }


def share_between_processes(components: dict, assumptions: dict, sharding: Sharding, processes: int, model) -> int:
    """Turn one process's components into what each of `processes` holds under `sharding`, saying per component what
    it assumes; returns the bytes moved to host memory (offloaded optimizer states)."""
    n = processes
    if sharding.kind == "ddp":
        components["ddp_buckets"] = components["gradients"]
        assumptions.update(
            weights=f"a full copy in each of the {n} processes (DDP)",
            gradients="full, in each process",
            optimizer="full, in each process",
            ddp_buckets="DDP's buckets: a second copy of the gradients, reduced between the processes",
        )
        return 0
    if sharding.weights_sharded:
        components["gathered_layer"] = 2 * decoder_layer_bytes(model, components["weights"])
        components["weights"] /= n
        assumptions["weights"] = f"divided between {n} processes"
        assumptions["gathered_layer"] = "one decoder layer gathered whole for compute and the next prefetched"
    else:
        assumptions["weights"] = "a full copy in each process"
    components["gradients"] /= n
    assumptions["gradients"] = f"divided between {n} processes"
    host = 0
    if sharding.optimizer_offloaded:
        host, components["optimizer"] = components["optimizer"] / n, 0
        assumptions["optimizer"] = "offloaded to host memory (counted apart)"
    else:
        components["optimizer"] /= n
        assumptions["optimizer"] = f"divided between {n} processes"
    if sharding.weights_offloaded:  # ZeRO-3's offload_param: only the gathered layers are on the device
        host, components["weights"] = host + components["weights"], 0
        assumptions["weights"] = "offloaded to host memory (counted apart); each layer gathered onto the device"
    if "overlap" in components:  # gradients freed layer by layer overlap the activations by the smaller share now
        components["overlap"] = -min(components["gradients"], components["activations"])
    assumptions.update(activations="per process: its own micro-batch", logits="per process: its own micro-batch")
    return host


def decoder_layer_bytes(model, weights: float) -> float:
    """Bytes of one decoder layer's weights, at the bytes per parameter of the whole model's `weights`."""
    first_layer = decoder_layers(model)[1][0]
    return weights * sum(p.numel() for p in first_layer.parameters()) / sum(p.numel() for p in model.parameters())


def logits_bytes(config: Config, chunked: bool, tokens: int, vocab_size: int) -> int:
    """fp32 logits and what the loss makes of them: for the whole micro-batch with transformers' loss, for one
    chunk of labelled positions at a time with ours (training/loss.py; `chunked`: where it applies)."""
    if chunked:
        return int(CHUNKED_LOGITS_COPIES * min(tokens, config.train.loss_chunk_size) * vocab_size * 4)
    return int(LOGITS_COPIES * tokens * vocab_size * 4)


def virtual_input_tokens(model) -> int:
    """Tokens prompt and P-tuning prepend to every input (prefix tuning adds keys and values, not inputs)."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is None or getattr(peft_config, "peft_type", None) not in ("PROMPT_TUNING", "P_TUNING"):
        return 0
    return peft_config.num_virtual_tokens


def weight_bytes(model, config: Config) -> tuple[int, int]:
    """Bytes of the base weights, and how many of them are quantized: quantized linear layers (not the LM head)
    at their packed size, the rest in model.dtype (fp32 after k-bit preparation, which upcasts them)."""
    quantization = config.model.quantization
    other_bytes = DTYPE_BYTES[config.model.dtype] if quantization == "none" else 4
    head = model.get_output_embeddings()
    quantized: set[int] = set()
    total = 0.0
    if quantization != "none":
        per_weight = 1.0 if quantization == "8bit" else FOUR_BIT_BYTES[config.model.double_quant]
        for module in model.modules():
            if isinstance(module, nn.Linear) and module is not head:
                quantized.add(id(module.weight))
                total += module.weight.numel() * per_weight
    total += sum(p.numel() * other_bytes for p in model.parameters() if id(p) not in quantized)
    quantized_count = sum(p.numel() for p in model.parameters() if id(p) in quantized)
    return int(total), quantized_count


def optimizer_bytes(trained, optimizer: str) -> int:
    if optimizer == "adafactor":  # factored second moments: a row and a column vector per matrix
        return sum(4 * (sum(p.shape) if p.dim() >= 2 else p.numel()) for p in trained)
    return OPTIMIZER_BYTES_PER_PARAM[optimizer] * sum(p.numel() for p in trained)


def activation_bytes(shape, config: Config, tokens: int, model) -> int:
    """Tensors autograd saves for the backward pass (measured with saved_tensors_hooks on SmolLM2, linear in
    tokens). Per token and layer the frozen path keeps about 3 x intermediate + 2 x hidden values (norm inputs,
    attention's q/k/v/output, the MLP's branches; 2 x intermediate once lean activations rewrite a gated MLP);
    each trained projection adds what its weight gradient needs (`trained_projection_inputs`). Attention that
    materialises its probabilities adds 2 x heads x sequence. Only the layers from the first one that trains
    onwards save anything. With checkpointing: one hidden state per layer, plus one layer recomputed."""
    hidden = shape.hidden_size
    intermediate = getattr(shape, "intermediate_size", None) or 4 * hidden
    bytes_per = 2 if config.train.precision in ("bf16", "fp16") else 4
    # a gated MLP keeps gate, act(gate) and up; with train.lean_activations gate and up only (speed/activations.py)
    lean_mlp = config.train.lean_activations and any(is_gated_mlp(m) for m in model.modules())
    frozen_path = (2 if lean_mlp else 3) * intermediate + 2 * hidden
    if _eager_attention(shape):
        frozen_path += 2 * shape.num_attention_heads * config.data.max_length  # scores and probabilities
    layers = layers_with_gradients(model, shape.num_hidden_layers)
    extra = trained_projection_inputs(model, hidden)
    per_layer = [frozen_path + extra.get(index, 0) for index in range(shape.num_hidden_layers - layers, shape.num_hidden_layers)]
    held = layers * int8_held_inputs(config, hidden, intermediate) * tokens * bytes_per
    if config.train.gradient_checkpointing:
        return int((layers * hidden + max(per_layer, default=0)) * tokens * bytes_per + held)
    return int(sum(per_layer) * tokens * bytes_per + held)


def int8_held_inputs(config: Config, hidden: int, intermediate: int) -> int:
    """Values per token and layer that bitsandbytes' 8-bit matmul on a CPU keeps on top: it stores every
    linear layer's input as a plain attribute of its autograd context (MatMul8bitFp: `ctx.A = A`), frozen or
    not, out of reach of saved-tensor hooks, so checkpointing cannot drop them either. The two normalised block
    inputs and the down projection's input are new; the attention output is shared with attention's own saved
    output unless checkpointing dropped that (docs/memory.md has the runs that showed it)."""
    if config.model.quantization != "8bit":
        return 0
    return 2 * hidden + intermediate + (hidden if config.train.gradient_checkpointing else 0)


def trained_projection_inputs(model, hidden: int) -> dict[int, int]:
    """Values per token, by layer index, that trained projections keep beyond the frozen path: a weight (or a
    LoRA / feed-forward IA3 adapter) needs its input, which frozen layers do not keep: the normalised block input
    once per attention and once per MLP (q/k/v share one, gate/up share one), the intermediate activation for a
    down projection; the attention output is kept anyway (o_proj adds nothing). An output-scaling IA3 vector
    keeps the projection's output. A bottleneck adapter keeps its input, its bottleneck before and after the
    non-linearity (and the dropout's mask)."""
    extra: dict[int, int] = {}
    shared_inputs: set[tuple[int, str]] = set()
    adapters: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in adapters):
            continue  # the adapter's own sub-layers (lora_A, lora_B, base_layer): counted with the adapter
        layer = re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", name + ".")
        if isinstance(module, BottleneckAdapter):
            adapters.append(name)
            bottleneck_values = (3 if module.dropout.p else 2) * module.down.out_features
            extra[int(layer.group(1))] = extra.get(int(layer.group(1)), 0) + module.down.in_features + bottleneck_values
            continue
        is_adapter = hasattr(module, "base_layer") and hasattr(module, "in_features")
        if is_adapter:
            adapters.append(name)
        if layer is None or not (is_adapter or isinstance(module, nn.Linear)):
            continue
        # a plain layer by its own weight and bias (a bottleneck adapter may hang below a frozen one)
        if not any(p.requires_grad for p in module.parameters(recurse=is_adapter)):
            continue
        index = int(layer.group(1))
        if getattr(module, "is_feedforward", None) is False:  # IA3 on k/v scales the output
            extra[index] = extra.get(index, 0) + module.out_features
            continue
        group = "attention" if re.search(r"attn|attention", name) else "mlp"
        if module.in_features != hidden:
            extra[index] = extra.get(index, 0) + module.in_features  # a down projection's own input
        elif not (group == "attention" and name.rsplit(".", 1)[-1] in OUTPUT_PROJECTIONS) and (index, group) not in shared_inputs:
            shared_inputs.add((index, group))
            extra[index] = extra.get(index, 0) + hidden
    return extra


def layers_with_gradients(model, layer_count: int) -> int:
    """How many layers the backward pass goes through: from the first layer holding a trained parameter to the
    last (all of them when something before the layers trains: embeddings, virtual tokens, prefixes)."""
    first = layer_count
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        match = re.search(r"\.(?:layers|h|blocks)\.(\d+)\.", name)
        if match is None and not re.search(r"lm_head|output_layer|\.norm\.|ln_f|final_layer", name):
            return layer_count  # before the layers (embeddings, prompt encoders, prefixes)
        if match is not None:
            first = min(first, int(match.group(1)))
    return layer_count - first


def _eager_attention(shape) -> bool:
    """Architectures whose attention stores its probability matrix (BLOOM's alibi attention)."""
    return bool(re.match(r"bloom|gpt2|falcon", getattr(shape, "model_type", "")))
