"""The explanation faithfulness bench (`python -m mtrec.bench explain`) on the tiny run: its pieces
(which entries each method removes, the item-kNN similarity) and a whole run of a few users."""

import json

import numpy as np
import pytest

from mtrec.bench.baselines import ItemKNN
from mtrec.bench.explain import METHODS, TargetSimilarity, choose_removals, main, run_bench, sample_users
from mtrec.explain import shown_prompt
from mtrec.inference import Recommender


@pytest.fixture(scope="module")
def rec(tiny_run):
    return Recommender.from_run(tiny_run, device="cpu")


def test_choose_removals():
    changes = np.array([0.1, -0.2, 0.5, 0.1, 0.3, 0.0])
    sims = np.array([0.0, 0.9, 0.0, 0.4, 0.4, 0.2])
    chosen = choose_removals(changes, sims, 3, np.random.default_rng(0))
    assert chosen["occlusion"] == [2, 4, 0]  # largest change first; ties to the newer entry
    assert chosen["recent"] == [0, 1, 2]
    assert chosen["knn"] == [1, 3, 4]
    assert len(set(chosen["random"])) == 3 and set(chosen["random"]) <= set(range(6))
    assert chosen["random"] == choose_removals(changes, sims, 3, np.random.default_rng(0))["random"]


def test_similarity_is_item_knns(rec):
    knn = ItemKNN(neighbours=rec.dataset.num_items - 1).fit(rec.split)  # every neighbour kept
    sim = TargetSimilarity(rec.split)
    items = np.arange(rec.dataset.num_items)
    for target in (0, 5, 17):
        assert sim(target, items) == pytest.approx(knn.S[target].toarray().ravel(), abs=1e-12)


def test_the_bench_on_the_tiny_run(rec, tiny_run, tmp_path, capsys):
    users = sample_users(rec, 4, min_shown=5, seed=1)
    assert len(users) == 4 and users == sample_users(rec, 4, min_shown=5, seed=1)
    assert all(len(shown_prompt(rec, u).history_items) >= 5 for u in users)
    result = run_bench(rec, users=4, min_shown=5, seed=1, resamples=50)
    assert result["users"] == 4 and set(result["methods"]) == set(METHODS)
    assert result["score_check_max"] < 1e-5  # the bench's full prompt scores as the explanation said
    for row in result["rows"]:
        assert row["rank"] == 0  # the target is the top-1 unseen item
        e = rec.explain(row["user"], row["target"], k=100)
        history = sorted((c for c in e.contributions if c.source == "history"), key=lambda c: (-c.change, c.position))
        assert row["methods"]["occlusion"]["positions"] == [c.position for c in history[:3]]
        for m in METHODS:
            got = row["methods"][m]
            assert got["score_drop"] == pytest.approx(row["score"] - got["score"], abs=1e-5)
            assert len(got["removed"]) == 3 and got["rank_change"] == got["rank"] - row["rank"]
    for alt in ("random", "recent", "knn"):
        d = result["occlusion_minus"][alt]["score_drop"]
        assert d["low"] <= d["diff"] <= d["high"] and d["n"] == 4
    assert 0 <= result["score"]["lm_share"] <= 1
    out = tmp_path / "explain-synthetic.json"
    assert main(["--run", str(tiny_run), "--users", "3", "--min-shown", "5", "--resamples", "20", "--device", "cpu",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["users"] == 3
    assert "occlusion - random" in capsys.readouterr().out
    assert main(["--run", str(tiny_run), "--users", "3", "--min-shown", "99", "--device", "cpu"]) == 2


def test_help():
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
