"""`python -m mtrec.bench categories`: category preference of run folders against the history's categories."""

import math

import numpy as np
import torch

from mtrec.bench.categories import history_scores, main, per_row_ndcg, score_runs
from mtrec.data.splits import TEST, TRAIN, VALID, make_split
from mtrec.data.synthetic import load_synthetic


def test_per_row_ndcg_by_hand():
    scores = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0], [0.0, 5.0, 1.0]])
    relevance = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    got = per_row_ndcg(scores, relevance, k=2)
    # row 0: the relevant one second; row 1: all tied, counted against (relevant last, beyond k=2); row 2: both on top
    assert np.allclose(got, [1 / math.log2(3), 0.0, 1.0])


def test_history_scores_count_the_items_before_the_target():
    split = make_split(load_synthetic(num_users=6, num_items=12), "leave_one_out", seed=0)
    ds = split.dataset
    user = 2
    scores = history_scores(split, np.array([user]), TEST)[0].numpy()
    mine = (ds.user_idx == user) & ((split.role == TRAIN) | (split.role == VALID))
    want = np.zeros(len(ds.categories))
    for i in ds.item_idx[mine]:
        for c in ds.items[i].categories:
            want[ds.category_index[c]] += 1
    assert np.array_equal(np.floor(scores), want)  # the counts; the fractional part only breaks ties
    assert (scores - want < 1).all() and (scores - want >= 0).all()
    valid_only = history_scores(split, np.array([user]), VALID)[0].numpy()
    assert np.floor(valid_only).sum() < want.sum()  # for validation targets the validation item is not history


def test_a_run_against_the_history_baseline(tiny_run, tmp_path):
    result = score_runs([tiny_run], users=0)
    assert result["rows"] > 0 and set(result["ndcg@5"]) == {str(tiny_run), "history categories"}
    pair = result["pairs"][f"{tiny_run} - history categories"]
    assert pair["n"] == result["rows"] and pair["low"] <= pair["diff"] <= pair["high"]
    assert math.isclose(pair["diff"], result["ndcg@5"][str(tiny_run)] - result["ndcg@5"]["history categories"],
                        abs_tol=1e-9)
    out = tmp_path / "c.json"
    assert main([str(tiny_run), "--users", "0", "--out", str(out)]) == 0 and out.exists()
