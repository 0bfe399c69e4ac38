"""The one error type the data layer raises for bad input."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad or missing input data. The message names the file, the line (when one applies) and
    what was expected, so the user can fix the file without reading a traceback.

    Args:
        path: the file (or ``archive.zip:member``) at fault.
        message: what is wrong and what was expected.
        line: 1-based line number in that file, when the problem is on one line; for a table read
            through `datasets` (Parquet, ``save_to_disk``), whose `path` has ``unit == "row"``, the
            1-based row.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        self.unit = getattr(path, "unit", "line")
        where = f"{self.path}, {self.unit} {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
