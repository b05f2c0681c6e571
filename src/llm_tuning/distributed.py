"""Training across processes, as llm-tuning takes part in it. torchrun (or `accelerate launch`, or our own
`train --nproc`, launch.py) starts the processes and says in the environment who each is; the process group is
gloo on CPUs and NCCL on GPUs; transformers' Trainer, through accelerate, wraps the model (DDP, FSDP, DeepSpeed),
shards the batches and reduces the gradients. What is left for our code is here: the local main process
tokenises first (the others then read its cache), one process writes while the others wait, every process stops
on the same step after Ctrl-C, and the main process's run-time choices and each process's peak memory are shared.

In a single process every function here is a no-op that returns the single-process answer."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

# Long enough for the main process to tokenise a large dataset or write a large checkpoint while the others wait.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes, as torchrun's environment gives it."""

    rank: int = 0
    """Index of this process among all processes of the job (0 is the main one, which writes the outputs)."""
    local_rank: int = 0
    """Index of this process on its machine (0 tokenises first there)."""
    size: int = 1
    """How many processes train together."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0


def world() -> World:
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def start_process_group() -> World:
    """Join the process group (once per process; accelerate finds it and uses it). On a GPU, each process takes the
    device of its local rank."""
    here = world()
    if here.size > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(here.local_rank)
        dist.init_process_group(backend(), timeout=COLLECTIVE_TIMEOUT)
    return here


def in_group() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if in_group():
        dist.barrier()


def end_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def local_main_first() -> Iterator[None]:
    """The block runs in the local main process first, then in the others (which then find its cache)."""
    first = world().is_local_main
    if not first:
        barrier()
    yield
    if first:
        barrier()


@contextmanager
def main_writes() -> Iterator[bool]:
    """Yields whether this process writes (the main one); every process leaves the block only once the writing is
    done, so the others find the files in place."""
    try:
        yield world().is_main
    finally:
        barrier()


def any_process(flag: bool) -> bool:
    """Whether `flag` is true in any process (every process must ask, at the same point)."""
    if not in_group():
        return flag
    value = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(value):
    """The main process's `value`, in every process (a picklable object)."""
    if not in_group():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def each_process(value: int) -> list[int]:
    """`value` from every process, by rank."""
    if not in_group():
        return [value]
    values = [torch.zeros(1, dtype=torch.int64, device=_collective_device()) for _ in range(dist.get_world_size())]
    dist.all_gather(values, torch.tensor([value], dtype=torch.int64, device=_collective_device()))
    return [int(v.item()) for v in values]


def mean_over_processes(value: float) -> float:
    if not in_group():
        return value
    total = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return float(total.item()) / dist.get_world_size()


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another process of the group is gone."""
    text = str(error)
    return isinstance(error, dist.DistError) or any(
        sign in text for sign in ("Connection reset by peer", "Connection closed by peer", "Broken pipe")
    )


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend() == "nccl" else torch.device("cpu")
