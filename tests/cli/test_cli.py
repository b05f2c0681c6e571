"""Bad input gives one line `error: ...`, exit status 2, no traceback, and nothing on disk is lost."""

import os
import subprocess
import sys

import pytest

from llm_tuning.cli import EXIT_USER_ERROR, main
from llm_tuning.cli.parser import parse_arguments


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == EXIT_USER_ERROR
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def write_config(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_missing_config(capsys, tmp_path):
    assert_one_line_error(*run_main(capsys, "train", str(tmp_path / "none.yaml"))[::2], "config file not found")


def test_unknown_key_names_file_line_and_choices(capsys, tmp_path):
    path = write_config(tmp_path, "train:\n  max_step: 3\n")
    code, _, err = run_main(capsys, "train", str(path))
    assert_one_line_error(code, err, "'train.max_step'", f"{path}:2", "did you mean 'train.max_steps'", "valid keys in 'train'")


def test_unknown_method_lists_methods(capsys, tmp_path):
    path = write_config(tmp_path, "method:\n  name: magic\n")
    assert_one_line_error(
        *run_main(capsys, "train", str(path))[::2],
        "unknown method 'magic'",
        "valid methods: full, freeze, bitfit, prompt, ptuning, prefix, lora, ia3",
    )


def test_bad_override_value(capsys, tmp_path):
    path = write_config(tmp_path, "{}\n")
    code, _, err = run_main(capsys, "train", str(path), "train.lr_scheduler=zigzag")
    assert_one_line_error(code, err, "'train.lr_scheduler'", "not one of: linear, cosine")


def test_missing_data_and_model(capsys, tmp_path, tiny_llama, records_path):
    path = write_config(
        tmp_path,
        f"model: {{path: {tiny_llama}}}\ndata: {{path: {tmp_path / 'none.jsonl'}}}\ntrain: {{output_dir: {tmp_path / 'run'}}}\n",
    )
    assert_one_line_error(*run_main(capsys, "train", str(path))[::2], "data file not found", "none.jsonl")
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"\n')
    code, _, err = run_main(capsys, "train", str(path), f"data.path={tmp_path / 'd.jsonl'}")
    assert_one_line_error(code, err, "d.jsonl:2: invalid JSON")
    code, _, err = run_main(capsys, "train", str(path), f"data.path={records_path}", "model.path=./missing-model")
    assert_one_line_error(code, err, "model.path './missing-model'", "not a built-in alias (smollm2-135m)")
    assert not (tmp_path / "run").exists()


def test_existing_output_is_kept(capsys, tmp_path, tiny_llama, records_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    path = write_config(
        tmp_path, f"model: {{path: {tiny_llama}}}\ndata: {{path: {records_path}}}\ntrain: {{output_dir: {out}}}\n"
    )
    assert_one_line_error(*run_main(capsys, "train", str(path))[::2], "is not empty; set train.overwrite=true")
    assert (out / "keep.txt").read_text() == "mine"


def test_generate_and_merge_errors(capsys, tmp_path):
    assert_one_line_error(*run_main(capsys, "generate", "--adapter", str(tmp_path))[::2], "no prompts")
    assert_one_line_error(
        *run_main(capsys, "generate", "--adapter", str(tmp_path), "--prompt", "hi")[::2], "not an llm-tuning run directory"
    )
    assert_one_line_error(
        *run_main(capsys, "merge", "--adapter", str(tmp_path / "x"), "--output", str(tmp_path / "y"))[::2],
        "run directory not found",
    )
    assert_one_line_error(
        *run_main(capsys, "generate", "--prompt", "hi", "--max-new-tokens", "0")[::2], "--max-new-tokens must be positive"
    )


def test_generate_cli_with_adapter(capsys, trained_run, tmp_path):
    output = tmp_path / "answers.jsonl"
    code, out, _ = run_main(
        capsys,
        "generate",
        "--adapter",
        str(trained_run.output_dir),
        "--prompt",
        "Who are you?",
        "--max-new-tokens",
        "4",
        "--output",
        str(output),
    )
    assert code == 0 and out.startswith("### Who are you?\n")
    assert output.read_text().count("\n") == 1
    code, _, err = run_main(
        capsys, "generate", "--adapter", str(trained_run.output_dir), "--prompt", "x", "--output", str(output)
    )
    assert_one_line_error(code, err, "already exists")


@pytest.mark.parametrize("command", ["train", "generate", "chat", "merge"])
def test_help_is_complete(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: llm-tuning {command}" in text
    expected = {
        "train": ["KEY=VALUE", "config"],
        "generate": ["--adapter", "--prompts-file", "--sample"],
        "chat": ["/reset", "--adapter"],
        "merge": ["--adapter", "--output", "--overwrite"],
    }[command]
    for word in expected:
        assert word in text


def test_real_process_exit_status_without_traceback(tmp_path):
    """The console entry point, as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "llm_tuning", "train", str(tmp_path / "missing.yaml")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == EXIT_USER_ERROR
    assert result.stderr.strip().splitlines() == [f"error: config file not found: {tmp_path / 'missing.yaml'}"]


def test_resuming_train_reads_the_runs_allocator_before_torch_loads(tmp_path, monkeypatch):
    """`llm-tuning train CONFIG train.resume=true` restarts on the malloc its run started on (run_record.json)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_record.json").write_text('{"allocator": "glibc", "allocator_library": "system"}')
    config = write_config(tmp_path, f"train:\n  output_dir: {run}\n")
    script = (
        "import os, sys; from llm_tuning.cli import use_run_allocator; from llm_tuning.cli.parser import "
        f"parse_arguments; use_run_allocator(parse_arguments(['train', {str(config)!r}, *sys.argv[1:]])); "
        "print(os.environ.get('LLM_TUNING_ALLOCATOR'), 'torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "LLM_TUNING_ALLOCATOR"}
    for overrides, expected in ((["train.resume=true"], "system False"), ([], "None False")):
        result = subprocess.run([sys.executable, "-c", script, *overrides], capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == expected.split()


def test_nproc_takes_overrides_after_it_and_a_positive_count(capsys):
    args = parse_arguments(["train", "run.yaml", "--nproc", "2", "train.max_steps=5"])
    assert (args.nproc, args.overrides) == (2, ["train.max_steps=5"])
    with pytest.raises(SystemExit) as exit_status:
        parse_arguments(["train", "run.yaml", "--nproc", "0"])
    assert exit_status.value.code == EXIT_USER_ERROR
    assert "--nproc: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_arguments(["train", "run.yaml", "--nproc", "2", "--bogus"])


def test_nproc_inside_torchrun_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = write_config(tmp_path, "train:\n  max_steps: 1\n")
    assert main(["train", str(config), "--nproc", "2", f"model.path={tmp_path}"]) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: --nproc starts its own processes: run it outside torchrun or accelerate launch\n"
