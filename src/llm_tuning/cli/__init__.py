"""The `llm-tuning` command. Mistakes in the user's input (`UserError`) print one line, `error: ...`, and exit
with status 2, and so does a failure inside a model's own code (models/remote_code.py); Ctrl-C exits with 130;
anything else is a bug and keeps its traceback (status 1)."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from ..errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError, first_line
from ..speed.allocator import prefer_recorded_allocator, restart_with_preferred_allocator
from .parser import parse_arguments


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    try:
        if argv is None:  # a command, not a call from Python: restart on tcmalloc (allocator.py), before torch loads
            use_run_allocator(args)
            restart_with_preferred_allocator()
        quiet_libraries()
        return args.run(args)
    except UserError as e:
        report_error(e)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if os.environ.get("WORLD_SIZE", "1") != "1":  # a process of a distributed run whose peer died
            from ..distributed import lost_peer

            if lost_peer(e):
                report_error(f"lost another training process ({first_line(e)}); torchrun stops the job")
                return EXIT_FAILURE
        # a model's own code (trust_remote_code) that fails while it runs, not only while it loads: one line too
        from ..models.remote_code import remote_code_error

        error = remote_code_error(e)
        if error is None:
            raise
        report_error(error)
        return EXIT_USER_ERROR


def use_run_allocator(args) -> None:
    """`llm-tuning train ... train.resume=true` restarts on the malloc its run started on (speed/allocator.py), read
    from the run's run_record.json before torch loads. A config that cannot be read is left to `train` to report."""
    from ..config.sections import TrainConfig
    from ..config.sources import apply_overrides, read_source
    from ..resume import read_run_record

    if args.command != "train":
        return
    try:
        raw, where = read_source(args.config)
        apply_overrides(raw, where, args.overrides)
        settings = raw.get("train") or {}
        if settings.get("resume") is True:
            output_dir = Path(str(settings.get("output_dir") or TrainConfig.output_dir)).expanduser()
            prefer_recorded_allocator(os.environ, read_run_record(output_dir))
    except (UserError, AttributeError, OSError):
        return


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
    # here, not at the top: transformers loads torch, and the allocator restart must come before that
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def report_error(error) -> None:
    """`error: ...` in one write: the processes of a distributed run print theirs to one terminal at once."""
    sys.stderr.write(f"error: {error}\n")
    sys.stderr.flush()
