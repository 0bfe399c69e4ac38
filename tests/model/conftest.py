"""Fixtures shared by the model tests."""

import pytest
from accelerate.utils import set_seed


def reading_config(backbone, *overrides):
    """The tiny config with the sequential prior and hybrid item tokens (`model.ranking_prior=both`,
    `prompt.item_tokens=hybrid`): the model reads the history's order both ways. The sequence
    network's item table starts from the backbone's item text encodings (`model.sequence_init=text`), and
    the prior is a seed ensemble of two such networks (`model.sequence_seeds=2`)."""
    from mtrec.config import load_config
    from tests_paths import ROOT

    return load_config(ROOT / "tests/configs/tiny.yaml",
                       [f"model.backbone={backbone}", "prompt.item_tokens=hybrid", "model.ranking_prior=both",
                        "model.sequence_len=6", "model.sequence_init=text", "model.sequence_seeds=2",
                        "train.max_steps=4", "train.eval_every=0", *overrides])


@pytest.fixture(scope="session")
def reading_run(tmp_path_factory, tiny_backbone_dir):
    """A tiny run trained once with `reading_config`: (cfg, setup, parameters before, run folder, result)."""
    from mtrec.training import build_setup, train

    cfg = reading_config(tiny_backbone_dir)
    set_seed(cfg.run.seed)
    setup = build_setup(cfg)
    before = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    run_dir = tmp_path_factory.mktemp("runs") / "reading"
    result = train(cfg, run_dir, setup=setup)
    return cfg, setup, before, run_dir, result


@pytest.fixture
def reading_cfg(tiny_backbone_dir):
    """`reading_config` on the tiny backbone, with extra overrides."""
    return lambda *overrides: reading_config(tiny_backbone_dir, *overrides)
