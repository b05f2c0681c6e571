"""The official `openai` client against a real `llm-tuning serve` process (conftest's `served`: two LoRA runs on
the tiny Llama, an API key): models, greedy answers equal to `llm-tuning generate`, streams, errors, batching,
and the curl examples of docs/serving.md."""

import json
import re
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import SERVER_KEY
from llm_tuning import generate
from llm_tuning.detokenize import INCOMPLETE
from llm_tuning.generation import GenerationOptions, Session

DOCS = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
HELLO = [{"role": "user", "content": "Who are you?"}]


def client(server, key=SERVER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def greedy(run_dir, prompt: str, tokens: int) -> str:
    return generate(prompts=[prompt], adapter=run_dir, options=GenerationOptions(max_new_tokens=tokens))[0]


def test_lists_the_base_and_each_run(served):
    models = client(served).models.list().data
    assert [m.id for m in models] == ["llama", "my-run", "second"]
    assert client(served).models.retrieve("my-run").id == "my-run"


@pytest.mark.parametrize("prompt", ["Who are you?", "你是谁？"])
def test_greedy_chat_equals_llm_tuning_generate(served, trained_run, prompt):
    reply = client(served).chat.completions.create(
        model="my-run", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=24
    )
    assert reply.choices[0].message.content == greedy(trained_run.output_dir, prompt, 24)
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.model == "my-run" and reply.object == "chat.completion"
    usage = reply.usage
    assert 0 < usage.completion_tokens <= 24 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert (reply.choices[0].finish_reason == "length") == (usage.completion_tokens == 24)


def test_each_name_answers_with_its_own_model(served, trained_run, method_run):
    def answer(model):
        reply = client(served).chat.completions.create(model=model, messages=HELLO, temperature=0, max_tokens=10)
        return reply.choices[0].message.content

    base = Session(adapter=trained_run.output_dir, base_only=True).generate([HELLO], GenerationOptions(max_new_tokens=10))[0]
    assert answer("llama") == base
    assert answer("second") == greedy(method_run("lora", "llama").output_dir, HELLO[0]["content"], 10) != base


def test_a_stream_joins_to_the_same_answer(served, trained_run):
    stream = client(served).chat.completions.create(
        model="my-run", messages=HELLO, temperature=0, max_tokens=20, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == greedy(trained_run.output_dir, HELLO[0]["content"], 20) and len(pieces) > 2
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert all(INCOMPLETE not in piece for piece in pieces)


def test_stop_strings_end_the_answer(served, trained_run):
    whole = greedy(trained_run.output_dir, HELLO[0]["content"], 20)
    stop = whole.split()[3]
    reply = client(served).chat.completions.create(model="my-run", messages=HELLO, temperature=0, max_tokens=20, stop=[stop])
    assert reply.choices[0].message.content == whole[: whole.index(stop)].rstrip()
    assert reply.choices[0].finish_reason == "stop"


def test_a_raw_completion_continues_the_prompt_as_transformers_does(served, trained_run):
    prompt = "The capital of France is"
    tokenizer = AutoTokenizer.from_pretrained(trained_run.model_path)
    base = AutoModelForCausalLM.from_pretrained(trained_run.model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, trained_run.output_dir).eval()
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    reply = client(served).completions.create(model="my-run", prompt=prompt, temperature=0, max_tokens=12)
    assert reply.choices[0].text == expected.rstrip(INCOMPLETE) and reply.object == "text_completion"
    streamed = client(served).completions.create(model="my-run", prompt=prompt, temperature=0, max_tokens=12, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == reply.choices[0].text


def expect_error(call, status: int, code=None, fragment: str = "") -> dict:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    error = caught.value.body
    assert caught.value.status_code == status, error
    assert set(error) == {"message", "type", "param", "code"} and fragment in error["message"], error
    assert code is None or error["code"] == code
    return error


def test_errors_with_the_openai_client(served):
    chat = client(served).chat.completions.create
    expect_error(lambda: chat(model="nope", messages=HELLO), 404, "model_not_found", "served: llama, my-run, second")
    expect_error(lambda: client(served).models.retrieve("nope"), 404, "model_not_found")
    expect_error(lambda: client(served, key="wrong").models.list(), 401, "invalid_api_key", "invalid API key")
    expect_error(lambda: chat(model="my-run", messages=HELLO, temperature=3), 400, None, "temperature: ")
    expect_error(lambda: chat(model="my-run", messages=HELLO, n=2), 400, None, "n: only one choice")
    expect_error(lambda: chat(model="my-run", messages=HELLO, top_p=0), 400, None, "top_p: ")
    long = [{"role": "user", "content": "word " * 600}]
    expect_error(lambda: chat(model="my-run", messages=long), 400, "context_length_exceeded", "context is 512 tokens")
    expect_error(lambda: chat(model="my-run", messages=HELLO, max_tokens=600), 400, "context_length_exceeded")
    huge = [{"role": "user", "content": "x" * (1 << 20)}]
    expect_error(lambda: chat(model="my-run", messages=huge), 413, "request_too_large")


@pytest.mark.parametrize(
    "path, body, status, fragment",
    [
        ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/chat/completions", b'"a string"', 400, "a JSON object"),
        ("/v1/chat/completions", {"model": "my-run"}, 400, "messages: Field required"),
        ("/v1/chat/completions", {"model": "my-run", "messages": HELLO, "max_tokens": "9"}, 400, "max_tokens: "),
        ("/v1/chat/completions", {"model": "my-run", "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
        ("/v1/completions", {"model": "my-run", "prompt": ["a", "b"]}, 400, "one prompt per request"),
        ("/v1/completions", {"model": "my-run", "prompt": [10**9]}, 400, "token ids must be"),
        ("/v1/nothing", {}, 404, "Not Found"),
    ],
)
def test_malformed_requests_are_400_never_500(served, path, body, status, fragment):
    code, _, answer = served.post(path, body, key=SERVER_KEY)
    error = json.loads(answer)["error"]
    assert code == status and fragment in error["message"] and error["type"] == "invalid_request_error", error
    assert "Traceback" not in answer.decode()


def test_the_key_is_required_on_v1_but_not_on_health(served):
    code, headers, answer = served.post("/v1/chat/completions", {"model": "my-run", "messages": HELLO})
    assert code == 401 and json.loads(answer)["error"]["message"].startswith("missing API key")
    assert served.health()["status"] == "ok"


def test_requests_sent_together_are_answered_together(served, trained_run):
    prompts = ["Who are you?", "你是谁？", "Translate to French\ngood morning", "Add the numbers\n2 and 3"]
    before = served.health()["batches"]

    def ask(prompt):
        reply = client(served).chat.completions.create(
            model="my-run", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=24
        )
        return reply.choices[0].message.content

    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(ask, prompts))
    health = served.health()
    assert health["largest_batch"] >= 2 and health["batches"] - before < len(prompts)
    options = GenerationOptions(max_new_tokens=24)
    assert answers == generate(prompts=prompts, adapter=trained_run.output_dir, options=options)


def test_a_client_that_does_not_read_blocks_no_one(served, trained_run):
    body = {"model": "my-run", "messages": HELLO, "temperature": 0, "max_tokens": 64, "stream": True}
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", served.port)) as slow:  # sends a request, then reads nothing
        slow.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {SERVER_KEY}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        reply = client(served).chat.completions.create(model="my-run", messages=HELLO, temperature=0, max_tokens=8)
        assert reply.choices[0].message.content == greedy(trained_run.output_dir, HELLO[0]["content"], 8)
        slow.settimeout(60)
        received = b""
        while b"data: [DONE]" not in received:
            received += slow.recv(65536)
    assert received.startswith(b"HTTP/1.1 200") and b"text/event-stream" in received


def docs_curl_blocks() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    return [block for block in blocks if block.lstrip().startswith("curl ")]


def test_the_curl_examples_of_the_docs_work(served):
    blocks = docs_curl_blocks()
    assert len(blocks) >= 4
    env = {"LLM_TUNING_API_KEY": SERVER_KEY, "PATH": "/usr/bin:/bin"}
    for block in blocks:
        command = block.replace("127.0.0.1:8000", f"127.0.0.1:{served.port}")
        result = subprocess.run(
            ["bash", "-c", command],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert result.returncode == 0, (block, result.stderr)
        output = result.stdout.strip()
        if output.startswith("data: "):
            assert output.endswith("data: [DONE]"), output
        else:
            assert "error" not in json.loads(output), output
