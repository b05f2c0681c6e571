"""The one exception type that reaches users as a one-line message.

Everything a user can get wrong (config, data, paths, missing packages) is raised as `UserError`;
the CLI prints its message after `error: ` and exits with status 2, without a traceback.
Anything else is a bug in llm-tuning and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input, explained in one line."""
