"""The `llm-tuning` command: one function per subcommand, each parsing its arguments and calling the library.

Mistakes in the user's input (`UserError`) print one line, `error: ...`, and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from .allocator import restart_with_preferred_allocator
from .errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

CONFIG_HELP = "YAML config with sections model, method, data, train (see README, 'Config reference')"
OVERRIDES_HELP = "section.key=value settings that override the config, e.g. train.max_steps=20 method.r=16"
DEFAULTS_NOTE = "; without one, the defaults (smollm2-135m, LoRA)"


def cmd_train(args) -> int:
    from .training import train

    summary = train(args.config, args.overrides)
    return EXIT_INTERRUPTED if summary["status"] == "interrupted" else 0


def cmd_generate(args) -> int:
    from .infer import generate, read_prompts, write_answers

    prompts = list(args.prompt or [])
    if args.prompts_file:
        prompts += read_prompts(args.prompts_file)
    if not prompts:
        raise UserError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    if args.output and os.path.exists(args.output):
        raise UserError(f"--output '{args.output}' already exists; choose a new file")
    answers = generate(args.config, prompts, adapter=args.adapter, overrides=args.overrides, options=_generation_options(args))
    for prompt, answer in zip(prompts, answers):
        print(f"### {prompt}\n{answer}\n", flush=True)
    if args.output:
        write_answers(args.output, prompts, answers)
    return 0


def cmd_eval(args) -> int:
    import json

    from .evaluation import evaluate

    if args.config is None and args.adapter is None:
        raise UserError("eval needs --adapter RUN_DIR (a trained run) or a CONFIG (its base model)")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    report = evaluate(
        args.config,
        args.data,
        adapter=args.adapter,
        output=args.output,
        limit=args.limit,
        compare_base=args.compare_base,
        overrides=args.overrides,
        options=_generation_options(args),
    )
    names = ("bleu4", "rouge1", "rouge2", "rougeL", "exact_match", "loss", "perplexity")
    print(f"{'':<6}" + "".join(f"{name:>12}" for name in names))
    for who in ("model", "base"):
        if who in report:
            print(f"{who:<6}" + "".join(f"{report[who][name]:>12.4f}" for name in names))
    print(f"{report['model']['count']} examples; predictions.jsonl and metrics.json in {report['output']}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def cmd_chat(args) -> int:
    from .infer import chat

    chat(args.config, adapter=args.adapter, overrides=args.overrides, options=_generation_options(args))
    return 0


def cmd_merge(args) -> int:
    from .export import merge

    merge(args.adapter, args.output, overwrite=args.overwrite)
    return 0


def cmd_params(args) -> int:
    import json

    from .params import plan, trainable_line

    report = plan(args.config, args.overrides)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['method']} on {report['model_path']}")
    width = max([len(m["name"]) for m in report["modules"]] + [6])
    print(f"{'trains':<{width}}  {'tensors':>7}  {'params':>15}")
    for module in report["modules"]:
        print(f"{module['name']:<{width}}  {module['tensors']:>7}  {module['params']:>15,d}")
    print(trainable_line(report["trainable_params"], report["all_params"]))
    return 0


def cmd_estimate(args) -> int:
    import json

    from .config import load_config
    from .memory import estimate, propose_for_budget

    config = load_config(args.config, args.overrides)
    report = estimate(config, device=args.device)
    if args.budget:
        report["budget_bytes"] = parse_size(args.budget)
        report["proposal"] = propose_for_budget(config, report["budget_bytes"], device=args.device)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"estimated peak memory of this training run on {args.device} ({report['tokens_per_micro_batch']:,d} tokens per micro-batch):"
    )
    for name, size in report["components"].items():
        print(f"  {name:<12} {_gib(size):>10}")
    print(f"  {'total':<12} {_gib(report['total_bytes']):>10}")
    if args.budget:
        proposal = report["proposal"]
        if proposal is None:
            print(f"nothing fits in {args.budget}, even with batch 1, checkpointing and 4-bit weights")
        else:
            print(f"fits in {args.budget}: " + " ".join(proposal["overrides"]) + f" (estimated {_gib(proposal['total_bytes'])})")
    return 0


def cmd_inspect(args) -> int:
    import json

    from .files import free_path
    from .inspection import inspect_data, write_histogram

    report = inspect_data(args.config, args.overrides, samples=args.samples)
    lengths = report.pop("lengths")
    default = Path(args.config).with_suffix(".lengths.png") if args.config else Path("lengths.png")
    report["histogram"] = str(
        write_histogram(lengths, report["stats"]["max_length"], free_path(Path(args.histogram) if args.histogram else default))
    )
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    mark = ("\033[32m", "\033[0m") if sys.stdout.isatty() else ("\u27e6", "\u27e7")  # trained text in green, or in ⟦ ⟧
    for number, sample in enumerate(report["samples"]):
        trained = sum(label != -100 for label in sample["labels"])
        print(
            f"--- sample {number}: {len(sample['input_ids'])} tokens, {trained} trained{', truncated' if sample['truncated'] else ''} (trained text marked)"
        )
        print("".join(f"{mark[0]}{span['text']}{mark[1]}" if span["trained"] else span["text"] for span in sample["spans"]))
    stats = report["stats"]
    print(
        f"--- {stats['count']} samples, template {report['template']}: length mean {stats['mean']}, p50 {stats['p50']}, "
        f"p95 {stats['p95']}, max {stats['max']} tokens; data.max_length={stats['max_length']} truncates {stats['truncated']}"
    )
    print(
        f"recommended data.max_length: {stats['recommended_max_length']} (1.5 x the mean without outliers) or {stats['p95']} (p95)"
    )
    for check in report["checks"]:
        print(f"{'ok  ' if check['ok'] else 'WARN'} {check['check']}: {check['detail']}")
    print(f"length histogram: {report['histogram']}")
    return 0


def parse_size(text: str) -> int:
    """'24GiB', '512MiB', '8GB', '1.5G' -> bytes (GB and GiB both taken as binary, as nvidia-smi shows)."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise UserError(f"--budget '{text}': write a size such as 24GiB, 512MiB or 8GB")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** " KMGT".index(unit or " "))


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def _generation_options(args):
    from .infer import GenerationOptions

    for name, low in (("max_new_tokens", 1), ("temperature", 1e-6), ("top_p", 1e-6), ("repetition_penalty", 1e-6)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
    )


