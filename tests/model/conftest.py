"""Backbone fixtures: the bundled backbone converted once per machine, and a tiny random Llama.

The bundled conversion (~30 s) goes to mtrec's cache (``$MTREC_CACHE_DIR``; CI sets it to
``<repo>/.cache``), so it happens once per machine, not once per test session.
"""

from __future__ import annotations

import os

# No test touches the network; set before transformers / huggingface_hub read them.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from mtrec.model.backbone import ensure_bundled, tiny_backbone  # noqa: E402


@pytest.fixture(scope="session")
def bundled_backbone_dir():
    """The converted bundled SmolLM2-135M folder (converted on first use, then cached)."""
    return ensure_bundled("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory, bundled_backbone_dir):
    """A tiny random Llama (hidden 32, 2 layers, 4 heads) with the bundled tokenizer."""
    return tiny_backbone(tmp_path_factory.mktemp("tiny-llama"), vocab_from=bundled_backbone_dir)
