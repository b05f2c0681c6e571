"""The Hugging Face hub: what looks like a hub id, and failing at once when the hub cannot be reached."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from .errors import UserError, first_line

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(path: str, file_suffixes: tuple[str, ...] = ()) -> bool:
    """`org/name` that is not a local path (nor a file name with one of `file_suffixes`)."""
    return bool(HUB_ID.match(path)) and Path(path).suffix not in file_suffixes and not Path(path).expanduser().exists()


def check_hub_reachable(path: str, what: str, hint: str = "Use a local file or folder") -> None:
    """Fail at once when the hub cannot be reached, instead of after a minute of retries per file.
    With HF_HUB_OFFLINE=1 the hub is not asked and files come from the local Hugging Face cache."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        raise UserError(
            f"{what} '{path}' looks like a hub id, but {host} cannot be reached ({e.strerror or e}); offline? {hint}"
        ) from None


def hub_error(path: str, error: Exception, hint: str) -> UserError:
    """A failed download from the hub, in one line."""
    return UserError(f"could not load model '{path}' from the Hugging Face hub ({first_line(error)}); offline? {hint}")
