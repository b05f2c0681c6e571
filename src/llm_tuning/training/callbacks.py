"""Trainer callbacks: a progress bar with the loss, the step log, and a clean stop on Ctrl-C."""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from ..distributed import any_process, world
from ..files import write_errors


class ProgressBar(TrainerCallback):
    """A tqdm bar over optimizer steps with the latest loss."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """End the bar's line; also when training stops on an error, so that the error gets a line of its own."""
        if getattr(self, "bar", None) is not None:
            self.bar.close()


class JsonlLog(TrainerCallback):
    """Appends every logged step to log.jsonl (appends, so a resumed run continues the same log)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            with write_errors(self.path), self.path.open("a", encoding="utf-8") as f:
                f.write(log_line(state.log_history[-1]))


def log_line(entry: dict) -> str:
    """A line of log.jsonl from an entry of the Trainer's log history: step and epoch first, then the rest."""
    rest = {key: value for key, value in sorted(entry.items()) if key not in ("step", "epoch")}
    return json.dumps({"step": entry["step"], "epoch": entry.get("epoch"), **rest}) + "\n"


class DivergenceGuard(TrainerCallback):
    """Stops the run at the first non-finite loss or trained parameter, before it is checkpointed.

    A step whose gradients overflow under fp16 loss scaling is skipped by the scaler and leaves the
    parameters finite, so only real divergence trips this."""

    def __init__(self, model):
        self.trained = [p for p in model.parameters() if p.requires_grad]
        self.problem: str | None = None
        self.step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        # one flag per tensor, read back once: on a GPU each read waits for the device, so not one per tensor
        flags = [torch.isfinite(p).all() for p in self.trained]
        if flags and not bool(torch.stack([flag.to(flags[0].device) for flag in flags]).all()):
            self._stop(state, control, "trained parameters became NaN or infinite")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and not math.isfinite(logs["loss"]):
            self._stop(state, control, f"the loss became {logs['loss']}")

    def _stop(self, state, control, problem: str) -> None:
        if self.problem is None:
            self.problem, self.step = problem, state.global_step
        control.should_save = False  # never checkpoint a diverged model
        control.should_training_stop = True


class StopOnInterrupt(TrainerCallback):
    """After Ctrl-C, finish the current step, write a checkpoint and stop: every process on the same step, whichever
    got the signal first (each asks the others after every step)."""

    def __init__(self, interrupted: list):
        self.interrupted = interrupted

    def on_step_end(self, args, state, control, **kwargs):
        if any_process(bool(self.interrupted)):
            self.interrupted[:] = [True]
            control.should_save = True
            control.should_training_stop = True


class interrupt_requests:
    """Context manager: the first Ctrl-C is recorded (the list becomes truthy) instead of raising;
    a second one raises KeyboardInterrupt as usual."""

    def __enter__(self) -> list:
        self.flag: list = []
        self.previous = None
        if threading.current_thread() is not threading.main_thread():
            return self.flag  # signals can only be handled on the main thread; Ctrl-C then aborts as usual
        self.previous = signal.getsignal(signal.SIGINT)

        together = world().size > 1

        def handler(signum, frame):
            if self.flag and together:
                return  # torchrun passes on the Ctrl-C the terminal already sent: its grace period is the way to abort
            if self.flag:
                raise KeyboardInterrupt
            self.flag.append(True)
            if world().is_main:
                again = "" if together else " (Ctrl-C again to abort)"
                print(f"\ninterrupt: saving a checkpoint after this step{again}", file=sys.stderr, flush=True)

        signal.signal(signal.SIGINT, handler)
        return self.flag

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False
