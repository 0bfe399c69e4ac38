"""`python -m mtrec.bench speed recipes`: whole training recipes timed end to end, on a tiny model."""

import json

import pytest

from mtrec.bench import speed


def test_recipes_time_the_training_loop_and_the_tallrec_step(four_layers, tmp_path):
    from tests_paths import ROOT

    out = tmp_path / "recipes.json"
    assert speed.main(["recipes", "--config", str(ROOT / "tests/configs/tiny.yaml"), "--set", f"model.backbone={four_layers}",
                       "--only", "today,top-2 cached,tallrec", "--steps", "4", "--fixed-batches", "2",
                       "--threads", "1", "--rank-users", "8", "--rank-batch", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["recipe"]: r for r in result["rows"]}
    assert list(rows) == ["today", "top-2 cached", "TALLRec-style step"]
    assert all(r["steps"] == 4 and r["examples"] == 32 and r["training_seconds"] > 0 for r in rows.values())
    cached = rows["top-2 cached"]
    # 4 steps over 2 fixed batches from an empty cache: each batch computed once, then replayed
    assert {k: cached["activation_cache"][k] for k in ("hits", "misses", "stored")} == {"hits": 2, "misses": 2, "stored": 2}
    assert cached["activation_cache_bytes"] > 0 and not list(tmp_path.glob("activations*"))
    assert cached["trainable_parameters"] < rows["today"]["trainable_parameters"]  # LoRA on 2 of 4 layers, no token rows
    rank = result["ranking"]  # on the today recipe's run folder: Recommender.recommend against beam search
    assert rank["users"] == 8 and rank["users_per_call"] == 4 and rank["mtrec_users_per_s"] > 0
    assert rank["mtrec_over_beam"] == pytest.approx(rank["mtrec_users_per_s"] / rank["beam_users_per_s"])
    md = out.with_suffix(".md").read_text()
    ratio = cached["examples_per_second"] / rows["TALLRec-style step"]["examples_per_second"]
    assert f"| top-2 cached | " in md and f"| {ratio:.2f} |" in md


def test_unknown_recipe_is_named(capsys):
    with pytest.raises(SystemExit):
        speed.main(["recipes", "--only", "top-3 cached"])
    assert "unknown recipe(s) ['top-3 cached']" in capsys.readouterr().err


def test_learning_scores_step_0_and_the_run_at_a_quarter_half_and_all_of_its_steps(four_layers, tmp_path):
    from mtrec.bench import learning
    from tests_paths import ROOT

    argv = ["--config", str(ROOT / "tests/configs/tiny.yaml"), "--set", f"model.backbone={four_layers}",
            "--set", f"train.activation_cache_dir={tmp_path / 'activations'}", "--recipe", "top-2 cached=8", "--users", "0", "--threads", "1", "--resamples", "200", "--out", str(tmp_path)]
    assert learning.main(argv) == 0
    row = json.loads((tmp_path / "rows" / "top-2-cached-8.json").read_text())
    assert list(row["points"]) == ["0", "2", "4", "8"] and row["steps"] == 8
    # the default: half the steps as fixed batches (2 epochs), each computed once and replayed once
    assert row["activation_cache"]["misses"] == 4 and row["activation_cache"]["hits"] == 4
    zero = row["points"]["0"]["figures"]
    for step in ("2", "4", "8"):
        point = row["points"][step]
        for fig in ("ndcg@10", "loss"):
            assert point["change"][fig]["diff"] == pytest.approx(point["figures"][fig] - zero[fig], abs=1e-9)
    assert row["points"]["8"]["figures"]["loss"] < zero["loss"]  # two epochs over four batches: the loss falls
    # a rerun finds the row done and trains nothing
    trained = tmp_path / "runs" / "top-2-cached-8" / "metrics.json"
    stamp = trained.stat().st_mtime_ns
    assert learning.main(argv) == 0 and trained.stat().st_mtime_ns == stamp
    # against a second recipe: the difference of their gains over step 0, at matched points
    assert learning.main([*argv, "--recipe", "today=4"]) == 0
    result = json.loads((tmp_path / "learning.json").read_text())
    today = json.loads((tmp_path / "rows" / "today-4.json").read_text())
    assert [(c["recipe"], c["reference"], c["minutes"]) for c in result["versus"]] == [
        ("today", "top-2 cached", m) for m in ("10", "20", "40")]
    at40 = result["versus"][2]["gain_difference"]
    for fig in ("ndcg@10", "loss"):
        want = today["points"]["4"]["change"][fig]["diff"] - row["points"]["8"]["change"][fig]["diff"]
        assert at40[fig]["diff"] == pytest.approx(want, abs=1e-9) and at40[fig]["low"] <= at40[fig]["high"]
    assert "Gain over step 0, recipe minus reference" in (tmp_path / "learning.md").read_text()


def test_weighted_loss_by_hand():
    import numpy as np

    from mtrec.bench.learning import weighted_loss

    loss, kind = np.array([1.0, 3.0, 10.0, 0.5]), np.array([0, 0, 1, 3])
    weights = np.array([1.0, 0.5, 2.0, 4.0, 1.0])
    assert weighted_loss(loss, kind, weights) == pytest.approx(1.0 * 2.0 + 0.5 * 10.0 + 4.0 * 0.5)
