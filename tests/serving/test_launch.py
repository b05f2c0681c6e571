"""Starting `llm-tuning serve`: mistakes are one line and exit 2 before anything loads; it says who can connect;
a full queue answers 503 with Retry-After; Ctrl-C stops it with status 130."""

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from helpers import ServerProcess
from llm_tuning.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, main
from llm_tuning.serving.launch import exposure


def one_line_error(capsys, *argv) -> str:
    assert main(list(argv)) == EXIT_USER_ERROR
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_runs_of_different_bases_are_refused_at_start(capsys, trained_run, trained_plain_run):
    line = one_line_error(
        capsys, "serve", "--adapter", str(trained_run.output_dir), "--adapter", str(trained_plain_run.output_dir)
    )
    assert "differ in base model" in line and "start a server for each" in line


def test_a_port_in_use_is_refused_before_the_model_loads(capsys, trained_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(capsys, "serve", "--adapter", str(trained_run.output_dir), "--port", str(port))
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_settings_out_of_range_are_refused(capsys):
    assert "--threads 0 is out of range" in one_line_error(capsys, "serve", "--threads", "0")
    assert "--max-queue 0 is out of range" in one_line_error(capsys, "serve", "--max-queue", "0")


def test_it_says_who_can_connect():
    assert "only this machine" in exposure("127.0.0.1", None) and "only this machine" in exposure("::1", None)
    assert exposure("0.0.0.0", None).startswith("warning:") and "without --api-key" in exposure("0.0.0.0", None)
    assert "with the API key" in exposure("0.0.0.0", "k")


def test_a_full_queue_is_503_with_retry_after_and_ctrl_c_stops(tiny_llama, tmp_path):
    server = ServerProcess(tmp_path / "log", f"model.path={tiny_llama}", "--max-queue", "1", "--max-batch", "1")
    try:
        assert "only this machine can connect" in server.output()
        body = {"model": "llama", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0, "max_tokens": 400}
        with ThreadPoolExecutor(6) as pool:
            first = pool.submit(server.post, "/v1/chat/completions", body)
            while server.health()["running"] == 0:  # the first is being answered: the queue is empty again
                time.sleep(0.01)
            replies = [first.result()] + list(pool.map(lambda _: server.post("/v1/chat/completions", body), range(5)))
        refused = [(headers, json.loads(answer)["error"]) for status, headers, answer in replies if status == 503]
        statuses = [status for status, _, _ in replies]
        # one answered, one waited: the others are refused (unless the first was done before they all arrived)
        assert refused and statuses.count(200) + len(refused) == 6 and statuses.count(200) >= 2, statuses
        for headers, error in refused:
            assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "1" and error["code"] == "queue_full"
        assert server.health()["largest_batch"] == 1
    finally:
        status = server.stop()
    assert status == EXIT_INTERRUPTED and "Traceback" not in server.output()
