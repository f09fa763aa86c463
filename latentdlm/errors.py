"""The one error type for mistakes a user can make (bad path, empty text, unknown key, ...).

The command line catches it and prints its message alone, with a non-zero exit; library callers
get an ordinary exception with the same message.
"""

from __future__ import annotations

import sys
from typing import Callable


class LatentDLMError(Exception):
    """A user-facing error: its message says what is wrong and how to fix it."""


def exit_code(run: Callable[[], None]) -> int:
    """Run a command's body: 0 when it ends, 2 with its message alone on a LatentDLMError or an OS error
    (disk full, permissions), 130 on Ctrl-C."""
    try:
        run()
    except LatentDLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine's side: a full disk, a permission, a vanished file
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
