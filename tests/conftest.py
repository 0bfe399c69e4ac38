"""Test setup shared by every test: offline, quiet, and the data folder from MTREC_DATA_DIR."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)
os.environ.setdefault("MTREC_CACHE_DIR", str(ROOT / ".cache"))
os.environ.setdefault("MTREC_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))


def data_root() -> Path:
    return Path(os.environ["MTREC_DATA_DIR"]).resolve()


def require_data(folder: str) -> Path:
    """The data set folder, or skip with the reason (only when the data folder is absent)."""
    path = data_root() / folder
    if not path.is_dir():
        pytest.skip(f"{path} not found: set MTREC_DATA_DIR to the folder holding {folder}/")
    return path
