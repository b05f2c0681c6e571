"""GGUF export of SmolLM2-135M with the demo adapter: for f16, q8_0 and q4_k_m, the file size, llama.cpp's greedy
generation speed on this CPU against transformers' fp32 `generate` on the same prompts, and how closely each file
answers as the fp32 model does (the share of identical tokens over 64 generated, the largest logit difference on the
prompt relative to the largest logit).

    python benchmarks/gguf_export.py [--run runs/demo] [--quants f16 q8_0 q4_k_m] [--tokens 64] [--threads 2]

Trains the demo run first when --run does not exist (examples/demo.yaml, 30 steps). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_tuning import train
from llm_tuning.cli import quiet_libraries
from llm_tuning.data.templates import get_template
from llm_tuning.export import verify
from llm_tuning.export.gguf import export_gguf
from llm_tuning.generation import read_prompts
from llm_tuning.merging import merge

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ROOT / "examples" / "data" / "demo_prompts.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--quants", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    if not (args.run / "config.yaml").is_file():
        train(ROOT / "examples" / "demo.yaml", [f"train.output_dir={args.run}"])
    work = Path(tempfile.mkdtemp(prefix="gguf-bench-"))
    merged = merge(args.run, work / "merged")
    tokenizer = AutoTokenizer.from_pretrained(merged)
    template = get_template("native", tokenizer)
    prompts = [template.prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in read_prompts(PROMPTS)]
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    stops = template.stop_ids(tokenizer)
    reference, seconds, generated = [], 0.0, 0
    for ids in prompts:
        started = time.perf_counter()
        reference.append(verify.transformers_greedy(model, ids, args.tokens, stops))
        seconds += time.perf_counter() - started
        generated += len(reference[-1])
    logits = [verify.transformers_prompt_logits(model, ids) for ids in prompts]
    rows = [("transformers fp32", sum(p.stat().st_size for p in merged.glob("*.safetensors")), generated / seconds, 1.0, 0.0)]
    for quant in args.quants:
        path = work / f"demo-{quant}.gguf"
        export_gguf(path, adapter=args.run, quant=quant)
        llm = verify.load_gguf(path, threads=args.threads)
        seconds, generated, shares, gaps = 0.0, 0, [], []
        for ids, expected, expected_logits in zip(prompts, reference, logits):
            started = time.perf_counter()
            answer = verify.llama_cpp_greedy(llm, ids, args.tokens)
            seconds += time.perf_counter() - started
            generated += len(answer)
            shares.append(verify.same_tokens(answer, expected))
            gap = (verify.llama_cpp_prompt_logits(llm, ids) - expected_logits).abs().max() / expected_logits.abs().max()
            gaps.append(float(gap))
        rows.append((f"llama.cpp {quant}", path.stat().st_size, generated / seconds, sum(shares) / len(shares), max(gaps)))
    print_table(args, rows)


def print_table(args, rows) -> None:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16") if f" {f} " in cpu)
    print(f"Command: `python {' '.join(sys.argv)}`\n")
    print(
        f"CPU: {model_name} ({flags}), {args.threads} threads, {platform.machine()}; run {args.run.name}, "
        f"{len(read_prompts(PROMPTS))} prompts, greedy, up to {args.tokens} new tokens each\n"
    )
    print("| model | file MiB | generation tokens/s | vs transformers | identical tokens | max logit gap |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    base_speed = rows[0][2]
    for name, size, speed, share, gap in rows:
        print(f"| {name} | {size / 2**20:,.1f} | {speed:.1f} | {speed / base_speed:.2f}x | {share:.1%} | {gap:.2%} |")


if __name__ == "__main__":
    main()
