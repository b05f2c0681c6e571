"""Writes that a crash cannot leave half done (files and folders under a temporary name, flushed, renamed), the
manifest that says a folder is complete, and a failed write reported in one line with its path."""

import errno
import json
import os

import pytest

from llm_tuning import files
from llm_tuning.errors import UserError
from llm_tuning.files import (
    MANIFEST_FILE,
    files_written_whole,
    folder_written_whole,
    manifest_problem,
    write_errors,
    write_file_whole,
    write_manifest,
)


def fail_on_fsync(monkeypatch, code=errno.ENOSPC):
    def fsync(descriptor):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.os, "fsync", fsync)


def test_a_file_written_whole_replaces_the_old_one(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    write_file_whole(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_failed_file_write_keeps_the_old_file_and_says_why_in_one_line(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text("old")
    fail_on_fsync(monkeypatch)
    with pytest.raises(UserError) as caught:
        write_file_whole(path, "new")
    assert str(caught.value) == f"cannot write {path}: No space left on device"
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_folder_written_whole_gets_a_manifest_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"old")
    with folder_written_whole(target, manifest=True) as partial:
        assert partial.name == "model.partial" and not any(partial.iterdir())
        (partial / "weights.bin").write_bytes(b"12345")
        (partial / "sub").mkdir()
        (partial / "sub" / "a.txt").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST_FILE, "sub", "weights.bin"]
    manifest = json.loads((target / MANIFEST_FILE).read_text())["files"]
    assert manifest["weights.bin"] == {"size": 5, "sha256": "5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5"}
    assert set(manifest) == {"weights.bin", "sub/a.txt"}
    assert manifest_problem(target) is None


def test_a_folder_that_fails_midway_leaves_the_old_one_and_no_partial(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with folder_written_whole(target, manifest=True) as partial:
            (partial / "weights.bin").write_bytes(b"new")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (target / "weights.bin").read_bytes() == b"old"


def test_a_folder_write_that_finds_the_disk_full_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint-6"
    with pytest.raises(UserError) as caught:
        with folder_written_whole(target) as partial:
            (partial / "optimizer.pt").write_bytes(b"x")
            fail_on_fsync(monkeypatch, errno.EFBIG)
    assert str(caught.value) == f"cannot write {target}: File too large"
    assert not any(tmp_path.iterdir())


def test_files_written_whole_replace_their_namesakes_and_keep_the_rest(tmp_path):
    (tmp_path / "config.yaml").write_text("kept")
    (tmp_path / "adapter.bin").write_text("old")
    with files_written_whole(tmp_path) as staging:
        (staging / "adapter.bin").write_text("new")
        (staging / "adapter.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.bin", "adapter.json", "config.yaml"]
    assert (tmp_path / "adapter.bin").read_text() == "new" and (tmp_path / "config.yaml").read_text() == "kept"


@pytest.fixture
def complete(tmp_path):
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(200)))
    (folder / "optimizer.pt").write_bytes(b"state" * 10)
    write_manifest(folder)
    return folder


def test_manifest_problems_name_the_file_and_what_is_wrong(complete):
    assert manifest_problem(complete) is None
    weights = complete / "adapter_model.safetensors"
    os.truncate(weights, 100)
    assert manifest_problem(complete) == "adapter_model.safetensors has 100 bytes instead of 200 (truncated or changed)"
    weights.write_bytes(bytes(reversed(range(200))))
    assert manifest_problem(complete) == (
        "adapter_model.safetensors does not match its sha256 in manifest.json (damaged or changed)"
    )
    (complete / "optimizer.pt").unlink()
    weights.write_bytes(bytes(range(200)))
    assert manifest_problem(complete) == "optimizer.pt is missing"
    (complete / MANIFEST_FILE).write_text('{"files": ')
    assert manifest_problem(complete) == "manifest.json is damaged"
    (complete / MANIFEST_FILE).unlink()
    assert manifest_problem(complete) == "no manifest.json (it was not written whole)"


def test_a_manifest_over_named_files_ignores_the_others(tmp_path):
    (tmp_path / "run_summary.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    write_manifest(tmp_path, ["run_summary.json"])
    (tmp_path / "notes.txt").write_text("changed")
    assert manifest_problem(tmp_path) is None


@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "Disk quota exceeded"),
        (Exception("Error while serializing: I/O error: No space left on device (os error 28)"), "No space left on device"),
    ],
)
def test_write_errors_name_the_path_and_the_reason(tmp_path, error, reason):
    with pytest.raises(UserError) as caught:
        with write_errors(tmp_path / "x"):
            raise error
    assert str(caught.value) == f"cannot write {tmp_path / 'x'}: {reason}"


def test_a_write_error_without_errno_is_diagnosed_from_the_file_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(files.resource, "getrlimit", lambda which: (4096, files.resource.RLIM_INFINITY))
    with pytest.raises(UserError, match=r"File too large \(the file size limit, ulimit -f, is 4096 bytes\)"):
        with write_errors(tmp_path / "optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


def test_other_failures_keep_their_own_error(tmp_path):
    with pytest.raises(OSError, match="No such file"):
        with write_errors(tmp_path / "x"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
    with pytest.raises(RuntimeError, match="a bug"):
        with write_errors(tmp_path / "x"):
            raise RuntimeError("a bug")
