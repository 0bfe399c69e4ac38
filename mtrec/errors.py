"""An error for a name that is none of the known choices (a data set, a bundled backbone ...).

Raised where the name is validated; every command line turns it into one ``error: …`` line and exit
status 2. It is a `KeyError` (a failed look-up, as before), but ``str()`` is the plain message,
not the repr-quoted one a `KeyError` prints.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class UnknownNameError(KeyError):
    """`value` is not one of `choices`; the message names both and suggests the closest choice.

    Args:
        what: what the name is for, e.g. ``"data set"``.
        value: the name given.
        choices: the names that would have worked (or patterns such as ``local:<folder>``).
    """

    def __init__(self, what: str, value: str, choices: Sequence[str]) -> None:
        self.what, self.value, self.choices = what, value, list(choices)
        close = difflib.get_close_matches(str(value), [c for c in self.choices if "<" not in c], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        self.message = f"unknown {what} {value!r}{hint}; choose from: {', '.join(self.choices)}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message
