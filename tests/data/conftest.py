"""Fixtures for the data-layer tests (helpers live in data_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import ML100K_FILES, shared_data_root, write_files


@pytest.fixture(scope="session")
def data_root() -> Path:
    return shared_data_root()


@pytest.fixture
def ml100k_root(tmp_path: Path):
    """A data root holding a tiny movielens-100k/ folder; call it with overrides (name -> content or None)."""

    def make(**overrides: str | bytes | None) -> Path:
        files = {**ML100K_FILES, **{k.replace("_", "."): v for k, v in overrides.items()}}
        write_files(tmp_path / "movielens-100k", {k: v for k, v in files.items() if v is not None})
        return tmp_path

    return make
