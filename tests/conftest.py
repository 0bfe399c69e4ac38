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


@pytest.fixture(scope="session")
def bundled_backbone_dir():
    """The converted bundled SmolLM2-135M folder (converted on first use into $MTREC_CACHE_DIR, ~30 s)."""
    from mtrec.model.backbone import ensure_bundled

    return ensure_bundled("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory, bundled_backbone_dir):
    """A tiny random Llama (hidden 32, 2 layers, 4 heads) with the bundled tokenizer."""
    from mtrec.model.backbone import tiny_backbone

    return tiny_backbone(tmp_path_factory.mktemp("tiny-llama"), vocab_from=bundled_backbone_dir)


@pytest.fixture(scope="session")
def four_layers(tmp_path_factory, bundled_backbone_dir):
    """The tiny random Llama with 4 layers (model.train_top_layers needs layers below the cut)."""
    from mtrec.model.backbone import tiny_backbone

    return tiny_backbone(tmp_path_factory.mktemp("tiny4"), vocab_from=bundled_backbone_dir, layers=4)


@pytest.fixture
def tiny_config(tiny_backbone_dir):
    """The tiny test config (tests/configs/tiny.yaml) pointed at the tiny backbone."""
    from mtrec.config import load_config

    return lambda *overrides: load_config(ROOT / "tests/configs/tiny.yaml", [f"model.backbone={tiny_backbone_dir}", *overrides])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_backbone_dir):
    """A tiny trained run folder (tests/configs/tiny.yaml: synthetic data, 30 users, 40 items titled
    "Item N: a <genre> record", the tiny Llama), trained once per session; tests only read it."""
    from mtrec.config import load_config
    from mtrec.training import train

    cfg = load_config(ROOT / "tests/configs/tiny.yaml", [f"model.backbone={tiny_backbone_dir}"])
    run = tmp_path_factory.mktemp("tiny-run") / "tiny"
    train(cfg, run)
    return run