# --------------------------------------------------------------------------------------------------
# Argument parsing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-tuning",
        description="Fine-tune causal language models with parameter-efficient methods, then use the result.",
        epilog="Run 'llm-tuning COMMAND --help' for a command's options. Errors in input exit with status 2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "train",
        help="fine-tune a model as a config describes",
        description="Fine-tune the base model (model.path) on instruction data (data.path) with a method "
        "(method.name). Writes the adapter, config.yaml, log.jsonl, run_summary.json and checkpoints to "
        "train.output_dir. Ctrl-C saves a checkpoint and stops; train.resume=true continues from it.",
    )
    _add_config_arguments(p, required=True)
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


def _split_config_argument(args) -> None:
    """`generate train.x=1` has no config file: a first positional with '=' that is not a file is an override."""
    config = getattr(args, "config", None)
    if config and "=" in config and not os.path.exists(config):
        args.overrides = [config, *args.overrides]
        args.config = None


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _split_config_argument(args)
    try:
        if argv is None:  # a command, not a call from Python: restart on tcmalloc (allocator.py), before torch loads
            restart_with_preferred_allocator()
        quiet_libraries()
        return args.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def quiet_libraries() -> None:
    """Keep the terminal for our own progress and results: library warnings and their per-file progress bars
    (loading weights, writing shards) are hidden unless LLM_TUNING_VERBOSE=1."""
    if os.environ.get("LLM_TUNING_VERBOSE"):
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # bitsandbytes warns on import that an optional hub-downloaded CPU kernel is missing; its fallback works.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


if __name__ == "__main__":
    raise SystemExit(main())
