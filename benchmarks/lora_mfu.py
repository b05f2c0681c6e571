"""Tokens/s and model FLOPs utilisation (MFU) of llm-tuning's LoRA on a random model of a given shape, by default
Llama-3.2-1B's, through the same path as `llm-tuning train` (packing, chunked loss and the other defaults).

    python benchmarks/lora_mfu.py [--shape llama-3.2-1b|smollm2-135m] [--layers N] [--max-length 1024]
                                  [--batch-size 4] [--steps 20] [--warmup 3] [--peak-tflops X] [--output FILE]

The weights are random (they do not change the speed), the tokenizer is SmolLM2's (its 49,152 ids fit both shapes'
vocabularies), and every record fills max length with a one-line prompt, so almost every token is labelled.
LoRA r=8 on q_proj and v_proj, lr 1e-4, seed 42. On a GPU the run is bf16 (base in bfloat16, train.precision=bf16,
trained weights in fp32); on a CPU fp32. Tokens/s is measured over the steps after the first `--warmup`.

Model FLOPs per token, with L = max length (every row one full sample), N = the frozen linear weights (q, k, v, o,
gate, up and down of every layer, and the LM head) and N_lora = the LoRA weights:

    4 N                                  forward (2 N) and input gradient (2 N); frozen weights get no gradient
  + 6 N_lora                             forward, input gradient and weight gradient
  + 12 layers heads head_dim (L + 1)/2   attention scores and values, forward and backward (twice the forward),
                                         each token seeing (L + 1)/2 positions on average (causal)

MFU = tokens/s x FLOPs per token / peak. The peak is --peak-tflops, else the dense bf16 figure of a known GPU
(H100 and H200 SXM 989, H100 PCIe 756, A100 312 TFLOP/s), else, on a CPU, the best fp32 product rate measured here in this process
(oneDNN, as the frozen layers multiply on AMD CPUs; torch's own on others), which is the ceiling fp32 training meets.
Skips (exit 0) when SmolLM2's tokenizer cannot be provisioned.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from speed_vs_tutorial import LORA, PRECISIONS  # the speed benchmark's LoRA, and its bf16 overrides for a GPU

SHAPES = {  # the transformers LlamaConfig fields of each shape
    "llama-3.2-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
    },
    "smollm2-135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
}
GPU_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16; first name found wins


def flops_per_token(shape: dict, max_length: int, lora_r: int = 8) -> dict:
    """The model FLOPs per token of LoRA training, by term (see the module's docstring)."""
    hidden, layers, head_dim = shape["hidden_size"], shape["num_hidden_layers"], shape["head_dim"]
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    q, kv = heads * head_dim, kv_heads * head_dim
    per_layer = hidden * q + 2 * hidden * kv + q * hidden + 3 * hidden * shape["intermediate_size"]
    frozen = layers * per_layer + shape["vocab_size"] * hidden
    lora = layers * lora_r * ((hidden + q) + (hidden + kv))  # A and B of q_proj and v_proj
    attention = 12 * layers * heads * head_dim * (max_length + 1) / 2
    return {"frozen": 4 * frozen, "lora": 6 * lora, "attention": attention, "total": 4 * frozen + 6 * lora + attention}


def peak_flops(device: str, given_tflops: float | None) -> tuple[float, str]:
    """The peak FLOP/s MFU is taken against, and where the figure comes from."""
    import torch

    if given_tflops:
        return given_tflops * 1e12, "--peak-tflops"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{name}, dense bf16 datasheet"
        sys.exit(f"no known peak for {name}: give --peak-tflops")
    return measured_cpu_peak(), "best fp32 product measured here"


def measured_cpu_peak() -> float:
    """The best rate of a few 2048-cubed fp32 products, by torch's products or oneDNN, whichever is faster here."""
    import torch

    from llm_tuning.speed.cpu_matmul import onednn_linear

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(8):
        for product in (lambda: onednn_linear(a, b), lambda: a @ b.t()):
            started = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - started)
    return 2 * 2048**3 / best


