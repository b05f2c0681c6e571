"""The commands, one function each: check the arguments, call the library, print the result.

The library is imported inside each function, on purpose: `llm-tuning --help` and a bad argument must answer at
once, without loading torch, and the allocator restart (cli/__init__.py) must happen before torch loads.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

from ..errors import EXIT_FAILURE, EXIT_INTERRUPTED, UserError


def cmd_train(args) -> int:
    if args.nproc > 1:
        from ..config.load import load_config
        from ..launch import train_in_processes

        load_config(args.config, args.overrides)  # a bad config fails here, once, before any process starts
        return train_in_processes(args.nproc, [args.config, *args.overrides])
    from ..training.run import train

    summary = train(args.config, args.overrides)
    return EXIT_INTERRUPTED if summary["status"] == "interrupted" else 0


def cmd_generate(args) -> int:
    from ..generation import generate, read_prompts, write_answers

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
    from ..evaluation import evaluate

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
    from ..generation import chat

    chat(args.config, adapter=args.adapter, overrides=args.overrides, options=_generation_options(args))
    return 0


def cmd_merge(args) -> int:
    from ..merging import merge

    merge(args.adapter, args.output, overwrite=args.overwrite)
    return 0


def cmd_compare(args) -> int:
    from ..comparison.runner import compare

    for name in ("eval_prompts", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    report = compare(
        args.compare_file,
        args.overrides,
        output=args.output,
        plan=args.plan,
        device=args.device,
        eval_prompts=args.eval_prompts,
        max_new_tokens=args.max_new_tokens,
        resume=args.resume,
        overwrite=args.overwrite,
    )
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    elif args.plan:
        print_plan(report)
    else:
        print_comparison(report)
    if args.plan:
        return 0
    return {"completed": 0, "interrupted": EXIT_INTERRUPTED}.get(report["status"], EXIT_FAILURE)


def print_plan(report: dict) -> None:
    for row in report["variants"]:
        print(f"{row['name']} ({row['method']})")
        if row["error"]:
            print(f"  cannot run: {row['error']}")
            continue
        print(f"  {row['trainable_line']}")
        parts = ", ".join(f"{name} {_gib(size)}" for name, size in row["estimated_memory_components"].items())
        print(f"  estimated peak {_gib(row['estimated_peak_memory_bytes'])} on {report['device']}: {parts}")


def print_comparison(report: dict) -> None:
    print(f"{'':<20}{'trainable':>14}{'peak MiB':>10}{'tokens/s':>10}{'held-out':>10}{'BLEU-4':>8}{'ROUGE-L':>9}")
    for row in [report["base"], *report["variants"]]:
        if row["status"] != "completed":
            print(f"{row['name']:<20}{row['status']}: {row.get('error') or ''}")
            continue
        trained = row["name"] != "base"  # the base row trains nothing: no parameters, memory or speed to show
        figures = [
            f"{row['trainable_params']:>14,d}" if trained else f"{'-':>14}",
            f"{row['peak_memory_bytes'] / 2**20:>10,.0f}" if trained else f"{'-':>10}",
            f"{row['tokens_per_s']:>10.1f}" if trained else f"{'-':>10}",
            f"{row['val_loss']:>10.4f}",
            f"{row['bleu4']:>8.2f}",
            f"{row['rougeL']:>9.2f}",
        ]
        print(f"{row['name']:<20}" + "".join(figures))
    print(f"{report['status']}; results.json, report.md and report.html in {report['output']}", file=sys.stderr)


def cmd_compare_variant(args) -> int:
    from ..comparison.worker import run_job

    return run_job(args.job)


def cmd_export(args) -> int:
    from ..export.gguf import export_gguf

    export_gguf(
        args.output, adapter=args.adapter, model=args.model, quant=args.quant, overwrite=args.overwrite, ollama=args.ollama
    )
    return 0


def cmd_serve(args) -> int:
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise UserError("serve needs FastAPI and uvicorn: pip install 'llm-tuning[serve]'")
    from ..serving.launch import run_server

    run_server(
        args.config,
        args.overrides,
        args.adapter or (),
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("LLM_TUNING_API_KEY") or None,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        threads=args.threads,
    )
    return 0


def cmd_params(args) -> int:
    from ..params import plan, trainable_line

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
    from ..config.load import load_config
    from ..memory.budget import propose_for_budget
    from ..memory.estimate import estimate

    config = load_config(args.config, args.overrides)
    report = estimate(config, device=args.device, processes=args.nproc)
    if args.budget:
        report["budget_bytes"] = parse_size(args.budget)
        report["proposal"] = propose_for_budget(config, report["budget_bytes"], device=args.device, processes=args.nproc)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    each = f" in each of {args.nproc} processes" if args.nproc > 1 else ""
    print(
        f"estimated peak memory of this training run on {args.device}{each} ({report['tokens_per_micro_batch']:,d} "
        "tokens per micro-batch):"
    )
    for name, size in report["components"].items():
        note = report["assumptions"].get(name)
        print(f"  {name:<12} {_gib(size):>10}" + (f"  ({note})" if note else ""))
    print(f"  {'total':<12} {_gib(report['total_bytes']):>10}")
    if report.get("host_bytes"):
        print(f"  and {_gib(report['host_bytes'])} of host memory per process (offloaded optimizer states)")
    if args.budget:
        proposal = report["proposal"]
        if proposal is None:
            print(f"nothing fits in {args.budget}, even with batch 1, checkpointing and 4-bit weights")
        else:
            print(f"fits in {args.budget}: " + " ".join(proposal["overrides"]) + f" (estimated {_gib(proposal['total_bytes'])})")
    return 0


def cmd_inspect(args) -> int:
    from ..files import free_path
    from ..inspection import inspect_data, write_histogram

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
            f"--- sample {number}: {len(sample['input_ids'])} tokens, {trained} "
            f"trained{', truncated' if sample['truncated'] else ''} (trained text marked)"
        )
        print("".join(f"{mark[0]}{span['text']}{mark[1]}" if span["trained"] else span["text"] for span in sample["spans"]))
    stats = report["stats"]
    print(
        f"--- {stats['count']} samples, template {report['template']}: length mean {stats['mean']}, p50 {stats['p50']}, "
        f"p95 {stats['p95']}, max {stats['max']} tokens; data.max_length={stats['max_length']} truncates {stats['truncated']}"
    )
    print(
        f"recommended data.max_length: {stats['recommended_max_length']} (1.5 x the mean without outliers) or {stats['p95']} "
        "(p95)"
    )
    for check in report["checks"]:
        print(f"{'ok  ' if check['ok'] else 'WARN'} {check['check']}: {check['detail']}")
    print(f"length histogram: {report['histogram']}")
    return 0


def parse_size(text: str) -> int:
    """'24GiB', '512MiB', '8GB', '1.5G' -> bytes (GB and GiB both taken as binary, as nvidia-smi shows)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise UserError(f"--budget '{text}': write a size such as 24GiB, 512MiB or 8GB")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * 1024 ** " KMGT".index(unit or " "))


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def _generation_options(args):
    from ..generation import GenerationOptions

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
