"""The Trainer as llm-tuning runs it: here, the pass on the first batch that `train.cpu_matmul=auto` times."""

import time

import pytest
import torch

from helpers import run_config
from llm_tuning import train
from llm_tuning.speed.cpu_matmul import everywhere
from llm_tuning.training import loss, run
from llm_tuning.training import trainer as trainer_module

CUT = 16  # tokens: fewer than the rows hold at max length 24, enough to reach the first labels


@pytest.mark.parametrize("packing", [True, False])
def test_the_first_batch_pass_trains_the_first_rows_that_fit(tiny_llama, records_path, tmp_path, monkeypatch, packing):
    passes = []

    def record_the_pass(model, setting, one_pass, tokens, cpu_fp32, head_follows, threads_per_pass):
        trained = [p for p in model.parameters() if p.requires_grad]
        started = time.perf_counter()
        head_seconds = one_pass()
        assert 0 < head_seconds < time.perf_counter() - started  # the head's part: from the decoder's output to the loss
        passes.append({"tokens": tokens, "grads": sum(p.grad is not None and bool(p.grad.any()) for p in trained)})
        for parameter in trained:
            parameter.grad = None
        return {**everywhere("torch"), "why": "recorded"}

    trainers = []
    build_trainer = run.build_trainer
    monkeypatch.setattr(run, "build_trainer", lambda *a, **k: trainers.append(build_trainer(*a, **k)) or trainers[-1])
    monkeypatch.setattr(trainer_module, "choose_cpu_matmul", record_the_pass)
    for max_tokens in (CUT, 10**6):  # fewer than a row: one row, cut to its first CUT tokens; then the micro-batch of 3
        monkeypatch.setattr(trainer_module, "MAX_TOKENS", max_tokens)
        config = run_config(
            tiny_llama,
            records_path,
            tmp_path / str(max_tokens),
            data={"packing": packing, "max_length": 24},
            train={"max_steps": 1, "batch_size": 3, "split_step": False},
        )
        train(config)

    rows = trainers[-1].train_dataset
    assert len(rows) >= 3
    width = max(len(rows[index]["input_ids"]) for index in range(3))  # the collator pads to the longest of the batch
    assert width > CUT
    assert [p["tokens"] for p in passes] == [CUT, 3 * width]
    assert all(p["grads"] > 0 for p in passes)  # forward and backward: the adapters got gradients


def test_a_split_step_is_measured_on_its_first_part_with_one_thread(tiny_llama, records_path, tmp_path, monkeypatch):
    if torch.get_num_threads() < 2:
        pytest.skip("one thread: the step is not split")
    told, trainers = [], []
    build_trainer = run.build_trainer
    monkeypatch.setattr(run, "build_trainer", lambda *a, **k: trainers.append(build_trainer(*a, **k)) or trainers[-1])

    def record(model, setting, one_pass, tokens, cpu_fp32, head_follows, threads_per_pass):
        told.append((tokens, threads_per_pass))
        return {**everywhere("torch"), "why": "recorded"}

    monkeypatch.setattr(trainer_module, "choose_cpu_matmul", record)
    summary = train(
        run_config(tiny_llama, records_path, tmp_path, data={"max_length": 24}, train={"max_steps": 1, "batch_size": 4})
    )
    parts = summary["speed_choices"]["split_step"]["parts"]  # one per thread: 2 on a 2-core machine
    assert parts >= 2
    rows, first_part = trainers[-1].train_dataset, 4 // parts  # the first part: the first rows of the micro-batch
    width = max(len(rows[index]["input_ids"]) for index in range(first_part))
    assert told == [(first_part * width, 1)]


@pytest.mark.parametrize("reuses_large_blocks", [True, False])  # tcmalloc or jemalloc; glibc's malloc
def test_the_head_is_measured_only_where_the_chunked_loss_follows_the_choice(
    tiny_llama, records_path, tmp_path, monkeypatch, reuses_large_blocks
):
    told = []
    monkeypatch.setattr(loss, "malloc_reuses_large_blocks", lambda: reuses_large_blocks)
    monkeypatch.setattr(
        trainer_module,
        "choose_cpu_matmul",
        lambda *args, threads_per_pass: told.append(args[5]("onednn")) or {**everywhere("torch"), "why": ""},
    )
    train(run_config(tiny_llama, records_path, tmp_path, train={"max_steps": 1, "loss_chunk_size": 8}))
    assert told == [reuses_large_blocks]  # oneDNN writes fresh logits per chunk: only where malloc reuses them
