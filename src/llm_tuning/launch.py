"""`llm-tuning train CONFIG --nproc N`: start N training processes on this machine through torchrun's own
launcher (torch.distributed.run, in this process, its rendezvous on 127.0.0.1), as
`torchrun --standalone --nproc-per-node N -m llm_tuning train CONFIG` would, and end as the processes did: with
their exit status when they stopped on bad input (2) or Ctrl-C (130), each having said why in one line; with one
line naming the process and status 1 when one died. torchrun stops the others when one fails, so a job never
hangs on a dead process.

On Ctrl-C torchrun passes SIGINT on to the processes, which finish their step, write a checkpoint and stop
together (training/callbacks.py); it waits SHUTDOWN_GRACE_S for that before killing them."""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import elastic_launch
from torch.distributed.run import config_from_args, get_args_parser

from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError

SHUTDOWN_GRACE_S = 600  # torchrun's default (30 s) is shorter than a step and a checkpoint of a large model on a CPU
QUIET_EXITS = (EXIT_USER_ERROR, EXIT_INTERRUPTED)  # the processes printed why themselves


def train_in_processes(nproc: int, train_args: list[str]) -> int:
    """Run `llm-tuning train *train_args` in `nproc` processes; the job's exit status."""
    if "WORLD_SIZE" in os.environ:
        raise UserError("--nproc starts its own processes: run it outside torchrun or accelerate launch")
    # torchrun would give each process one thread; the cores divided between the processes use them all
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    options = [
        *("--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", f"--rdzv-id={uuid.uuid4()}"),  # what --standalone sets
        *(f"--nproc-per-node={nproc}", f"--shutdown-timeout={SHUTDOWN_GRACE_S}", "--max-restarts=0"),
    ]
    launch_config, command, command_args = config_from_args(
        get_args_parser().parse_args([*options, "-m", "llm_tuning", "train", *train_args])
    )
    for name in list(logging.root.manager.loggerDict):  # torchrun's own report of a failure: ours is one line
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        elastic_launch(launch_config, command)(*command_args)
    except ChildFailedError as error:
        return failed_job(error.failures)
    except SignalException as error:
        if error.sigval in (signal.SIGINT, signal.SIGTERM):
            print("interrupted: every process wrote its part of the checkpoint and stopped", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise
    return 0


def failed_job(failures: dict) -> int:
    """The job's exit status from torchrun's failures (by global rank), and one line when a process died."""
    rank, first = min(failures.items(), key=lambda item: item[1].timestamp)
    if first.exitcode in QUIET_EXITS:
        return first.exitcode
    how = f"was killed by {first.signal_name()}" if first.exitcode < 0 else f"exited with status {first.exitcode}"
    print(f"error: training process {rank} (pid {first.pid}) {how}; the other processes were stopped", file=sys.stderr)
    return EXIT_FAILURE
