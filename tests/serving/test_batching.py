"""Requests that arrive together are answered in one batch per model, each row as it would be alone: its own
max_tokens, stop strings and sampling; the queue is bounded; a request whose client left is dropped."""

import pytest

from helpers import answer_all, chat_job
from llm_tuning.generation import GenerationOptions, Session
from llm_tuning.serving.batching import Batcher, QueueFull
from llm_tuning.serving.rows import Job

PROMPTS = ["Who are you?", "你是谁？", "Translate to French\ngood morning", "Add the numbers\n2 and 3"]


def test_rows_of_one_batch_answer_as_each_would_alone(lora_registry):
    reg = lora_registry
    (long_answer, _, _) = answer_all(Batcher(reg), [chat_job(reg, "my-run", PROMPTS[2], max_tokens=12)])[0]
    stop = long_answer.split()[2]  # a word in the middle of the greedy answer
    jobs = [
        chat_job(reg, "my-run", PROMPTS[0], max_tokens=5),
        chat_job(reg, "my-run", PROMPTS[1], max_tokens=16),
        chat_job(reg, "my-run", PROMPTS[2], max_tokens=12, stop=(stop,)),
        chat_job(reg, "my-run", PROMPTS[3], max_tokens=9, temperature=1.0, top_p=0.9, seed=3),
    ]
    batcher = Batcher(reg)
    together = answer_all(batcher, jobs)
    assert batcher.largest_batch == 4 and batcher.batches == 1
    alone = [answer_all(Batcher(reg), [job])[0] for job in jobs]
    assert together == alone
    for (_, finish, tokens), job in zip(together[:2] + together[3:], jobs[:2] + jobs[3:]):  # each ends on its own
        assert tokens <= job["max_tokens"] and (finish == "length") == (tokens == job["max_tokens"])
    assert together[2][:2] == (long_answer[: long_answer.index(stop)].rstrip(), "stop")


def test_each_model_gets_its_own_batch_and_answers_as_a_session(lora_registry, trained_run, method_run):
    names = ["llama", "my-run", "second", "my-run", "llama"]
    batcher = Batcher(lora_registry)
    answers = answer_all(batcher, [chat_job(lora_registry, name, PROMPTS[0], max_tokens=8) for name in names])
    assert batcher.batches == 3 and batcher.largest_batch == 2
    conversation, options = [[{"role": "user", "content": PROMPTS[0]}]], GenerationOptions(max_new_tokens=8)
    expected = {
        "llama": Session(adapter=trained_run.output_dir, base_only=True).generate(conversation, options)[0],
        "my-run": Session(adapter=trained_run.output_dir).generate(conversation, options)[0],
        "second": Session(adapter=method_run("lora", "llama").output_dir).generate(conversation, options)[0],
    }
    assert [text for text, _, _ in answers] == [expected[name] for name in names]
    assert len(set(expected.values())) == 3  # the adapters do change the answers


def test_sampling_follows_the_seed_and_top_p(lora_registry):
    def sampled(**settings):
        job = chat_job(lora_registry, "my-run", PROMPTS[0], max_tokens=10, temperature=1.0, **settings)
        return answer_all(Batcher(lora_registry), [job])[0][0]

    assert sampled(seed=1) == sampled(seed=1) != sampled(seed=2)
    greedy = answer_all(Batcher(lora_registry), [chat_job(lora_registry, "my-run", PROMPTS[0], max_tokens=10)])[0][0]
    assert sampled(seed=5, top_p=1e-6) == greedy  # top_p that small keeps the likeliest token only


def test_the_queue_is_bounded(lora_registry):
    batcher = Batcher(lora_registry, max_queue=2)  # not started: nothing leaves the queue
    jobs = [chat_job(lora_registry, "my-run", prompt) for prompt in PROMPTS[:3]]
    batcher.submit(Job(**jobs[0]))
    batcher.submit(Job(**jobs[1]))
    with pytest.raises(QueueFull):
        batcher.submit(Job(**jobs[2]))
    assert batcher.status()["queued"] == 2


def test_a_request_whose_client_left_is_not_generated(lora_registry):
    batcher = Batcher(lora_registry)
    jobs = [chat_job(lora_registry, "my-run", prompt) for prompt in PROMPTS[:3]]
    answers = answer_all(batcher, jobs, cancelled=(1,))
    assert answers[1] is None and answers[0] and answers[2]
    assert batcher.largest_batch == 2
