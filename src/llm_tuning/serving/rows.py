"""One batch on the model: the prompts of several requests left-padded into one `generate`, each row with its own
sampling (temperature, top_p, seed), its own stop strings and max_tokens, its text handed to its request as it
comes, in whole characters.

Rows with different sampling settings share a batch: generate runs greedy, and a logits processor samples each
sampling row itself, with the row's temperature, top_p and random generator (so a seed gives the same answer
whatever else is in the batch), leaving only the chosen token possible. A stopping criterion ends each row at its
stop token, stop string or max_tokens, and generate ends when every row has.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ..detokenize import TextDecoder
from ..generation import GenerationOptions
from .models import ModelRegistry, Served


@dataclass
class Job:
    """One request's work, and the queue its events go to: ("text", str), ("end", finish_reason, tokens) or
    ("error", message)."""

    served: Served
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    strip: bool = True  # a chat answer is stripped; a raw completion keeps its spaces
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # the client left: stop working on it

    def emit(self, *event) -> None:
        """Called from the worker thread; never blocks, however slowly the client reads."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Row:
    def __init__(self, job: Job, tokenizer, stop_ids: set[int]):
        self.job, self.stop_ids = job, stop_ids
        self.decoder = TextDecoder(tokenizer, strip=job.strip, stop=job.stop)
        self.tokens = 0
        self.done = False
        self.generator: torch.Generator | None = None

    def add(self, token_id: int) -> None:
        if self.job.cancelled:
            self.done = True
            return
        self.tokens += 1
        if token_id in self.stop_ids:
            return self.finish("stop")
        self._send(self.decoder.push(token_id))
        if self.decoder.stopped:
            self.finish("stop")
        elif self.tokens >= self.job.max_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        self._send(self.decoder.close())
        self.job.emit("end", reason, self.tokens)
        self.done = True

    def _send(self, text: str) -> None:
        if text:
            self.job.emit("text", text)

    def sample(self, scores: torch.Tensor) -> int:
        """A token drawn from this row's scores with its temperature and top_p."""
        if self.generator is None:
            self.generator = torch.Generator(device=scores.device)
            self.generator.manual_seed(self.job.seed if self.job.seed is not None else secrets.randbits(63))
        probs = torch.softmax(scores.float() / self.job.temperature, dim=-1)
        if self.job.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs >= self.job.top_p  # beyond the smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0))
        return int(torch.multinomial(probs, 1, generator=self.generator))


class RowSampler(LogitsProcessor):
    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for index, row in enumerate(self.rows):
            if not row.done and row.job.temperature > 0:
                token_id = row.sample(scores[index])
                scores[index] = float("-inf")
                scores[index, token_id] = 0.0
        return scores


class RowStops(StoppingCriteria):
    def __init__(self, rows: list[Row]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        for row, token_id in zip(self.rows, input_ids[:, -1].tolist()):
            if not row.done:
                row.add(token_id)
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)


def generate_rows(registry: ModelRegistry, jobs: list[Job]) -> None:
    """Answer `jobs` (all for the same model) in one batch; every job gets its text and its end."""
    session = registry.session
    tokenizer = session.tokenizer
    stop_ids = session.template.stop_ids(tokenizer)
    rows = [Row(job, tokenizer, set(stop_ids)) for job in jobs]
    prompts = [{"input_ids": job.prompt_ids} for job in jobs]
    batch = tokenizer.pad(prompts, padding=True, padding_side="left", return_tensors="pt").to(session.device)
    # the same settings as `llm-tuning generate` (greedy, no repetition penalty), so that temperature 0 answers alike
    options = GenerationOptions(max_new_tokens=max(job.max_tokens for job in jobs))
    with torch.no_grad(), registry.use(jobs[0].served) as model:
        model.generate(
            **batch,
            **options.kwargs(),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop_ids,
            logits_processor=LogitsProcessorList([RowSampler(rows)]),
            stopping_criteria=StoppingCriteriaList([RowStops(rows)]),
        )
    for row in rows:
        if not row.done:
            row.finish("length")
