"""A CPU training step split over the cores by rows: the micro-batch's rows are shared out between this process and
forked copies of it, one per further core, each computing its forward and backward pass single-threaded; the
copies' gradients are added to this process's before the optimizer step.

Why: a small model's step is thousands of short operations, and two threads that meet at every one of them wait for
each other; whole passes on separate cores do not (docs/speed.md#the-step-split-over-the-cores). Why forked
processes and not threads: Python threads running the passes share the interpreter and gained little. The copies
share the frozen weights with this process (fork's copy-on-write: they are never written), and the trained
parameters sit in shared memory, so each optimizer step is seen by all. Each copy draws its dropout masks from a
seed made of the run's seed, the step and its part, so that a resumed run draws as the first one did."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import resource
import signal
import time
import traceback
import warnings
from contextlib import contextmanager

import torch

from ..params import count_parameters
from ..resume import RUN_RECORD_FILE
from .cpu_matmul import threads

# a copy's gradients travel through shared memory: past this share of the model's parameters, holding them twice
# more costs more memory than the split saves time
MAX_TRAINABLE_SHARE = 0.05


def choose_split(train, model, processes: int, on_cpu: bool, record: dict, chunked_loss: bool) -> dict:
    """Into how many parts each micro-batch is split, and why: in a resumed run (`record`, its run record) as when it
    started, since the parts decide the dropout masks (a record from before the split: unsplit); else by the config
    `train` section's `split_step` and where the split applies."""
    if record and processes == 1 and on_cpu:
        return {"parts": record.get("split_parts", 1), "why": f"as when the run started ({RUN_RECORD_FILE})"}
    if not train.split_step:
        return {"parts": 1, "why": "train.split_step: false"}
    parts, why = split_parts(model, train.batch_size, processes, on_cpu, chunked_loss)
    return {"parts": parts, "why": why}


def split_parts(model, batch_size: int, processes: int, on_cpu: bool, chunked_loss: bool) -> tuple[int, str]:
    """Into how many parts a micro-batch is split here (1: not split), and why."""
    blocked = split_unsupported_reason(model, batch_size, processes, on_cpu, chunked_loss)
    if blocked:
        return 1, blocked
    parts = most_parts(batch_size)
    return parts, f"{parts} threads: each computes a part of every micro-batch's rows in its own process"


def split_unsupported_reason(model, batch_size: int, processes: int, on_cpu: bool, chunked_loss: bool) -> str | None:
    """Why the step cannot be split here, or None. `chunked_loss`: whether training/loss.py computes the loss, which
    divides by the whole batch's labelled tokens, so that the parts' losses add up (a model's own loss may not)."""
    if not on_cpu:
        return "not on a CPU"
    if not chunked_loss:
        return "the model's own loss (train.loss_chunk_size 0, or the chunked loss does not apply)"
    if processes > 1:
        return "the run already has a process per device"
    if torch.get_num_threads() < 2:
        return "one thread"
    if batch_size < 2:
        return "a micro-batch of one row"
    trainable, total = count_parameters(model)
    if trainable > MAX_TRAINABLE_SHARE * total:
        return f"more than {MAX_TRAINABLE_SHARE:.0%} of the parameters train"
    shared = 4 * trainable * (1 + most_parts(batch_size))  # the parameters, a gradient buffer per copy
    if shared_memory_free() < 2 * shared:
        return f"/dev/shm has less than {2 * shared / 2**20:.0f} MiB free for the trained parameters and gradients"
    return None


def most_parts(batch_size: int) -> int:
    """A part per thread, and at least a row per part."""
    return min(torch.get_num_threads(), batch_size)


def shared_memory_free() -> int:
    """Free bytes in /dev/shm, where torch puts shared tensors (a container's may be 64 MiB); 0 without it."""
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


