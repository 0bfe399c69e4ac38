"""Fixtures for the prompt tests: the real tokenizer with instruction tokens, the shipped templates,
and leave-one-out splits of the shared ML-100K and Last.fm data (loaded once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mtrec.data import load_dataset
from mtrec.data.splits import Split, leave_one_out
from mtrec.prompts import PromptRenderer, add_instruction_tokens, load_prompts

FOLDERS = {"movielens-100k": "movielens-100k", "lastfm-2k": "lastfm-hetrec2011-2k"}


def _split(name: str) -> Split:
    # Same rule as tests/conftest.py `require_data` (that module cannot be imported by name here).
    path = Path(os.environ["MTREC_DATA_DIR"]).resolve() / FOLDERS[name]
    if not path.is_dir():
        pytest.skip(f"{path} not found: set MTREC_DATA_DIR to the folder holding {FOLDERS[name]}/")
    return leave_one_out(load_dataset(name))


@pytest.fixture(scope="session")
def prompts():
    """Every task's templates, friends included (a run loads the friends file only when it trains
    that task; the template tests cover all of them)."""
    from mtrec.kinds import TASKS

    return load_prompts(tasks=TASKS)


@pytest.fixture(scope="session")
def instruction_tokens(prompts) -> dict[str, str]:
    return {task: p.instruction_token for task, p in prompts.items()}


@pytest.fixture(scope="session")
def tokenizer(prompts):
    """The bundled SmolLM2 tokenizer (converted into $MTREC_CACHE_DIR on first use) + instruction tokens."""
    from transformers import AutoTokenizer

    from mtrec.model.backbone import ensure_bundled

    tok = AutoTokenizer.from_pretrained(ensure_bundled())
    add_instruction_tokens(tok, prompts)
    return tok


@pytest.fixture(scope="session")
def renderer(tokenizer, instruction_tokens) -> PromptRenderer:
    """The default budget (max_length 256)."""
    return PromptRenderer(tokenizer, instruction_tokens)


@pytest.fixture(scope="session")
def ml100k_split() -> Split:
    return _split("movielens-100k")


@pytest.fixture(scope="session")
def lastfm_split() -> Split:
    return _split("lastfm-2k")


@pytest.fixture(scope="session")
def synthetic_split() -> Split:
    """Timed and social (ML-100K has no social graph, Last.fm no timestamps): the time cut on
    friends' interactions is only exercised here."""
    return leave_one_out(load_dataset("synthetic", num_users=60, num_items=80))
