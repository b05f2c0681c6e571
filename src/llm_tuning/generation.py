"""`llm-tuning generate` and `chat`: answer with a base model, or a base model with a run's trained weights,
in the run's template."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

from .config.load import load_config
from .config.sections import Config
from .data.records import JSON_SUFFIXES, read_json_objects, read_text, user_message
from .data.templates import get_template
from .detokenize import TextDecoder, decode_answer
from .errors import UserError
from .files import write_file_whole
from .models.loading import ensure_pad_token, load_base_model, load_tokenizer
from .models.resolve import model_type, resolve_model_path
from .rundir import load_run_config
from .weights import load_trained


@dataclass
class GenerationOptions:
    max_new_tokens: int = 256
    do_sample: bool = False  # greedy by default: reproducible answers
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    batch_size: int = 8

    def kwargs(self) -> dict:
        kwargs = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs


def resolve_config(config: Config | str | Path | dict | None, overrides=(), adapter: str | Path | None = None) -> Config:
    """With an adapter, the run's stored config (model, method, template) is the base; overrides apply on top."""
    if isinstance(config, Config):
        return config
    if adapter is not None:
        if config is not None:
            raise UserError("give either a config or --adapter RUN_DIR (the run's config.yaml is used), not both")
        config = load_run_config(adapter).to_dict()
    return load_config(config, overrides)


class Session:
    """A loaded model ready to answer: tokenizer, template and (optionally adapted) model in eval mode."""

    def __init__(
        self,
        config: Config | str | Path | dict | None = None,
        overrides=(),
        adapter: str | Path | None = None,
        base_only: bool = False,
    ):
        """With `base_only`, the run's base model and template without its trained weights (to compare)."""
        self.config = resolve_config(config, overrides, adapter)
        path = resolve_model_path(self.config.model.path)
        self.tokenizer = load_tokenizer(self.config.model, path)
        ensure_pad_token(self.tokenizer)
        self.template = get_template(self.config.data.template, self.tokenizer, model_type(path))
        model = load_base_model(self.config.model, path)
        if adapter is not None and not base_only:
            model = load_trained(model, adapter)
        self.model = model.eval()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)

    def generate(self, conversations: list[list[dict]], options: GenerationOptions | None = None) -> list[str]:
        """One answer per conversation (each a list of {"role", "content"} ending with a user turn)."""
        options = options or GenerationOptions()
        answers = []
        for start in range(0, len(conversations), options.batch_size):
            answers += self._generate_batch(conversations[start : start + options.batch_size], options)
        return answers

    def _generate_batch(self, conversations: list[list[dict]], options: GenerationOptions, streamer=None) -> list[str]:
        # Generation pads on the left, so that every prompt ends where its answer begins.
        prompts = [{"input_ids": self.template.prompt_ids(self.tokenizer, c, self.config.data.system)} for c in conversations]
        batch = self.tokenizer.pad(prompts, padding=True, padding_side="left", return_tensors="pt").to(self.device)
        stop_ids = self.template.stop_ids(self.tokenizer)
        with torch.no_grad():
            output = self.model.generate(
                **batch,
                **options.kwargs(),
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=stop_ids,
                streamer=streamer,
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
        return [decode_answer(self.tokenizer, row, stop_ids) for row in new_tokens]

    def stream(self, conversation: list[dict], options: GenerationOptions, write=None) -> str:
        """Answer one conversation, passing the text to `write` as it is generated (in whole characters); returns
        the whole answer, which is what was written."""
        streamer = AnswerStreamer(TextDecoder(self.tokenizer, strip=True), self.template.stop_ids(self.tokenizer), write)
        self._generate_batch([conversation], options, streamer=streamer)
        return streamer.decoder.text


class AnswerStreamer(BaseStreamer):
    """transformers' streamer interface over a TextDecoder: skips the prompt, stops at the first stop token."""

    def __init__(self, decoder: TextDecoder, stop_ids: list[int], write=None):
        self.decoder, self.stop_ids = decoder, set(stop_ids)
        self.write = write or (lambda text: print(text, end="", flush=True))
        self.prompt_seen = self.stopped = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate passes the prompt first
            self.prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            self.stopped = self.stopped or token_id in self.stop_ids
            if not self.stopped:
                self._write(self.decoder.push(token_id))

    def end(self) -> None:
        self._write(self.decoder.close())

    def _write(self, text: str) -> None:
        if text:
            self.write(text)


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line) or JSON/JSONL records with `instruction` and optional `input`."""
    path = Path(path)
    if path.suffix not in JSON_SUFFIXES:
        if not path.is_file():
            raise UserError(f"prompts file not found: {path}")
        return [line for line in read_text(path).splitlines() if line.strip()]
    prompts = []
    for obj, where in read_json_objects(path, what="prompts"):
        if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str):
            raise UserError(f"{where}: a prompt record needs a string 'instruction'")
        prompts.append(user_message(obj["instruction"], obj.get("input") or ""))
    return prompts


def generate(
    config: Config | str | Path | dict | None = None,
    prompts: list[str] = (),
    adapter: str | Path | None = None,
    overrides=(),
    options: GenerationOptions | None = None,
) -> list[str]:
    """Answer each prompt (a single user turn) with the base model, or base + adapter."""
    if not prompts:
        raise UserError("no prompts given")
    session = Session(config, overrides, adapter)
    return session.generate([[{"role": "user", "content": p}] for p in prompts], options)


def chat(config=None, adapter=None, overrides=(), options: GenerationOptions | None = None, read=input) -> None:
    """Interactive chat that keeps the conversation; `/reset` forgets it, `/exit` (or end of input) leaves."""
    options = options or GenerationOptions()
    session = Session(config, overrides, adapter)
    print("chat: type a message; /reset starts over, /exit quits", file=sys.stderr)
    history: list[dict] = []
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return
        if line == "/exit":
            return
        if line == "/reset":
            history = []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        answer = session.stream(history, options)
        print(flush=True)
        history.append({"role": "assistant", "content": answer})


def write_answers(path: str | Path, prompts: list[str], answers: list[str]) -> None:
    """{prompt, response} lines in a new JSONL file, written whole; never over an existing file."""
    path = Path(path)
    if path.exists():
        raise UserError(f"--output '{path}' already exists; choose a new file")
    lines = [json.dumps({"prompt": prompt, "response": answer}, ensure_ascii=False) for prompt, answer in zip(prompts, answers)]
    write_file_whole(path, "".join(line + "\n" for line in lines))
