"""Load on `llm-tuning serve`: 1, 4, 16 and 64 concurrent clients sending short chat requests, against the same
requests answered one at a time by plain transformers `generate`, so that the gain from batching is a ratio
measured in one run.

    python benchmarks/serve_load.py [--adapter RUN_DIR] [--clients 1 4 16 64] [--seconds 40] [--max-tokens 32]
                                    [--baseline-seconds 40] [--threads 1] [--output benchmarks/results/serve_load_cpu.md]

The model: SmolLM2-135M (alias smollm2-135m) with a LoRA run: RUN_DIR, or else one trained here first (LoRA r=8 on
q_proj and v_proj, 8 steps on examples/data/demo.jsonl). The requests: the demo's 45 English and Chinese
instructions in turn, one user turn each, greedy (temperature 0), at most --max-tokens tokens, streamed.

Each level runs its clients for --seconds: every client sends a request, reads its stream to the end, and sends the
next, until the time is up; the requests under way then finish and count. It reports requests/s and generated
tokens/s (over the level's whole time, from the first request sent to the last answered), the p50 and p95 latency
and time to the first text, failed requests (non-200 or broken streams), and the largest batch the server had
answered so far (/health). The baseline loads the same base and adapter with transformers and peft alone and
answers the same prompts, rendered with the tokenizer's own chat template (the run's template), one at a time with
`model.generate` for --baseline-seconds, in this process, while no server runs.

Both use --threads torch threads (default 1). On this 2-core machine, shared with other work, torch's default of 2
threads made generation up to 10x slower whenever another process took a core (OpenMP's threads wait for each
other), at batch 1 and batch 16 alike, which would compare the machine's load and not batching; with 1 thread
batch 16 gave 63 tokens/s where batch 1 gave 15.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "examples" / "data" / "demo.jsonl"
MODEL = "smollm2-135m"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def train_run(work: Path) -> Path:
    config = work / "lora.yaml"
    config.write_text(
        f"model: {{path: {MODEL}}}\nmethod: {{name: lora, r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj]}}\n"
        f"data: {{path: {DEMO}, max_length: 256, packing: false}}\n"
        f"train: {{output_dir: {work / 'run'}, max_steps: 8, batch_size: 4, learning_rate: 1.0e-3, save_steps: 1000}}\n"
    )
    subprocess.run([sys.executable, "-m", "llm_tuning", "train", str(config)], check=True, cwd=HERE.parent)
    return work / "run"


class Server:
    def __init__(self, adapter: Path, log: Path, threads: int):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [sys.executable, "-m", "llm_tuning", "serve", "--adapter", f"bench={adapter}", "--port", str(self.port)]
        command += ["--max-batch", "64", "--threads", str(threads)]
        self.process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=HERE.parent)
        deadline = time.monotonic() + 300
        while True:
            try:
                self.health()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
            return json.loads(response.read())

    def ask(self, prompt: str, max_tokens: int) -> dict:
        """One streamed chat request: latency, time to first text, generated tokens; ok False on any failure."""
        body = {
            "model": "bench",
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        first, tokens, done = None, 0, False
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                response.read()
                return {"ok": False}
            for line in response:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - started
            connection.close()
        except (OSError, http.client.HTTPException, ValueError):
            return {"ok": False}
        latency = time.perf_counter() - started
        return {"ok": done, "latency": latency, "ttft": latency if first is None else first, "tokens": tokens}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def load_level(server: Server, prompts: list[str], clients: int, seconds: float, max_tokens: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(number: int) -> None:
        turn = number
        while time.perf_counter() < stop_at:
            result = server.ask(prompts[turn % len(prompts)], max_tokens)
            turn += clients
            with lock:
                results.append(result)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ok = [r for r in results if r["ok"]]
    return {
        "clients": clients,
        "requests": len(ok),
        "failed": len(results) - len(ok),
        "seconds": elapsed,
        "requests_per_s": len(ok) / elapsed,
        "tokens_per_s": sum(r["tokens"] for r in ok) / elapsed,
        "latency_p50": percentile([r["latency"] for r in ok], 50),
        "latency_p95": percentile([r["latency"] for r in ok], 95),
        "ttft_p50": percentile([r["ttft"] for r in ok], 50),
        "ttft_p95": percentile([r["ttft"] for r in ok], 95),
        "largest_batch": server.health()["largest_batch"],
    }


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def baseline(adapter: Path, prompts: list[str], seconds: float, max_tokens: int, threads: int) -> dict:
    """The same requests, one at a time, through plain transformers + peft."""
    import torch  # here, after the server levels: while this process plays the clients it stays light
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_tuning.models.aliases import provision  # the alias's converted folder, as the server loads it

    torch.set_num_threads(threads)
    path = provision(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), str(adapter)).eval()
    stop_ids = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")})
    latencies, tokens, turn = [], 0, 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        messages = [{"role": "user", "content": prompts[turn % len(prompts)]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            output = model.generate(
                **ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
            )
        new = output[0, ids["input_ids"].shape[1] :].tolist()
        tokens += next((i + 1 for i, t in enumerate(new) if t in stop_ids), len(new))
        latencies.append(time.perf_counter() - begin)
        turn += 1
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "tokens_per_s": tokens / elapsed,
        "latency_p50": percentile(latencies, 50),
        "latency_p95": percentile(latencies, 95),
    }


def table(levels: list[dict], base: dict) -> str:
    rows = [
        "| clients | requests | failed | requests/s | tokens/s | x one at a time | latency p50 / p95 (s) "
        "| first text p50 / p95 (s) | largest batch so far |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in levels:
        rows.append(
            f"| {level['clients']} | {level['requests']} | {level['failed']} | {level['requests_per_s']:.2f} "
            f"| {level['tokens_per_s']:.1f} | {level['tokens_per_s'] / base['tokens_per_s']:.2f} "
            f"| {level['latency_p50']:.2f} / {level['latency_p95']:.2f} | {level['ttft_p50']:.2f} / {level['ttft_p95']:.2f} "
            f"| {level['largest_batch']} |"
        )
    rows.append(
        f"| one at a time, transformers generate | {base['requests']} | 0 | {base['requests_per_s']:.2f} "
        f"| {base['tokens_per_s']:.1f} | 1.00 | {base['latency_p50']:.2f} / {base['latency_p95']:.2f} | - | 1 |"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, help="a LoRA run on smollm2-135m (default: train one here)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--baseline-seconds", type=float, default=40)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, for the server and the baseline alike")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llm-tuning-serve-load-"))
    adapter = args.adapter or train_run(work)
    print(f"the LoRA run: {adapter}", flush=True)
    prompts = [json.loads(line)["instruction"] for line in DEMO.read_text(encoding="utf-8").splitlines() if line.strip()]

    load_before = os.getloadavg()[0]
    server = Server(adapter, work / "server.log", args.threads)
    levels = []
    try:
        for clients in args.clients:
            levels.append(load_level(server, prompts, clients, args.seconds, args.max_tokens))
            print(json.dumps(levels[-1]), flush=True)
    finally:
        server.stop()
    base = baseline(adapter, prompts, args.baseline_seconds, args.max_tokens, args.threads)
    print(json.dumps(base), flush=True)

    command = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])
    cores = len(os.sched_getaffinity(0))
    report = (
        f"Command: `{command.strip()}`\n\nCPU: {cpu_name()} ({cores} cores), fp32, {args.threads} torch thread(s). "
        f"SmolLM2-135M + a LoRA run, {len(prompts)} demo prompts in turn, greedy, at most {args.max_tokens} tokens, "
        f"streamed; {args.seconds:.0f} s per level (and the requests under way then), the baseline "
        f"{args.baseline_seconds:.0f} s. The x column is tokens/s against the baseline's. Load average (1 min) before "
        f"the levels {load_before:.1f}, after the baseline {os.getloadavg()[0]:.1f} (above {cores}: other work shared "
        "the CPU).\n\n"
        f"{table(levels, base)}\n"
    )
    print("\n" + report)
    if args.output:
        args.output.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
