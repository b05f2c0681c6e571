"""Run on tcmalloc when it is installed: the `llm-tuning` command restarts itself once with the library preloaded.

Training allocates and frees the same large blocks (activations, their gradients) every step. glibc's malloc
either hands big blocks back to the kernel on free, so each step pays page faults again, or keeps them in a heap
where long-lived and short-lived blocks interleave and freed holes go unused. tcmalloc reuses freed spans by
size: more tokens per second and a lower peak RSS on the speed benchmark, with identical losses (docs/speed.md).

`make install` installs tcmalloc where it can (scripts/install_tcmalloc.sh): system-wide as root, otherwise into the
virtual environment's lib folder, which find_tcmalloc searches first. glibc's own thresholds were measured and give
either tcmalloc's speed or its memory, never both (docs/speed.md), so glibc is left as it is.

A process cannot change its allocator once running, so the command re-executes itself, before torch loads, with
LD_PRELOAD naming the library. LLM_TUNING_ALLOCATOR chooses: `auto` (the default: tcmalloc where found),
`system` (glibc, no restart), or the path of a malloc library to preload instead (jemalloc, a tcmalloc elsewhere).
Linux only; elsewhere, and where no library is found, the command runs as it is. A run records the library it
ran on (`recorded_allocator`, in run_record.json) and a resumed `llm-tuning train` restarts on it again
(`prefer_recorded_allocator`), unless LLM_TUNING_ALLOCATOR says otherwise.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from functools import cache
from pathlib import Path

from ..errors import UserError

CHOICE_VARIABLE = "LLM_TUNING_ALLOCATOR"
RESTARTED_VARIABLE = "LLM_TUNING_ALLOCATOR_RESTARTED"  # set before the restart, so that it happens once
# Debian and Ubuntu's libtcmalloc-minimal4, gperftools' full build, and a conda or venv lib folder
TCMALLOC_NAMES = ("tcmalloc_minimal", "tcmalloc")
TCMALLOC_FILES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so")
# tcmalloc prints a line for every allocation over 1 GiB (weights of larger models); these are expected here
QUIET_LARGE_ALLOCATIONS = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"  # read by torch's CPU allocator at its first allocation
HUGE_PAGES_SET_BY_US = "LLM_TUNING_SET_THP"  # so that a restarted or child process decides again on its own malloc


def default_huge_pages(environ=os.environ) -> None:
    """Put torch's CPU blocks of 2 MiB and more on transparent huge pages when running on glibc, unless the user
    set THP_MEM_ALLOC_ENABLE. On glibc that lowers peak RSS for a little speed: freed activation blocks no longer
    linger in glibc's heap. tcmalloc reuses freed blocks itself, so there huge pages only cost speed, with the
    same peak RSS (docs/speed.md has the figures)."""
    ours = environ.pop(HUGE_PAGES_SET_BY_US, None)
    if ours is not None and environ.get(HUGE_PAGES_VARIABLE) == ours:  # inherited, and not changed since: decide again
        del environ[HUGE_PAGES_VARIABLE]
    if HUGE_PAGES_VARIABLE not in environ and active_allocator() == "glibc":
        environ[HUGE_PAGES_VARIABLE] = environ[HUGE_PAGES_SET_BY_US] = "1"


def find_tcmalloc() -> str | None:
    """The path (or linker name) of an installed tcmalloc, or None."""
    for folder in (Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"):
        for name in TCMALLOC_FILES:
            if (folder / name).is_file():
                return str(folder / name)
    for name in TCMALLOC_NAMES:
        found = ctypes.util.find_library(name)  # searches the linker's cache: /usr/lib/x86_64-linux-gnu and the like
        if found:
            return found
    return None


def library_to_preload(environ: dict) -> str | None:
    """Which library this process should restart with, or None to run as it is."""
    choice = environ.get(CHOICE_VARIABLE, "auto")
    if choice == "system" or environ.get(RESTARTED_VARIABLE) or not sys.platform.startswith("linux"):
        return None
    if choice == "auto":
        preloaded = environ.get("LD_PRELOAD", "")
        return None if "malloc" in preloaded else find_tcmalloc()  # someone chose an allocator already
    if not Path(choice).is_file():
        raise UserError(f"{CHOICE_VARIABLE}={choice!r}: no such file; use auto, system or the path of a malloc library")
    return choice


def restart_environment(environ: dict, library: str) -> dict:
    preload = " ".join(filter(None, [library, environ.get("LD_PRELOAD", "")]))
    return {**QUIET_LARGE_ALLOCATIONS, **environ, "LD_PRELOAD": preload, RESTARTED_VARIABLE: library}


def restart_with_preferred_allocator() -> None:
    """Re-execute this Python process, same arguments, with the allocator LLM_TUNING_ALLOCATOR picks preloaded;
    returns only when there is nothing to do. Call it first, before torch loads."""
    library = library_to_preload(dict(os.environ))
    if library is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], restart_environment(dict(os.environ), library))


@cache  # fixed when the process starts (LD_PRELOAD); the lookup reads /proc/self/maps
def active_allocator() -> str:
    """The malloc this process runs on, for the run summary: tcmalloc, jemalloc, or glibc (unknown without /proc)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    return next((name for name in ("tcmalloc", "jemalloc") if name in maps), "glibc")


def recorded_allocator(environ=os.environ) -> dict:
    """What a run records of its malloc: the name, and what to preload to run on it again (`system` for glibc's,
    None when it was preloaded by someone else than llm-tuning)."""
    name = active_allocator()
    library = environ.get(RESTARTED_VARIABLE) or ("system" if name == "glibc" else None)
    return {"allocator": name, "allocator_library": library}


def prefer_recorded_allocator(environ: dict, record: dict) -> None:
    """Before the restart: choose the allocator a resumed run started on, when the user chose none and it is still
    installed here (a different malloc changes speed and memory, never results)."""
    library = record.get("allocator_library")
    if CHOICE_VARIABLE in environ or not library or library == find_tcmalloc():
        return
    if library == "system" or Path(library).is_file():
        environ[CHOICE_VARIABLE] = library
