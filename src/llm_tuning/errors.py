"""The one exception type that reaches users as a one-line message.

Everything a user can get wrong (config, data, paths, missing packages) is raised as `UserError`;
the CLI prints its message after `error: ` and exits with status 2, without a traceback.
Anything else is a bug in llm-tuning and keeps its traceback.
"""

EXIT_FAILURE = 1  # the work itself failed (as a traceback exits, for a bug)
EXIT_USER_ERROR = 2  # bad input: config, data, paths, options
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class UserError(Exception):
    """A mistake in the user's input, explained in one line."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run to many lines), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
