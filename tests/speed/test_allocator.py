"""The command restarts itself once on tcmalloc where installed (allocator.py); LLM_TUNING_ALLOCATOR chooses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import run_config
from llm_tuning.errors import UserError
from llm_tuning.speed import allocator
from llm_tuning.speed.allocator import (
    CHOICE_VARIABLE,
    HUGE_PAGES_SET_BY_US,
    HUGE_PAGES_VARIABLE,
    RESTARTED_VARIABLE,
    default_huge_pages,
    library_to_preload,
    prefer_recorded_allocator,
    recorded_allocator,
    restart_environment,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc are Linux's")


def loaded_library(fragment: str) -> str:
    """The path of a shared library this process has mapped: a harmless one to preload in a child."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if fragment in Path(path).name and Path(path).is_file():
            return path
    pytest.skip(f"no {fragment} mapped in this process")


def child_environment(**variables) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (CHOICE_VARIABLE, RESTARTED_VARIABLE, "LD_PRELOAD")}
    return {**env, **variables}


@linux_only
def test_auto_picks_tcmalloc_unless_told_otherwise(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "/opt/lib/libtcmalloc_minimal.so.4")
    assert library_to_preload({}) == "/opt/lib/libtcmalloc_minimal.so.4"
    assert library_to_preload({CHOICE_VARIABLE: "auto"}) == "/opt/lib/libtcmalloc_minimal.so.4"
    assert library_to_preload({CHOICE_VARIABLE: "system"}) is None
    assert library_to_preload({RESTARTED_VARIABLE: "/opt/lib/libtcmalloc_minimal.so.4"}) is None  # once only
    assert library_to_preload({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) is None  # an allocator chosen already
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    assert library_to_preload({}) is None


@linux_only
def test_a_path_is_preloaded_and_a_bad_choice_is_one_clear_error(tmp_path):
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")
    assert library_to_preload({CHOICE_VARIABLE: str(library)}) == str(library)
    with pytest.raises(UserError, match=r"LLM_TUNING_ALLOCATOR='fast': no such file; use auto, system or the path"):
        library_to_preload({CHOICE_VARIABLE: "fast"})


def test_restart_environment_prepends_the_library_and_marks_the_restart():
    env = restart_environment({"LD_PRELOAD": "/lib/other.so", "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"}, "/lib/tc.so")
    assert env["LD_PRELOAD"] == "/lib/tc.so /lib/other.so"
    assert env[RESTARTED_VARIABLE] == "/lib/tc.so"
    assert env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5"  # the user's own setting wins
    assert restart_environment({}, "/lib/tc.so")["LD_PRELOAD"] == "/lib/tc.so"


@linux_only
def test_the_process_restarts_once_with_the_library_mapped():
    """A real re-execution, with a library every Python process can preload (libm), and the same arguments."""
    libm = loaded_library("libm.so")
    script = (
        "from llm_tuning.speed.allocator import restart_with_preferred_allocator as restart; restart(); "
        "import os, sys; print(os.environ['LD_PRELOAD']); print(sys.argv[1:]); "
        f"print(any(line.endswith({libm!r}) for line in open('/proc/self/maps').read().splitlines()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "one", "two"],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_environment(**{CHOICE_VARIABLE: libm}),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [libm, "['one', 'two']", "True"]


@linux_only
def test_a_training_command_runs_on_tcmalloc_where_installed(tiny_llama, records_path, tmp_path):
    """`python -m llm_tuning train` as a user runs it: the run summary names the allocator it ran on."""
    config = run_config(tiny_llama, records_path, tmp_path / "run", train={"max_steps": 2})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    for choice, expected in (("auto", "tcmalloc" if allocator.find_tcmalloc() else "glibc"), ("system", "glibc")):
        result = subprocess.run(
            [sys.executable, "-m", "llm_tuning", "train", str(tmp_path / "run.yaml"), "train.overwrite=true"],
            capture_output=True,
            text=True,
            timeout=300,
            env=child_environment(**{CHOICE_VARIABLE: choice}),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "tcmalloc: large alloc" not in result.stderr
        assert json.loads((tmp_path / "run" / "run_summary.json").read_text())["allocator"] == expected


@pytest.mark.parametrize("malloc, expected", [("glibc", "1"), ("tcmalloc", None)])
def test_huge_pages_on_glibc_only_and_the_users_setting_wins(monkeypatch, malloc, expected):
    monkeypatch.setattr(allocator, "active_allocator", lambda: malloc)
    env = {}
    default_huge_pages(env)
    assert env.get(HUGE_PAGES_VARIABLE) == expected
    user = {HUGE_PAGES_VARIABLE: "0"}
    default_huge_pages(user)
    assert user == {HUGE_PAGES_VARIABLE: "0"}
    inherited = {HUGE_PAGES_VARIABLE: "1", HUGE_PAGES_SET_BY_US: "1"}  # our choice in the process before a restart
    default_huge_pages(inherited)
    assert inherited.get(HUGE_PAGES_VARIABLE) == expected
    changed = {HUGE_PAGES_VARIABLE: "0", HUGE_PAGES_SET_BY_US: "1"}  # a parent set it to 0 for this child
    default_huge_pages(changed)
    assert changed == {HUGE_PAGES_VARIABLE: "0"}


def test_a_run_records_what_to_preload_to_run_on_its_malloc_again(monkeypatch):
    monkeypatch.setattr(allocator, "active_allocator", lambda: "tcmalloc")
    assert recorded_allocator({RESTARTED_VARIABLE: "/lib/tc.so"}) == {"allocator": "tcmalloc", "allocator_library": "/lib/tc.so"}
    assert recorded_allocator({}) == {"allocator": "tcmalloc", "allocator_library": None}  # preloaded by someone else
    monkeypatch.setattr(allocator, "active_allocator", lambda: "glibc")
    assert recorded_allocator({}) == {"allocator": "glibc", "allocator_library": "system"}


def test_a_resumed_run_restarts_on_the_malloc_it_started_on(monkeypatch, tmp_path):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "/opt/lib/libtcmalloc_minimal.so.4")
    env = {}
    prefer_recorded_allocator(env, {"allocator_library": "system"})  # started on glibc where auto now finds tcmalloc
    assert env == {CHOICE_VARIABLE: "system"}
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")
    env = {}
    prefer_recorded_allocator(env, {"allocator_library": str(library)})
    assert env == {CHOICE_VARIABLE: str(library)}
    for record in ({"allocator_library": "/opt/lib/libtcmalloc_minimal.so.4"}, {"allocator_library": "/gone.so"}, {}):
        env = {}
        prefer_recorded_allocator(env, record)  # what auto picks anyway, a library no longer there, nothing recorded
        assert env == {}
    env = {CHOICE_VARIABLE: "auto"}
    prefer_recorded_allocator(env, {"allocator_library": "system"})
    assert env == {CHOICE_VARIABLE: "auto"}  # the user's choice wins
