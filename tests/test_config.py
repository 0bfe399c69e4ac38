"""Every shipped YAML validates; bad keys, types and contradictions raise naming the key."""

from pathlib import Path

import pytest

from mtrec.config import Config, ConfigError, apply_overrides, from_dict, help_text, load_config

ROOT = Path(__file__).resolve().parent.parent
YAMLS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "tests/configs").glob("*.yaml"))


def test_there_are_shipped_configs():
    names = {p.name for p in YAMLS}
    assert {"quickstart.yaml", "movielens-100k-gpu.yaml", "lastfm-2k-gpu.yaml", "tiny.yaml"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    # every key in the file is a known one and reached the dataclass
    import yaml

    raw = yaml.safe_load(path.read_text())
    for section, values in raw.items():
        for key, value in (values or {}).items():
            got = getattr(getattr(cfg, section), key)
            assert got == value or (isinstance(value, int) and got == float(value)), f"{section}.{key}"


def test_overrides_are_typed_and_applied_in_order():
    cfg = load_config(ROOT / "configs/quickstart.yaml", ["train.lr=1e-4", "train.max_steps=7", "train.max_steps=9",
                                                         "train.tasks=[rating]", "model.item_dim=null"])
    assert cfg.train.lr == pytest.approx(1e-4) and cfg.train.max_steps == 9
    assert cfg.train.tasks == ["rating"] and cfg.model.item_dim is None
    assert cfg.data.dataset == "movielens-100k"  # untouched keys keep the file's values


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown key train.lrr"),
        ("trian.lr=1", "unknown section 'trian'"),
        ("train.lr=fast", "train.lr: expected float, got str 'fast'"),
        ("train.batch_size=true", "train.batch_size: expected int, got bool"),
        ("train.batch_size=0", "train.batch_size: must be > 0"),
        ("train.mixing=random", "train.mixing: 'random' is not one of"),
        ("train.tasks=[rating, ranking]", "train.tasks"),
        ("train.task_weights={rate: 2}", "train.task_weights: unknown kind 'rate'"),
        ("train.warmup_steps=500", "train.warmup_steps (500) must be below train.max_steps"),
        ("prompt.social_share=1.5", "prompt.social_share"),
        ("model.lora_r=null", "model.lora_r: may not be null"),
        ("model.lora_targets=q_proj", "model.lora_targets: 'q_proj'; expected auto, attention, or a list"),
        ("model.collab_dim=-1", "model.collab_dim: must be >= 0"),
        ("train.length_buckets=-2", "train.length_buckets: must be >= 0"),
        ("train.lr", "expected section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(ROOT / "configs/quickstart.yaml", [override])


def test_patience_without_evaluation_is_a_contradiction():
    with pytest.raises(ConfigError, match="train.patience needs train.eval_every > 0"):
        from_dict({"train": {"patience": 3, "eval_every": 0}})


def test_a_text_start_for_a_sequential_prior_that_is_not_used_is_a_contradiction():
    with pytest.raises(ConfigError, match="model.sequence_init: text starts the sequential prior"):
        from_dict({"model": {"sequence_init": "text", "ranking_prior": "factors"}})
    assert from_dict({"model": {"sequence_init": "text", "ranking_prior": "both"}}).model.sequence_init == "text"
    with pytest.raises(ConfigError, match=r"model.sequence_init: 'pca' is not one of \['random', 'text'\]"):
        from_dict({"model": {"sequence_init": "pca", "ranking_prior": "both"}})


def test_a_seed_ensemble_of_a_sequential_prior_that_is_not_used_is_a_contradiction():
    with pytest.raises(ConfigError, match="model.sequence_seeds: more than one sequential prior network"):
        from_dict({"model": {"sequence_seeds": 3, "ranking_prior": "factors"}})
    with pytest.raises(ConfigError, match="model.sequence_seeds: must be >= 1"):
        from_dict({"model": {"sequence_seeds": 0, "ranking_prior": "both"}})
    assert from_dict({"model": {"sequence_seeds": 3, "ranking_prior": "sequence"}}).model.sequence_seeds == 3


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        load_config(bad)


def test_help_lists_every_key_with_its_help():
    text = help_text()
    assert "train.max_minutes" in text and "stop training after this many minutes" in text
    assert text.count("\n      ") >= 40
    assert apply_overrides({}, ["run.name=x"]) == {"run": {"name": "x"}}
