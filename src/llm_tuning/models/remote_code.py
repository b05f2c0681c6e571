"""A model's own code (model.trust_remote_code) that fails on the transformers llm-tuning pins: one line naming the code
file and line, the exception and the transformers version, and what to try, instead of a traceback from deep inside it.
transformers imports such code as the `transformers_modules` package, which is how its frames are recognised."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

from ..errors import UserError, first_line

REMOTE_PACKAGE = "transformers_modules"


def remote_code_error(error: BaseException, saved_with: str | None = None) -> UserError | None:
    """The one-line error for `error` when it was raised inside a model's own code, else None. `saved_with`: the
    transformers version the model's config.json was written with, where known."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if REMOTE_PACKAGE in Path(f.filename).parts]
    if not frames:
        return None
    frame = frames[-1]  # the deepest line of the model's code
    supported = f" (its config.json was saved with {saved_with})" if saved_with else ""
    return UserError(
        f"the model's own code failed: {Path(frame.filename).name} line {frame.lineno}: {type(error).__name__}: "
        f"{first_line(error)} (transformers {version('transformers')}); try a transformers version the model's authors "
        f"support{supported}, or a model of an architecture transformers or llm-tuning has built in (docs/models.md)"
    )


@contextmanager
def remote_code_failures(model_config: dict | None = None) -> Iterator[None]:
    """Turn a failure inside a model's own code into remote_code_error's one line; anything else passes unchanged.
    `model_config`: the model's config.json, for the version it was saved with."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        error = remote_code_error(e, (model_config or {}).get("transformers_version"))
        if error is None:
            raise
        raise error from None
