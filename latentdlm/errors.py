"""The one error type for mistakes a user can make (bad path, empty text, unknown key, ...).

The command line catches it and prints its message alone, with a non-zero exit; library callers
get an ordinary exception with the same message.
"""


class LatentDLMError(Exception):
    """A user-facing error: its message says what is wrong and how to fix it."""
