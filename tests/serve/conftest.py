"""A tiny run folder shared by the server tests (synthetic data, the tiny random Llama)."""

import pytest
from tests_paths import ROOT


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_backbone_dir):
    from mtrec.config import load_config
    from mtrec.training import train

    cfg = load_config(ROOT / "tests/configs/tiny.yaml", [f"model.backbone={tiny_backbone_dir}"])
    run = tmp_path_factory.mktemp("serve") / "tiny"
    train(cfg, run)
    return run
