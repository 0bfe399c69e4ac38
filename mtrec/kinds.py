"""The tasks mtrec serves and the prompt kinds each one trains: defined here once.

A *task* is what a user asks for (``rating``, ``preference``, ``recommendation``, ``friends``); a *kind* is one
head's example type. ``preference`` trains two kinds (``like`` and ``categories``). The kind's
integer value is its row in per-kind tensors (loss weights, uncertainty weights, batch ``kind``).
"""

from __future__ import annotations

from enum import IntEnum


class Kind(IntEnum):
    RATING = 0
    LIKE = 1
    CATEGORIES = 2
    RECOMMENDATION = 3
    FRIENDS = 4

    @property
    def label(self) -> str:
        """The kind's name in configs, prompts and metric keys (``"like"``)."""
        return self.name.lower()

    @classmethod
    def of(cls, name: str) -> Kind:
        """The kind called `name` (``"like"``); a ValueError names the choices."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown kind {name!r}; expected one of {list(KIND_NAMES)}") from None


NUM_KINDS = len(Kind)
KIND_NAMES = tuple(k.label for k in Kind)  # by value: KIND_NAMES[Kind.LIKE] == "like"
KIND_IDS = {k.label: k for k in Kind}
TASKS = ("rating", "preference", "recommendation", "friends")
KINDS = {"rating": ("rating",), "preference": ("like", "categories"), "recommendation": ("recommendation",),
         "friends": ("friends",)}
KIND_TASK = {k: t for t, ks in KINDS.items() for k in ks}
