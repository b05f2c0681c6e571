"""Files on disk: where llm-tuning caches, output names that never overwrite, folders written all at once."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """Converted models and tokenised data: LLM_TUNING_CACHE, or ~/.cache/llm-tuning."""
    return Path(os.environ.get("LLM_TUNING_CACHE") or Path.home() / ".cache" / "llm-tuning")


def free_path(path: Path) -> Path:
    """`path`, or `name-1.ext`, `name-2.ext` ... when it exists."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


@contextmanager
def folder_written_whole(target: Path) -> Iterator[Path]:
    """Yields an empty `TARGET.partial` folder to write into; when the block ends without an error it replaces
    `target`. So `target` is never half-written: an interrupted write leaves only the .partial folder."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    yield partial
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