class SplitStep:
    """The forked copies of a training process and the exchange with them. `run_part(model, inputs,
    num_items_in_batch)` is the unsplit training step (forward, backward, the detached loss); `seed` the run's."""

    def __init__(self, model, run_part, parts: int, seed: int):
        self.model, self.run_part, self.parts, self.seed = model, run_part, parts, seed
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.workers: list[tuple] = []  # (process, connection, gradient buffer)
        self.peaks: dict[int, int] = {}  # per copy (pid), the largest memory it held alone

    def private_bytes(self) -> int:
        """What the copies held alone at their peaks, together: to add to this process's peak RSS."""
        return sum(self.peaks.values())

    def start(self) -> None:
        self.peaks.clear()  # a later train() on the same trainer forks new copies: their peaks only
        for param in self.params:
            param.data.share_memory_()  # in place: the optimizer keeps the same parameters
        numel = sum(p.numel() for p in self.params)
        context = multiprocessing.get_context("fork")
        for part in range(1, self.parts):
            grads = torch.zeros(numel, dtype=torch.float32).share_memory_()
            here, there = context.Pipe()
            process = context.Process(target=self._serve, args=(there, grads), daemon=True, name=f"llm-tuning part {part}")
            with quiet_fork():
                process.start()
            there.close()
            self.workers.append((process, here, grads))

    def step(self, model, inputs: dict, num_items_in_batch, step: int, micro: int) -> torch.Tensor:
        """One micro-batch: the first part here, the others in the copies, at the same time; the loss summed. A
        micro-batch of one row (the last of an epoch may be) runs unsplit."""
        parts = split_rows(inputs, min(self.parts, rows_of(inputs)))
        if len(parts) < 2:
            return self.run_part(model, inputs, num_items_in_batch)
        if not self.workers:
            self.start()
        busy = self.workers[: len(parts) - 1]
        for index, ((process, connection, _), part) in enumerate(zip(busy, parts[1:]), start=1):
            try:
                connection.send((part, num_items_in_batch, part_seed(self.seed, step, micro, index)))
            except OSError:  # a broken pipe: the copy is gone
                raise ended(process) from None
        with threads(1):
            loss = self.run_part(model, parts[0], num_items_in_batch)
        total = loss.detach().clone()
        for process, connection, grads in busy:
            reply = receive(process, connection)
            total += reply["loss"]
            self.peaks[process.pid] = max(self.peaks.get(process.pid, 0), reply["peak_private_bytes"])
            add_gradients(self.params, grads, reply["has_grad"])
        return total

    def close(self) -> None:
        """Ask every copy to end, give them 10 s together, then kill what is left."""
        for _, connection, _ in self.workers:
            try:
                connection.send(None)
            except OSError:  # already gone
                pass
        deadline = time.monotonic() + 10
        for process, connection, _ in self.workers:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
            connection.close()
        self.workers = []

    def _serve(self, connection, grads: torch.Tensor) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and ends the copies
        for param in self.params:  # what the main process had accumulated is its own
            param.grad = None
        with threads(1):
            self._answer(connection, grads)

    def _answer(self, connection, grads: torch.Tensor) -> None:
        while True:
            try:
                request = connection.recv()
            except EOFError:  # the main process is gone
                return
            if request is None:
                return
            inputs, num_items_in_batch, seed = request
            try:
                torch.manual_seed(seed)
                loss = self.run_part(self.model, inputs, num_items_in_batch)
                has_grad = take_gradients(self.params, grads)
                reply = {"loss": float(loss), "has_grad": has_grad, "peak_private_bytes": peak_private_bytes()}
                connection.send(reply)
            except BaseException as error:  # noqa: BLE001 - reported to the main process, which fails the run
                connection.send({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})
                return


def rows_of(inputs: dict) -> int:
    return next(iter(inputs.values())).shape[0]


def split_rows(inputs: dict, parts: int) -> list[dict]:
    """The batch's rows in `parts` near-equal consecutive parts (each tensor is rows x tokens)."""
    rows = rows_of(inputs)
    bounds = [rows * part // parts for part in range(parts + 1)]
    return [{key: value[start:end] for key, value in inputs.items()} for start, end in zip(bounds, bounds[1:])]


def part_seed(seed: int, step: int, micro: int, part: int) -> int:
    """A seed per run, optimizer step, micro-batch and part: a resumed run's copies draw as the first run's did."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}/{part}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # torch.manual_seed takes up to 2**63 - 1


def take_gradients(params: list, grads: torch.Tensor) -> list[bool]:
    """Move a copy's gradients into its shared buffer, leaving none behind for the next micro-batch; which it had (a
    parameter without a gradient is not one with a zero gradient: the optimizer skips it)."""
    offset, has_grad = 0, []
    for param in params:
        has_grad.append(param.grad is not None)
        if param.grad is not None:
            grads[offset : offset + param.numel()].copy_(param.grad.reshape(-1))
        param.grad = None
        offset += param.numel()
    return has_grad


def add_gradients(params: list, grads: torch.Tensor, has_grad: list[bool]) -> None:
    offset = 0
    for param, present in zip(params, has_grad):
        if present:
            view = grads[offset : offset + param.numel()].view_as(param).to(param.dtype)  # fp32 in the buffer
            if param.grad is None:
                param.grad = view.clone()
            else:
                param.grad += view
        offset += param.numel()


def receive(process, connection) -> dict:
    try:
        reply = connection.recv()
    except EOFError:
        raise ended(process) from None
    if "error" in reply:  # the copy's own traceback, then what failed
        raise RuntimeError(f"{reply['traceback']}\n{process.name} of the split training step failed: {reply['error']}")
    return reply


def ended(process) -> RuntimeError:
    process.join(timeout=5)
    return RuntimeError(f"{process.name} of the split training step ended (exit code {process.exitcode})")


def peak_private_bytes() -> int:
    """The most memory this process (a copy) has held alone: what it holds alone now (Private_Clean + Private_Dirty in
    /proc/self/smaps_rollup: pages it wrote since the fork, and its own) plus how far its peak RSS stood above its RSS
    now (pages it has freed since: activations, on a malloc that returns them)."""
    fields = {}
    try:
        with open("/proc/self/smaps_rollup") as smaps:
            for line in smaps:
                name, _, rest = line.partition(":")
                if name in ("Rss", "Private_Clean", "Private_Dirty"):
                    fields[name] = int(rest.split()[0]) * 1024
    except OSError:
        return 0
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux, where smaps_rollup is
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0) + max(0, peak_rss - fields.get("Rss", 0))


@contextmanager
def quiet_fork():
    """Fork without tokenizers' warning (its Rust threads are not used in the copies) or Python's about forking a
    process with threads (the copies run torch's operations only, as a DataLoader's forked workers do)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
