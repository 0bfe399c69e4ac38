"""Resumable benchmark rows: a finished row is loaded by a rerun with the same settings, and
computed again when the settings change."""

import math
from pathlib import Path

import pytest

from mtrec.bench.resume import RowStore

ROOT = Path(__file__).resolve().parents[2]


def test_a_stored_row_is_loaded_and_a_changed_setting_recomputes(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"ndcg@10": 0.25, "missing": math.nan, "records": {"rank": [0, 3]}}

    store = RowStore(tmp_path, {"seed": 0, "users": "abc"}, log=lambda _: None)
    first = store.row("mtrec multi-task, random-init backbone", compute)
    assert first == {"ndcg@10": 0.25, "missing": None, "records": {"rank": [0, 3]}}  # as read back
    assert (tmp_path / "mtrec-multi-task-random-init-backbone.json").exists()
    logged = []
    again = RowStore(tmp_path, {"users": "abc", "seed": 0}, log=logged.append)  # same settings, other order
    assert again.row("mtrec multi-task, random-init backbone", compute) == first and len(calls) == 1
    assert "done earlier" in logged[0]
    changed = RowStore(tmp_path, {"seed": 1, "users": "abc"}, log=lambda _: None)
    assert changed.get("mtrec multi-task, random-init backbone") is None
    changed.row("mtrec multi-task, random-init backbone", compute)
    assert len(calls) == 2 and not list(tmp_path.glob("*.tmp"))


def test_a_row_stored_under_another_version_is_recomputed(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"auc": 0.5 + len(calls)}

    store = RowStore(tmp_path, {"seed": 0}, log=lambda _: None)
    assert store.row("content kNN (TF-IDF)", compute) == {"auc": 1.5}             # stored without a version
    assert store.row("content kNN (TF-IDF)", compute, "2") == {"auc": 2.5}        # its code changed: recomputed
    assert store.row("content kNN (TF-IDF)", compute, "2") == {"auc": 2.5} and len(calls) == 2


# knobs whose default is not what stored rows were computed with (their neutral value is the old behaviour):
# stored stacked rows stacked the ranking priors, the default stacks them no longer; no stored row blended
BEHAVIOUR_CHANGED = {("model", "stack_ranking"), ("train", "rank_blend")}


def test_knobs_added_later_leave_the_row_key_alone_at_their_default():
    """A row stored before `model.train_top_layers` (and the other KEY_NEUTRAL knobs) existed is found
    again by a config that has them at the value that computes the same thing; set, they change it."""
    import argparse

    from mtrec.bench.accuracy import KEY_NEUTRAL, row_key
    from mtrec.config import Config

    config = Config().to_dict()
    for sec, name in BEHAVIOUR_CHANGED:  # at the value the stored rows were computed with
        config[sec][name] = KEY_NEUTRAL[sec, name]
    older = {sec: {k: v for k, v in values.items() if (sec, k) not in KEY_NEUTRAL} for sec, values in config.items()}
    args = argparse.Namespace(seed=0, dataset="movielens-100k")

    def key(cfg):
        return RowStore("unused", row_key({"settings": {"quick": True, "lm_rows": "all", "cli_overrides": [],
                                                        "base_config": cfg}, "split": {"sizes": [1]}}, args)).key

    assert len(older["train"]) < len(config["train"]) and key(config) == key(older)
    assert key(Config().to_dict()) != key(config)  # today's defaults blend the ranking: not a stored row
    changed = {**config, "model": {**config["model"], "train_top_layers": 2}}
    assert key(changed) != key(config)
    # model.stack_ranking: without stacking it leaves the key; a stacked row stored before it stacked the
    # ranking priors (the knob on), so today's default (off) is another key
    stacked = lambda **m: {**config, "model": {**config["model"], "stack_tail": 5, **m}}  # noqa: E731
    assert key({**config, "model": {**config["model"], "stack_ranking": True}}) == key(config)
    old_stacked = stacked()
    old_stacked["model"].pop("stack_ranking")
    assert key(stacked(stack_ranking=True)) == key(old_stacked) != key(stacked(stack_ranking=False))


# The knobs every stored accuracy-bench row was keyed by. A knob added since must be listed in
# `KEY_NEUTRAL` at the value that computes what the rows did (or, if it changes every row, added here
# on purpose): otherwise a new knob silently orphans every stored row, and a rerun retrains them all.
STORED_KNOBS = {
    "data": {"data_dir", "dataset", "download", "friend_holdout", "like_threshold", "max_history", "max_social",
             "max_train_users", "negatives_per_positive", "options", "split", "split_seed"},
    "model": {"backbone", "collab_dim", "encode_batch_size", "friend_dim", "item_dim", "item_init", "item_noise",
              "lora_alpha", "lora_dropout", "lora_r", "lora_targets", "pooling", "random_init"},
    "prompt": {"max_categories", "max_length", "max_text_tokens", "max_title_tokens", "prompts_dir", "social",
               "social_share"},
    "run": {"name", "output_root", "seed"},
    "train": {"batch_size", "checkpoint_every", "compile", "early_stopping_metric", "eval_batch_size", "eval_every",
              "eval_users", "final_eval_kinds", "final_eval_users", "grad_accum", "grad_clip", "head_lr",
              "keep_checkpoints", "length_buckets", "log_every", "loss_weighting", "lr", "max_minutes", "max_steps",
              "mixed_precision", "mixing", "num_negatives", "num_threads", "patience", "prefetch", "rec_loss",
              "table_lr", "task_weights", "tasks", "temperature", "tensorboard", "warmup_steps", "weight_decay"},
}


def test_every_knob_added_since_the_stored_rows_is_key_neutral():
    from mtrec.bench.accuracy import KEY_NEUTRAL
    from mtrec.config import Config

    config = Config().to_dict()
    for section, values in config.items():
        for name, value in values.items():
            if name not in STORED_KNOBS.get(section, set()):
                assert (section, name) in KEY_NEUTRAL, f"{section}.{name}: add it to KEY_NEUTRAL (or STORED_KNOBS)"
                if (section, name) not in BEHAVIOUR_CHANGED:
                    assert KEY_NEUTRAL[section, name] == value, f"{section}.{name}: KEY_NEUTRAL is not its default"


def test_baseline_rows_are_keyed_by_what_they_read():
    """A backbone, prompt or training knob leaves the baselines' key alone (their fits are reused);
    what they read — the like threshold, the history, the split — changes it. The priors' settings
    version the prior alone's row alone."""
    import argparse

    from mtrec.bench.accuracy import baseline_key, prior_settings
    from mtrec.bench.baseline_suite import default_specs, row_version
    from mtrec.config import load_config

    args = argparse.Namespace(seed=0, dataset="movielens-100k")

    def key(*overrides):
        base = load_config(None, list(overrides))
        result = {"settings": {"quick": True, "lm_rows": "all", "cli_overrides": list(overrides), "lm_users": 500,
                               "base_config": base.to_dict()},
                  "split": {"sizes": [1], "lm_users_sha256": str(overrides)}}
        return RowStore("unused", baseline_key(result, args, base)).key

    plain = key()
    assert key("model.backbone=bundled:minilm-l6", "prompt.item_tokens=hybrid", "train.max_steps=70",
               "model.train_top_layers=2") == plain
    assert key("data.like_threshold=3.0") != plain
    assert key("model.ranking_prior=both") != plain   # the examples carry the history the prior reads
    assert key("model.like_text=10") == plain         # a term of the language-model rows only
    assert key("model.collab_dim=16") == plain        # the prior alone's row alone reads it:

    specs = {s.label: s for s in default_specs(True)}

    def versions(*overrides):
        prior = prior_settings(load_config(None, list(overrides)))
        return {label: row_version(spec, True, prior) for label, spec in specs.items()}

    both = versions("model.ranking_prior=both")
    for changed in (versions("model.ranking_prior=both", "model.collab_dim=16"),
                    versions("model.ranking_prior=both", "model.sequence_init=text")):
        assert {label for label in specs if changed[label] != both[label]} == {"prior alone"}
    assert versions("model.ranking_prior=both", "model.backbone=bundled:minilm-l6") == both  # random start: no text
    texted = versions("model.ranking_prior=both", "model.sequence_init=text")
    assert versions("model.ranking_prior=both", "model.sequence_init=text", "model.backbone=bundled:minilm-l6") != texted


def test_the_cpu_recipe_is_its_overrides_and_keys_rows_like_them(capsys):
    """`--recipe cpu` builds the config its overrides spelled with --set build (so both find the same
    rows), with the data set's ranking prior; it goes with --quick only."""
    from mtrec.bench.accuracy import QUICK, RECIPES, base_overrides, parse_args
    from mtrec.config import load_config

    def config(*argv):
        return load_config(None, base_overrides(parse_args(["--quick", *argv]), QUICK)).to_dict()

    _, common, per_dataset = RECIPES["cpu"]
    spelled = [a for o in (*common, *per_dataset["lastfm-2k"]) for a in ("--set", o)]
    lastfm = config("--dataset", "lastfm-2k", "--recipe", "cpu")
    assert lastfm == config("--dataset", "lastfm-2k", *spelled)
    assert lastfm["model"]["stack_tail"] == 5 and lastfm["model"]["ranking_prior"] == "factors"
    assert lastfm["model"]["item_dim"] == 128  # the profile's data-set override kept
    assert lastfm["model"]["like_text"] == 10
    movielens = config("--dataset", "movielens-100k", "--recipe", "cpu", "--set", "train.max_steps=10")
    assert movielens["model"]["ranking_prior"] == "both" and movielens["train"]["max_steps"] == 10  # --set wins
    assert movielens["model"]["like_text"] == 0
    assert movielens["model"]["item_init"] == "backbone" and lastfm["model"]["item_init"] == "random"  # the profile's
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "movielens-100k", "--recipe", "cpu"])
    assert "goes with --quick" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "movielens-100k", "--recipe", "gpu", "--quick"])
    assert "goes without --quick" in capsys.readouterr().err


def test_the_gpu_recipe_is_the_full_profile_with_the_gpu_configs_choices():
    """`--recipe gpu`: the full profile plus the CPU profile's modelling choices, which are what
    configs/*-gpu.yaml set (the profile mirrors those configs)."""
    from mtrec.bench.accuracy import FULL, base_overrides, parse_args
    from mtrec.config import load_config

    for dataset, path in (("movielens-100k", "configs/movielens-100k-gpu.yaml"), ("lastfm-2k", "configs/lastfm-2k-gpu.yaml")):
        bench = load_config(None, base_overrides(parse_args(["--dataset", dataset, "--recipe", "gpu"]), FULL)).model
        plain = load_config(None, base_overrides(parse_args(["--dataset", dataset]), FULL)).model
        config = load_config(ROOT / path).model
        assert plain.stack_tail == 0 and bench.stack_tail == 5 == config.stack_tail
        assert bench.ranking_prior == config.ranking_prior == ("both" if dataset == "movielens-100k" else "factors")
        assert bench.like_text == config.like_text == (10 if dataset == "lastfm-2k" else 0)
        assert bench.item_init == config.item_init == plain.item_init == "backbone"  # the full profile's already
        assert bench.lora_r == config.lora_r == 16 and bench.train_top_layers == plain.train_top_layers
