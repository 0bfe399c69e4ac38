"""The server tests read the session's tiny run folder (see tests/conftest.py)."""

import pytest


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run
