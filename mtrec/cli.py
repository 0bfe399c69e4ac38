"""What every mtrec command line shares at its very end."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def exit_with(main: Callable[[], int | None]) -> None:
    """``sys.exit(main())``, but a reader that went away (``python -m mtrec.data describe … | head``)
    ends the command quietly with 141, as a shell tool killed by SIGPIPE does, not with a traceback."""
    try:
        code = main()
        sys.stdout.flush()  # inside the try: a closed pipe would otherwise fail at exit, outside any handler
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to fail at exit
        sys.exit(141)
    sys.exit(code)
