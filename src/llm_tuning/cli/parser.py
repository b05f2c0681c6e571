"""The command line: one subcommand per command, with its help text; each runs a function of commands.py."""

from __future__ import annotations

import argparse
import os

from .. import __version__
from ..export.llama_cpp import QUANTIZER_TYPES
from .commands import (
    cmd_chat,
    cmd_compare,
    cmd_compare_variant,
    cmd_estimate,
    cmd_eval,
    cmd_export,
    cmd_generate,
    cmd_inspect,
    cmd_merge,
    cmd_params,
    cmd_serve,
    cmd_train,
)

CONFIG_HELP = "YAML config with sections model, method, data, train (every key: docs/config.md)"
OVERRIDES_HELP = "section.key=value settings that override the config, e.g. train.max_steps=20 method.r=16"
DEFAULTS_NOTE = "; without one, the defaults (smollm2-135m, LoRA)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-tuning",
        description="Fine-tune causal language models with parameter-efficient methods, then use the result.",
        epilog="Run 'llm-tuning COMMAND --help' for a command's options. Errors in input exit with status 2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "train",
        help="fine-tune a model as a config describes",
        description="Fine-tune the base model (model.path) on instruction data (data.path) with a method "
        "(method.name). Writes the adapter, config.yaml, log.jsonl, run_summary.json and checkpoints to "
        "train.output_dir. Ctrl-C saves a checkpoint and stops; train.resume=true continues from it. Also runs "
        "under torchrun and accelerate launch (docs/distributed.md).",
    )
    _add_config_arguments(p, required=True)
    p.add_argument(
        "--nproc",
        type=_positive_int,
        default=1,
        metavar="N",
        help="train in N processes on this machine (through torchrun; one per GPU, or gloo on a CPU); the global "
        "batch is train.batch_size x gradient_accumulation_steps x N",
    )
    p.set_defaults(run=cmd_train)

    p = commands.add_parser(
        "params",
        help="count what a config's method trains, from the model's config.json alone",
        description="Print what the method of CONFIG trains on its model, module by module, and the line "
        "'trainable params: X || all params: Y || trainable%: Z' (as peft prints it). The model is built on the "
        "meta device from its config.json: no weights are needed or loaded, so a 7B model is counted in seconds.",
    )
    _add_config_arguments(p, required=False, note=DEFAULTS_NOTE)
    p.add_argument("--json", action="store_true", help="print the counts and the breakdown as JSON")
    p.set_defaults(run=cmd_params)

    p = commands.add_parser(
        "estimate",
        help="predict a training run's peak memory from its config, before downloading or training",
        description="Predict the peak memory of the training run CONFIG describes, from the model's config.json "
        "alone: weights (by dtype and quantization), gradients, optimizer states, activations, logits and the "
        "framework's overhead. With --budget, propose the largest micro-batch (with checkpointing and quantization "
        "if needed) that fits, keeping the effective batch through gradient accumulation.",
    )
    _add_config_arguments(p, required=False, note=DEFAULTS_NOTE)
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="whose overhead to add: the CPU process or a CUDA GPU (default cpu)",
    )
    p.add_argument(
        "--nproc",
        type=_positive_int,
        default=1,
        metavar="N",
        help="estimate for each of N training processes (DDP, or the sharding train.fsdp / train.deepspeed set)",
    )
    p.add_argument("--budget", metavar="SIZE", help="memory available, e.g. 24GiB: propose settings that fit")
    p.add_argument("--json", action="store_true", help="print total_bytes and components as JSON")
    p.set_defaults(run=cmd_estimate)

    p = commands.add_parser(
        "inspect",
        help="show what the model will be trained on: samples, lengths, checks",
        description="Encode the training data of CONFIG as train would and show N samples with trained and masked text "
        "told apart, the length statistics of the whole set (mean, p50, p95, max, how many data.max_length truncates, "
        "a recommended max length), checks of the encoding, and a length histogram (PNG).",
    )
    _add_config_arguments(p, required=True)
    p.add_argument("--samples", type=int, default=3, metavar="N", help="how many samples to show (default 3)")
    p.add_argument("--histogram", metavar="FILE", help="where to write the PNG (default: next to CONFIG; never overwrites)")
    p.add_argument("--json", action="store_true", help="print samples, stats and checks as JSON")
    p.set_defaults(run=cmd_inspect)

    p = commands.add_parser(
        "generate",
        help="answer prompts with a base model or a trained run",
        description="Answer prompts, batched, with the base model of CONFIG, or with a trained run (--adapter RUN_DIR: "
        "its base model, method and template are read from RUN_DIR/config.yaml).",
    )
    _add_model_arguments(p)
    p.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeat for several)")
    p.add_argument(
        "--prompts-file",
        metavar="FILE",
        help="prompts: a .txt file (one per line) or .json/.jsonl records with instruction (and input)",
    )
    p.add_argument("--output", metavar="FILE", help="also write {prompt, response} lines to this new JSONL file")
    _add_generation_arguments(p)
    p.set_defaults(run=cmd_generate)

    p = commands.add_parser(
        "eval",
        help="score a trained run (or a base model) on a test set",
        description="Generate an answer for every record of --data (its last assistant turn is the reference), score "
        "them (BLEU-4, ROUGE-1/2/L with jieba segmentation, exact match) and measure the loss on the references. "
        "Writes predictions.jsonl and metrics.json to --output (default RUN_DIR/eval, never overwritten).",
    )
    _add_model_arguments(p)
    p.add_argument("--data", required=True, metavar="FILE", help="test records (any format train reads)")
    p.add_argument("--output", metavar="DIR", help="where to write predictions.jsonl and metrics.json")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N records")
    p.add_argument(
        "--compare-base", action="store_true", help="also score the run's base model, without the adapter, on the same prompts"
    )
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    _add_generation_arguments(p)
    p.set_defaults(run=cmd_eval)

    p = commands.add_parser(
        "chat",
        help="chat interactively with a base model or a trained run",
        description="Interactive chat that streams the answer as it is generated and keeps the conversation. "
        "Type /reset to start over, /exit (or Ctrl-D) to leave.",
    )
    _add_model_arguments(p)
    _add_generation_arguments(p)
    p.set_defaults(run=cmd_chat)

    p = commands.add_parser(
        "serve",
        help="serve a base model and trained runs over an OpenAI-compatible HTTP API",
        description="Serve the base model of CONFIG, or the runs given with --adapter (their base, loaded once, is "
        "served by its own name too), over OpenAI's API: /v1/chat/completions, /v1/completions, /v1/models, and "
        "/health. Requests that arrive together are answered in one batch. Listens on 127.0.0.1 unless --host says "
        "otherwise (docs/serving.md).",
    )
    _add_config_arguments(p, required=False, note="; not needed with --adapter")
    p.add_argument(
        "--adapter",
        action="append",
        metavar="[NAME=]RUN_DIR",
        help="a training run to serve, by NAME (default: its folder's name); repeat for several runs on one base",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1/* (default: $LLM_TUNING_API_KEY; none when unset)",
    )
    p.add_argument("--max-queue", type=int, default=256, metavar="N", help="requests that may wait; more get 503 (default 256)")
    p.add_argument("--max-batch", type=int, default=32, metavar="N", help="most requests answered in one batch (default 32)")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for generation (default: torch's, one per core; on a CPU shared with other work, 1 can be faster)",
    )
    p.set_defaults(run=cmd_serve)

    p = commands.add_parser(
        "merge",
        help="merge a trained adapter into its base model",
        description="Fold a LoRA run's adapter into its base model (in full precision) and save a standalone "
        "model folder (safetensors, tokenizer with the run's chat template, generation config) that "
        "AutoModelForCausalLM.from_pretrained loads without llm-tuning.",
    )
    p.add_argument("--adapter", required=True, metavar="RUN_DIR", help="the output_dir of a training run")
    p.add_argument("--output", required=True, metavar="DIR", help="where to write the merged model")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it holds an earlier merged model")
    p.set_defaults(run=cmd_merge)

    p = commands.add_parser(
        "compare",
        help="run methods side by side on the same data and report what each costs and gives",
        description="Read a compare file (a base config and named variants, each a set of overrides), then train "
        "each variant in its own process on the same data, seed and steps, measure each on the same held-out "
        "records, and write results.json, report.md and report.html (charts embedded) to --output. With --plan, "
        "only count what each trains and estimate its peak memory, from config.json alone. Exit status 0 when every "
        "variant completed, 1 when some failed, 2 for bad input, 130 when interrupted.",
    )
    p.add_argument("compare_file", metavar="COMPARE_FILE", help="YAML with base (a config path or its sections) and variants")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every variant, last")
    p.add_argument("--plan", action="store_true", help="trainable parameters and estimated peak memory only, no weights")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="--plan: whose memory to estimate (default cpu)")
    p.add_argument("--output", metavar="DIR", help="the report folder (default runs/compare-NAME); variants in DIR/runs/NAME")
    p.add_argument(
        "--eval-prompts", type=int, default=20, metavar="N", help="held-out prompts answered for BLEU/ROUGE (default 20)"
    )
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="longest answer to those prompts (default 128)")
    p.add_argument("--resume", action="store_true", help="keep the variants already complete in DIR, run the others")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it holds an earlier comparison")
    p.add_argument("--json", action="store_true", help="print the plan or the results as JSON")
    p.set_defaults(run=cmd_compare)

    p = commands.add_parser(
        "export",
        help="write a trained run (or a model folder) as a GGUF file for llama.cpp and Ollama",
        description="Merge the run into its base (as merge does), convert it with llama.cpp's own converter and "
        "quantize it with llama.cpp's quantizer. The file carries the run's template as its chat template and the "
        "token its answers end with as its EOS; FILE.gguf.json says what it holds. Needs `make install-gguf`.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--adapter", metavar="RUN_DIR", help="a training run (merged into its base first)")
    source.add_argument("--model", metavar="PATH", help="a model folder as it is: a merged model or a base model")
    p.add_argument("--format", choices=("gguf",), default="gguf", help="the file format (gguf)")
    p.add_argument(
        "--quant",
        default="f16",
        metavar="TYPE",
        help=f"f16 (default), bf16, f32, q8_0, or a llama.cpp quant: {', '.join(QUANTIZER_TYPES)}",
    )
    p.add_argument("--output", required=True, metavar="FILE.gguf", help="the file to write (kept unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace FILE.gguf if it exists")
    p.add_argument("--ollama", action="store_true", help="also write an Ollama Modelfile beside it")
    p.set_defaults(run=cmd_export)

    p = commands.add_parser("_compare-variant")  # one row of a comparison, in its own process; no help: internal
    p.add_argument("job", metavar="JOB")
    p.set_defaults(run=cmd_compare_variant)
    return parser


def _add_config_arguments(p: argparse.ArgumentParser, required: bool, note: str = "") -> None:
    p.add_argument("config", nargs=None if required else "?", help=CONFIG_HELP + note)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    _add_config_arguments(p, required=False, note="; not needed with --adapter")
    p.add_argument("--adapter", metavar="RUN_DIR", help="serve this training run (its output_dir) instead of the bare base model")


def _add_generation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="longest answer in tokens (default 256)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature, with --sample (default 0.7)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling threshold, with --sample (default 0.9)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="penalise repeated tokens, >1 (default 1.0: off)")


def parse_arguments(argv: list[str] | None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may also follow an option (`train CONFIG --nproc 2 train.max_steps=5`)
    if extra and (not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    _split_config_argument(args)
    return args


def _split_config_argument(args) -> None:
    """`generate train.x=1` has no config file: a first positional with '=' that is not a file is an override."""
    config = getattr(args, "config", None)
    if config and "=" in config and not os.path.exists(config):
        args.overrides = [config, *args.overrides]
        args.config = None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
