"""Output paths that never overwrite what is already on disk."""

from __future__ import annotations

from pathlib import Path


def free_path(path: Path) -> Path:
    """`path`, or `name-1.ext`, `name-2.ext` ... when it exists."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate
