"""Training a tiny model: what trains, what stays frozen, the run folder, and reloading it."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from mtrec.data.splits import VALID
from mtrec.inference import Recommender
from mtrec.pipeline import eval_specs
from mtrec.run import FORMAT_VERSION, RunFolderError, check_run_dir
from mtrec.kinds import KIND_NAMES
from mtrec.training import build_setup, train


def _embedding(model):
    return model.base_model.model.backbone.get_input_embeddings()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_backbone_dir):
    from mtrec.config import load_config
    from tests_paths import ROOT

    cfg = load_config(ROOT / "tests/configs/tiny.yaml", [f"model.backbone={tiny_backbone_dir}", "train.max_steps=12",
                                                         "train.eval_every=6", "train.warmup_steps=1"])
    setup = build_setup(cfg)
    before = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    token_ids = torch.tensor(sorted(setup.token_ids.values()))
    other_ids = torch.tensor([5, 100, 1000])
    emb_before = (_embedding(setup.model)(token_ids).detach().clone(), _embedding(setup.model)(other_ids).detach().clone())
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = train(cfg, run_dir, setup=setup)
    return cfg, setup, before, emb_before, (token_ids, other_ids), run_dir, result


def test_base_frozen_adapters_heads_and_token_rows_trained(trained):
    _, setup, before, emb_before, (token_ids, other_ids), _, result = trained
    changed, frozen_changed = [], []
    for name, p in setup.model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        if p.requires_grad:
            changed.append((name, moved))
        elif moved:
            frozen_changed.append(name)
    assert frozen_changed == [], f"frozen base weights changed: {frozen_changed[:5]}"
    trainable = dict(changed)
    # LoRA: B starts at zero and must move; heads (modules_to_save) and the token-row delta must move
    assert any(moved for n, moved in trainable.items() if "lora_B" in n)
    for part in ("modules_to_save.default.rating.weight", "modules_to_save.default.item_table",
                 "modules_to_save.default.item_rating_offset", "modules_to_save.default.user_factors",
                 "modules_to_save.default.like.weight", "trainable_tokens_delta"):
        hits = [moved for n, moved in trainable.items() if part in n]
        assert hits and all(hits), f"{part} did not train"
    # a ranking prior trains too, unless the ranking blend (chosen on validation) put the fits back; which
    # it chooses turns on the last bits of the item encodings, so the test reads the choice
    fitted = result["rank_blend"]["priors"] == "fitted"
    hits = [moved for n, moved in trainable.items() if "modules_to_save.default.rec_item_factors" in n]
    assert hits and all(hits) != fitted, f"rec_item_factors: moved {hits}, the blend kept the fits: {fitted}"
    emb = _embedding(setup.model)
    assert not torch.allclose(emb(token_ids), emb_before[0]), "instruction-token rows did not train"
    assert torch.equal(emb(other_ids), emb_before[1]), "ordinary token rows must stay frozen"


TABLES = ("item_table", "item_bias", "user_factors", "item_factors", "rec_user_factors", "rec_item_factors")


def _held_tables(model) -> dict[str, list[int]]:
    """Per table name: the element counts of every distinct non-empty storage holding it."""
    out: dict[str, dict[int, int]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        leaf = name.split(".")[-1]
        if leaf in TABLES and t.numel():
            out.setdefault(leaf, {})[t.untyped_storage().data_ptr()] = t.numel()
    return {k: sorted(v.values()) for k, v in out.items()}


def test_heads_tables_are_held_once_in_memory_and_on_disk(trained):
    from safetensors import safe_open

    cfg, setup, _, _, _, run_dir, _ = trained
    n_items, n_users = setup.split.dataset.num_items, setup.split.dataset.num_users
    rec = Recommender.from_run(run_dir, device="cpu")
    for model in (setup.model, rec.model):  # as trained, and as loaded back
        held = _held_tables(model)
        assert set(held) == set(TABLES)
        assert all(len(v) == 1 for v in held.values()), held  # one storage each: peft's original is released
        assert held["item_table"][0] == n_items * setup.model.base_model.model.heads.modules_to_save["default"].item_table.shape[1]
        assert held["user_factors"][0] == n_users * cfg.model.collab_dim
    with safe_open(str(next((run_dir / "adapter").glob("*.safetensors"))), "pt") as f:
        stored = [k for k in f.keys() if k.split(".")[-1] in TABLES]
    assert sorted(k.split(".")[-1] for k in stored) == sorted(TABLES)  # each table stored once


def test_multitask_validation_loss_falls(trained):
    *_, result = trained
    losses = [h["loss"] for h in result["history"]]
    assert result["history"][0]["step"] == 0 and result["steps"] == 12
    assert losses[-1] < losses[0], losses
    assert result["ranks"]["steps"] == [12]


def test_run_folder_is_complete_and_reloads_exactly(trained):
    cfg, setup, _, _, _, run_dir, result = trained
    manifest = check_run_dir(run_dir)
    assert manifest["pooling"] == "last" and set(manifest["token_ids"]) == {"rating", "preference", "recommendation"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best"]["loss"] == pytest.approx(result["best"]["loss"])
    phases = metrics["phases"]  # every phase timed
    assert set(phases) == {"data", "backbone", "item_encoding", "collaborative_fits", "lora", "examples",
                           "evaluation", "training"}
    assert all(v >= 0 for v in phases.values()) and phases["training"] > 0 and phases["evaluation"] > 0
    assert phases["training"] < metrics["seconds"]  # the steps' clock less its two in-loop evaluations
    backbone = json.loads((run_dir / "backbone.json").read_text())
    assert backbone["kind"] == "path" and len(backbone["sha256"]) == 64
    assert (run_dir / "prompts" / "rating.yaml").is_file()

    rec = Recommender.from_run(run_dir, device="cpu", merge=False)  # the adapter as trained: bit-exact
    merged = Recommender.from_run(run_dir, device="cpu")  # the default: LoRA folded into the weights
    specs = eval_specs(setup.split, setup.kinds, setup.example_options, VALID, max_users=8)
    rows = np.arange(min(len(specs), 16))
    templates = [setup.batcher.templates(KIND_NAMES[int(k)])[0] for k in specs.kind[rows]]
    batch = setup.batcher.collate(specs, rows, templates)
    setup.model.eval()
    with torch.no_grad():
        want = setup.model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"])
        got = rec.model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"])
        near = merged.model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"])
    for key in ("rating", "like_logit", "category_logits", "item_logits"):
        assert torch.equal(want[key], got[key]), key
        assert (want[key] - near[key]).abs().max() <= 1e-5, key  # merging moves scores by rounding only


def test_random_init_run_folder_rebuilds_the_same_random_backbone(tmp_path, tiny_backbone_dir):
    """The random-init ablation stores no base weights: loading rebuilds them through training's own
    builder (same seed), so the reloaded model answers exactly as the trained one."""
    from mtrec.config import load_config
    from tests_paths import ROOT

    cfg = load_config(ROOT / "tests/configs/tiny.yaml", [f"model.backbone={tiny_backbone_dir}", "train.max_steps=2",
                                                         "train.eval_every=2", "train.warmup_steps=1",
                                                         "model.random_init=true"])
    setup = build_setup(cfg)
    train(cfg, tmp_path / "random", setup=setup)
    rec = Recommender.from_run(tmp_path / "random", device="cpu", merge=False)
    specs = eval_specs(setup.split, setup.kinds, setup.example_options, VALID, max_users=4)
    rows = np.arange(min(len(specs), 8))
    batch = setup.batcher.collate(specs, rows, [setup.batcher.templates(KIND_NAMES[int(k)])[0] for k in specs.kind[rows]])
    setup.model.eval()
    with torch.no_grad():
        want = setup.model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"])
        got = rec.model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"])
    assert torch.equal(want["item_logits"], got["item_logits"]) and torch.equal(want["rating"], got["rating"])


def test_recommender_api_answers(trained):
    *_, run_dir, _ = trained
    rec = Recommender.from_run(run_dir, device="cpu")
    user = rec.dataset.users[0].id
    top = rec.recommend(user, k=5)[0]
    seen = {rec.dataset.items[i].id for i in rec.dataset.item_idx[rec.dataset.user_idx == 0]}
    assert len(top) == 5 and len({i for i, _ in top}) == 5 and not seen & {i for i, _ in top}
    scores = [s for _, s in top]
    assert scores == sorted(scores, reverse=True)
    lo, hi = rec.dataset.rating_scale
    assert all(lo <= r <= hi for r in rec.rate(user, [i for i, _ in top]))
    assert all(0 <= p <= 1 for p in rec.prefer([user, user], [top[0][0], top[1][0]]))
    cats = rec.categories(user)[0]
    assert len(cats) == len(rec.dataset.categories) and sum(p for _, p in cats) == pytest.approx(1, abs=1e-5)
    with pytest.raises(KeyError, match="unknown user id 'nobody'"):
        rec.recommend("nobody")


def test_existing_run_folder_is_never_overwritten(trained, tiny_config):
    *_, run_dir, _ = trained
    with pytest.raises(RunFolderError, match="exists and is not empty"):
        train(tiny_config(), run_dir)


def test_wall_clock_budget_stops_at_a_logging_step_and_says_so(tiny_config, tmp_path, capsys):
    # a budget already spent after the first step: the loop stops at the first logging step (2), evaluates
    # there, and both the bar and the stop message name the budget
    cfg = tiny_config("train.max_steps=50", "train.max_minutes=1e-6", "train.log_every=2", "train.eval_every=0")
    result = train(cfg, tmp_path / "budget")
    assert result["steps"] == 2 and [h["step"] for h in result["history"]] == [0, 2]
    captured = capsys.readouterr()
    assert "stopping at step 2: train.max_minutes=1e-06 reached" in captured.out
    assert "training (stops after 1e-06 min)" in captured.err


def test_incomplete_run_folder_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(RunFolderError, match="missing config.yaml"):
        check_run_dir(tmp_path)


def test_run_folder_from_another_format_version_is_refused(trained, tmp_path):
    import shutil

    *_, run_dir, _ = trained
    copy = tmp_path / "old-run"
    shutil.copytree(run_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunFolderError, match=rf"run folder format 0, this mtrec reads {FORMAT_VERSION}"):
        Recommender.from_run(copy, device="cpu")


def test_run_folder_refuses_a_base_backbone_with_other_weights(trained, tmp_path):
    import shutil

    *_, run_dir, _ = trained
    backbone = json.loads((run_dir / "backbone.json").read_text())
    base = tmp_path / "base"
    shutil.copytree(backbone["path"], base)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "backbone.json").write_text(json.dumps(dict(backbone, path=str(base), spec=str(base))))
    assert Recommender.from_run(copy, device="cpu").dataset.num_users > 0  # same bytes: accepted
    weights = next(base.glob("*.safetensors"))
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, weights)
    with pytest.raises(RunFolderError, match="content hash"):
        Recommender.from_run(copy, device="cpu")


@pytest.mark.skipif(os.environ.get("MTREC_TEST_COMPILE") != "1",
                    reason="torch.compile takes minutes on a CPU; set MTREC_TEST_COMPILE=1")
def test_compiled_training_gives_the_eager_losses(tmp_path, tiny_backbone_dir):
    from mtrec.config import load_config
    from tests_paths import ROOT

    common = [f"model.backbone={tiny_backbone_dir}", "train.max_steps=4", "train.warmup_steps=1",
              "train.eval_every=0", "model.lora_dropout=0.0", "train.length_buckets=0"]
    results = {}
    for compiled in (False, True):
        cfg = load_config(ROOT / "tests/configs/tiny.yaml", common + [f"train.compile={str(compiled).lower()}"])
        results[compiled] = train(cfg, tmp_path / f"compiled-{compiled}")
        assert results[compiled]["compiled"] is compiled
    for eager, comp in zip(results[False]["history"], results[True]["history"]):
        for key in ("loss", "rating/loss", "like/loss", "recommendation/loss"):
            assert comp[key] == pytest.approx(eager[key], rel=1e-3), key


@pytest.mark.parametrize(("setting", "limit", "sampled"), [("auto", None, False), ("auto", 10, True),
                                                           ("full", 10, False), ("sampled", None, True)])
def test_recommendation_loss_is_sampled_above_the_large_catalog_limit(trained, monkeypatch, setting, limit, sampled):
    from mtrec import training

    cfg, setup, *_ = trained
    if limit is not None:  # the tiny catalog (40 items) stands in for a large one
        monkeypatch.setattr(training, "FULL_SOFTMAX_ITEMS", limit)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, rec_loss=setting, num_negatives=5))
    columns = []
    real = training.multitask_loss
    monkeypatch.setattr(training, "multitask_loss", lambda out, *a: columns.append(out["item_logits"].shape[1]) or real(out, *a))
    batch = setup.batcher.collate(*_one_batch(setup))
    training._step_loss(setup.model, batch, setup.weights, cfg)
    n_items = setup.split.dataset.num_items
    assert (columns[0] < n_items) is sampled and (columns[0] == n_items) is not sampled


def _one_batch(setup):
    specs = eval_specs(setup.split, setup.kinds, setup.example_options, VALID, max_users=4)
    rows = np.arange(min(len(specs), 8))
    return specs, rows, [setup.batcher.templates(KIND_NAMES[int(k)])[0] for k in specs.kind[rows]]