def write_random_model(shape: dict, folder: Path, tokenizer_dir: str) -> None:
    """A random Llama model of `shape` and SmolLM2's tokenizer, saved in `folder`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            **shape, max_position_embeddings=8192, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
        )
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def filling_records(count: int, max_length: int) -> list[dict]:
    """Records whose answers alone are longer than max_length tokens (digits and words, a few chars per token).
    Made up, not speed_vs_tutorial.long_records: no data file is needed, so the script runs on a GPU machine too."""
    answer = " ".join(f"step {i} of the plan, then {i * 7 % 13} more." for i in range(max_length))
    return [{"instruction": f"Write plan {i}.", "input": "", "output": answer} for i in range(count)]


class StepClock(TrainerCallback):
    """Records, at the end of each optimizer step, the time and the tokens seen so far."""

    def __init__(self):
        self.marks: list[tuple[float, int]] = []

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the step's kernels, not only their launches
        self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    def rate(self, warmup: int) -> float:
        """Tokens per second over the steps after the first `warmup` (at least 1: the first step also sets up)."""
        (start, tokens_before), (end, tokens_after) = self.marks[warmup - 1], self.marks[-1]
        return (tokens_after - tokens_before) / (end - start)


def train_with_clock(overrides: list[str], clock: StepClock) -> dict:
    from llm_tuning.training import run as training

    build_trainer = training.build_trainer

    def build_with_clock(*args, **kwargs):
        trainer = build_trainer(*args, **kwargs)
        trainer.add_callback(clock)
        return trainer

    training.build_trainer = build_with_clock
    try:
        return training.train({}, overrides)
    finally:
        training.build_trainer = build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    parser.add_argument("--layers", type=int, help="fewer layers than the shape has (a quicker look on a CPU)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the rate")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, in TFLOP/s, for MFU")
    parser.add_argument("--output", type=Path, help="also write the table (markdown) here")
    parser.add_argument("overrides", nargs="*", help="more llm-tuning overrides (key=value)")
    args = parser.parse_args()
    if not 1 <= args.warmup < args.steps:
        sys.exit(f"--warmup must be at least 1 and below --steps ({args.steps}), got {args.warmup}")

    import torch

    from llm_tuning.errors import UserError
    from llm_tuning.models.resolve import resolve_model_path
    from llm_tuning.speed.allocator import restart_with_preferred_allocator

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        restart_with_preferred_allocator()  # on tcmalloc where installed, as the llm-tuning command trains
    try:
        tokenizer_dir = resolve_model_path("smollm2-135m")
    except UserError as error:
        print(f"skipped: SmolLM2's tokenizer is not available ({error})")
        return

    work = Path(tempfile.mkdtemp(prefix="llm-tuning-mfu-"))
    shape = {**SHAPES[args.shape], **({"num_hidden_layers": args.layers} if args.layers else {})}
    # in a process of its own, so that building the random model adds nothing to this one's peak RSS
    writer = multiprocessing.get_context("spawn").Process(target=write_random_model, args=(shape, work / "model", tokenizer_dir))
    writer.start()
    writer.join()
    if writer.exitcode != 0:
        sys.exit(f"could not write the random model to {work / 'model'}")
    data = work / "records.json"
    data.write_text(json.dumps(filling_records(args.batch_size * args.steps, args.max_length)), encoding="utf-8")
    precision = PRECISIONS["bf16" if device == "cuda" else "fp32"]  # fp32: the config's default
    clock = StepClock()
    summary = train_with_clock(
        [
            f"model.path={work / 'model'}",
            f"data.path={data}",
            "data.template=plain",
            *LORA,
            *precision,
            f"data.max_length={args.max_length}",
            f"train.batch_size={args.batch_size}",
            f"train.max_steps={args.steps}",
            "train.learning_rate=1e-4",
            "train.seed=42",
            "train.save_steps=100000",
            f"train.output_dir={work / 'run'}",
            *args.overrides,
        ],
        clock,
    )

    flops = flops_per_token(shape, args.max_length)
    rate = clock.rate(args.warmup)
    peak, peak_source = peak_flops(device, args.peak_tflops)
    label = args.shape + (f" ({shape['num_hidden_layers']} layers)" if args.layers else "")
    memory = "peak GPU memory (reserved)" if device == "cuda" else "peak RSS"
    title = (
        f"LoRA r=8 on q_proj,v_proj, random {label}, max length {args.max_length}, micro-batch {args.batch_size}, "
        f"{args.steps} steps ({args.warmup} left out), {'bf16' if device == 'cuda' else 'fp32'} on "
        f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}"
    )
    row = (
        f"| {rate:.1f} | {flops['total'] / 1e9:.3f} ({flops['frozen'] / 1e9:.3f} + {flops['lora'] / 1e9:.4f} + "
        f"{flops['attention'] / 1e9:.3f}) | {rate * flops['total'] / 1e12:.3f} | {peak / 1e12:.3f} ({peak_source}) | "
        f"{rate * flops['total'] / peak:.1%} | {summary['peak_memory_bytes'] / 2**20:,.0f} MiB |"
    )
    header = (
        f"| tokens/s | model GFLOP per token (4 N + 6 N_lora + attention) | achieved TFLOP/s | peak TFLOP/s | MFU | {memory} |"
    )
    text = "\n".join([title, "", header, "| ---: | ---: | ---: | ---: | ---: | ---: |", row])
    print("\n" + text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(f"Command: `python benchmarks/lora_mfu.py {' '.join(sys.argv[1:])}`\n\n{text}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
