"""Dynamic batching: requests that arrive together are answered together, by one worker thread.

Requests wait in a bounded queue (beyond it: QueueFull, a 503). The worker takes the oldest request and every
other waiting one for the same model (an adapter is switched per batch, so a batch is one model's), up to the
largest batch, after a short wait for more to arrive unless the batch is full already; then it answers them in one
batch (rows.py) while new requests queue for the next. Generation runs in the worker thread, so the event loop stays
free to stream every client its text at that client's own pace.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque

import torch

from ..errors import first_line
from .models import ModelRegistry
from .rows import Job, generate_rows

GATHER_SECONDS = 0.02  # how long the worker waits for more requests before a batch that is not full


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


class Batcher:
    def __init__(
        self,
        registry: ModelRegistry,
        max_batch: int = 32,
        max_queue: int = 256,
        gather: float = GATHER_SECONDS,
        threads: int | None = None,
    ):
        self.registry, self.max_batch, self.max_queue, self.gather = registry, max_batch, max_queue, gather
        self.threads = threads  # torch's threads for generation; None: torch's default
        self.pending: deque[Job] = deque()
        self.condition = threading.Condition()
        self.stopping = False
        self.running = 0  # rows in the batch being generated
        self.largest_batch = 0
        self.batches = 0
        self.thread = threading.Thread(target=self._work, name="llm-tuning-generation", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.condition:
            self.stopping = True
            self.condition.notify_all()

    def submit(self, job: Job) -> None:
        with self.condition:
            if len(self.pending) >= self.max_queue:
                raise QueueFull
            self.pending.append(job)
            self.condition.notify()

    def status(self) -> dict:
        return {
            "queued": len(self.pending),
            "running": self.running,
            "largest_batch": self.largest_batch,
            "batches": self.batches,
            "max_batch": self.max_batch,
            "max_queue": self.max_queue,
        }

    def _work(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)  # here: the setting is the calling thread's
        while (jobs := self._take()) is not None:
            self.running = len(jobs)
            self.largest_batch = max(self.largest_batch, len(jobs))
            self.batches += 1
            try:
                generate_rows(self.registry, jobs)
            except Exception as e:  # a failure of the model itself: this batch's requests get a 500, the server goes on
                traceback.print_exc(file=sys.stderr)
                for job in jobs:
                    job.emit("error", f"generation failed: {first_line(e)}")
            finally:
                self.running = 0

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest waiting request and the others for the same model; None when stopping."""
        with self.condition:
            while True:
                while not self.stopping and not self.pending:
                    self.condition.wait()
                if self.stopping:
                    return None
                # Requests sent together arrive some milliseconds apart, and the clients of the batch just answered
                # send their next ones as soon as they have read it: wait a moment for them, unless the batch is full.
                deadline = time.monotonic() + self.gather
                while len(self.pending) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self.condition.wait(left)
                waiting = [job for job in self.pending if not job.cancelled]
                if waiting:
                    model = waiting[0].served.name
                    jobs = [job for job in waiting if job.served.name == model][: self.max_batch]
                    taken = set(map(id, jobs))
                    self.pending = deque(job for job in waiting if id(job) not in taken)
                    return jobs
                self.pending.clear()
