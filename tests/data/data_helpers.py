"""Helpers for the data-layer tests: the shared data folder and tiny hand-written files.

A plain module (not conftest.py) so that tests can import it without clashing with other
folders' conftest modules.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from mtrec.data import RecDataset, load_dataset

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


def shared_data_root() -> Path:
    """$MTREC_DATA_DIR, else ../shared/datasets beside the repository."""
    return Path(os.environ.get("MTREC_DATA_DIR", REPO.parent / "shared" / "datasets")).resolve()


def require_folder(folder: str) -> Path:
    """The data set's folder under the data root; skip (with the reason) only when it is absent."""
    path = shared_data_root() / folder
    if not path.is_dir():
        pytest.skip(
            f"MTREC_DATA_DIR/{folder} not found: {path} (set MTREC_DATA_DIR to the shared datasets folder)"
        )
    return path


@functools.cache
def _load(name: str) -> RecDataset:
    return load_dataset(name, shared_data_root())


def load_shared(name: str, folder: str) -> RecDataset:
    """Load a real data set once per test session (skips when its folder is absent)."""
    require_folder(folder)
    return _load(name)


# ---- tiny MovieLens-100K-shaped files, hand-written ----------------------------------------
ML100K_FILES = {
    "u.genre": "unknown|0\nAction|1\nComedy|2\n\n",
    "u.item": (
        "1|Harbor Lights (1994)|01-Jan-1994||http://example.org/1|0|0|1\n"
        "2|Steel Rain (1995)|05-Mar-1995||http://example.org/2|0|1|0\n"
        "3|Late Bloom (1996)|12-Oct-1996||http://example.org/3|0|1|1\n"
    ),
    "u.user": "1|31|F|writer|10001\n2|45|M|engineer|94110\n",
    "u.data": "1\t1\t4\t880000000\n1\t2\t3\t880000100\n2\t2\t5\t880000200\n2\t3\t1\t880000300\n",
}


def write_files(folder: Path, files: dict[str, str | bytes]) -> Path:
    """Write `files` (name -> text or bytes) into `folder`, creating it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.encode("latin-1") if isinstance(content, str) else content
        (folder / name).write_bytes(data)
    return folder
