"""Metrics against values worked out by hand (the arithmetic is in the comments)."""

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryAUROC

from mtrec.metrics import (
    accuracy,
    auc,
    hit_rate,
    log_loss,
    mae,
    mrr,
    ndcg,
    ndcg_at_k,
    rmse,
    sampled_ranks,
    target_ranks,
)

L3, L5, L6 = math.log2(3), math.log2(5), math.log2(6)


def test_rmse_mae():
    # errors: 3-1=2, 4-4=0, 5-4=1 -> squared 4, 0, 1 -> RMSE sqrt(5/3); MAE (2+0+1)/3 = 1
    pred, y = np.array([3.0, 4.0, 5.0]), np.array([1.0, 4.0, 4.0])
    assert rmse(pred, y) == pytest.approx(math.sqrt(5 / 3))
    assert mae(pred, y) == pytest.approx(1.0)
    assert rmse(torch.tensor(pred), torch.tensor(y)) == pytest.approx(math.sqrt(5 / 3))


def test_auc_ties_count_half_and_matches_torchmetrics():
    # pairs (pos, neg): (.9,.5)=1, (.9,.1)=1, (.5,.5)=tie=0.5, (.5,.1)=1 -> 3.5 / 4
    scores, labels = np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0])
    assert auc(scores, labels) == pytest.approx(0.875)
    assert auc(np.zeros(4), labels) == pytest.approx(0.5)  # all tied: every pair counts half
    assert math.isnan(auc(scores, np.ones(4)))
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 300).astype(np.float32)  # heavy ties
    y = (rng.random(300) < 0.3 + 0.1 * s).astype(np.int64)
    ref = BinaryAUROC(thresholds=None)(torch.tensor(s), torch.tensor(y))
    assert auc(s, y) == pytest.approx(float(ref), abs=1e-6)
    assert auc(torch.tensor(s), torch.tensor(y)) == pytest.approx(float(ref), abs=1e-6)


def test_log_loss_and_accuracy():
    # -(ln 0.8 + ln(1 - 0.4)) / 2
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert log_loss(np.array([0.8, 0.4]), np.array([1, 0])) == pytest.approx(expected)
    # p = 0 for a positive is clipped to 1e-7: -ln(1e-7) = 16.118..., not infinity
    assert log_loss(np.array([0.0]), np.array([1])) == pytest.approx(-math.log(1e-7), rel=1e-6)
    # predictions p > 0.5: [1, 0, 0, 1] against [1, 1, 0, 0] -> right, wrong, right, wrong = 0.5
    assert accuracy(np.array([0.9, 0.5, 0.2, 0.6]), np.array([1, 1, 0, 0])) == pytest.approx(0.5)


def test_category_ndcg_several_relevant_single_relevant_and_empty_rows():
    scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    rel = np.array([[1, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    # row 0, k=3: ranked cats 0 (rel 1), 1 (0), 3 (1): DCG = 1/log2(2) + 0 + 1/log2(4) = 1.5
    #   IDCG = 1 + 1/log2(3) + 1/log2(4) = 2.13093 -> 0.70392
    # row 1: the only relevant cat 0 is ranked 4th > k -> 0; row 2 has none -> left out of the mean
    row0 = 1.5 / (1 + 1 / L3 + 0.5)
    assert ndcg_at_k(scores, rel, 3) == pytest.approx((row0 + 0.0) / 2)
    assert ndcg_at_k(torch.tensor(scores), torch.tensor(rel), 3) == pytest.approx((row0 + 0.0) / 2)
    assert math.isnan(ndcg_at_k(scores[2:], rel[2:], 3))


def test_category_ndcg_graded_and_pessimistic_ties():
    # graded rel [2, 1, 0], scores rank cats 1, 2, 0: DCG = 1/1 + 0 + 2/log2(4) = 2
    #   IDCG = 2/1 + 1/log2(3) = 2.63093 -> 0.76018
    assert ndcg_at_k(np.array([[0.1, 0.9, 0.5]]), np.array([[2, 1, 0]]), 3) == pytest.approx(2 / (2 + 1 / L3))
    # all scores equal: the relevant cat is put last (4th): outside k=2 -> 0; at k=4: 1/log2(5)
    flat, rel = np.ones((1, 4)), np.array([[0, 1, 0, 0]])
    assert ndcg_at_k(flat, rel, 2) == 0.0
    assert ndcg_at_k(flat, rel, 4) == pytest.approx(1 / L5)


def test_target_ranks_pessimistic_ties_and_exclusion():
    scores = np.array(
        [
            [0.1, 0.9, 0.5, 0.5, 0.3],  # target 2 (0.5); item 1 (0.9) is excluded; item 3 ties
            [0.8, 0.2, 0.2, 0.2, 0.2],  # target 0: strictly best -> rank 0
            [1.0, 1.0, 1.0, 1.0, 1.0],  # target 4: all tied -> worst rank, 4
        ]
    )
    targets = np.array([2, 0, 4])
    exclude = np.zeros((3, 5), dtype=bool)
    exclude[0, 1] = True
    # row 0 with item 1 excluded: only item 3 (tie, counts against) -> rank 1; without exclusion 2
    ranks = target_ranks(scores, targets, exclude)
    assert isinstance(ranks, np.ndarray) and ranks.tolist() == [1, 0, 4]
    assert target_ranks(scores, targets).tolist() == [2, 0, 4]
    # the same exclusion as (row, col) pairs; torch in -> torch out
    pairs = (np.array([0]), np.array([1]))
    out = target_ranks(torch.tensor(scores), torch.tensor(targets), pairs)
    assert isinstance(out, torch.Tensor) and out.tolist() == [1, 0, 4]
    exclude[1, 0] = True  # the target itself
    with pytest.raises(ValueError, match="target item 0 is excluded"):
        target_ranks(scores, targets, exclude)
    with pytest.raises(ValueError, match="NaN"):
        target_ranks(np.array([[np.nan, 1.0]]), np.array([1]))


def test_hit_rate_ndcg_mrr_by_hand():
    ranks = np.array([0, 1, 4, 12])
    # HR@10: ranks 0, 1, 4 are < 10 -> 3/4
    assert hit_rate(ranks, 10) == pytest.approx(0.75)
    # NDCG@10: (1/log2(2) + 1/log2(3) + 1/log2(6) + 0) / 4 = (1 + 0.63093 + 0.38685) / 4
    assert ndcg(ranks, 10) == pytest.approx((1 + 1 / L3 + 1 / L6) / 4)
    # MRR@10: (1/1 + 1/2 + 1/5 + 0) / 4 = 0.425; uncut adds 1/13
    assert mrr(ranks, 10) == pytest.approx(0.425)
    assert mrr(ranks) == pytest.approx((1 + 0.5 + 0.2 + 1 / 13) / 4)
    # a single user whose single relevant item is ranked 2nd
    assert ndcg(torch.tensor([1]), 10) == pytest.approx(1 / L3)
    assert hit_rate(np.array([1]), 1) == 0.0


def test_sampled_ranks_are_seeded_and_respect_exclusion():
    rng = np.random.default_rng(0)
    scores = rng.random((6, 50))
    targets = rng.integers(0, 50, 6)
    exclude = np.zeros((6, 50), dtype=bool)
    exclude[:, :10] = True
    exclude[np.arange(6), targets] = False
    scores[:, :10] = 9.0  # excluded items outscore every target: they must never be sampled
    full = target_ranks(scores, targets, exclude)
    # with n >= the number of candidates every non-excluded item is "sampled": equals full ranks
    assert sampled_ranks(scores, targets, 100, exclude, seed=0).tolist() == full.tolist()
    a = sampled_ranks(scores, targets, 5, exclude, seed=3)
    b = sampled_ranks(scores, targets, 5, exclude, seed=3)
    assert a.tolist() == b.tolist()
    assert np.all(a <= full) and np.all(a <= 5)


def test_paired_intervals_match_rows_by_user_and_item():
    from mtrec import metrics as m
    from mtrec.bench import intervals

    rng = np.random.default_rng(0)
    n = 400
    users = np.arange(n)
    good = {"rank_user": users, "rank": np.zeros(n, np.int64)}  # every target first: NDCG 1
    bad = {"rank_user": users[::-1].copy(), "rank": np.full(n, 50)}  # outside the top 10: NDCG 0
    c = intervals.compare(good, bad, "ndcg@10", resamples=200)
    assert c["diff"] == 1.0 and c["low"] == c["high"] == 1.0 and c["better"] == "a" and c["n"] == n
    # equal models: no measurable difference; a subset compares on the shared users only
    noise = {"rank_user": users, "rank": rng.integers(0, 20, n)}
    same = intervals.compare(noise, noise, "hr@10", resamples=200)
    assert same["diff"] == 0 and same["better"] is None
    half = intervals.restrict(noise, users[:100])
    assert intervals.compare(half, good, "ndcg@10", resamples=50)["n"] == 100
    # like rows are matched by (user, item), whatever their order
    lu, li = np.repeat(users, 2), np.tile([3, 7], n)
    label = li == 3
    a = {"like_user": lu, "like_item": li, "like_score": label + 0.0, "like_label": label}
    order = rng.permutation(2 * n)
    b = {k: v[order] for k, v in a.items()} | {"like_score": rng.random(2 * n)}
    c = intervals.compare(a, b, "auc", resamples=200)
    assert c["diff"] == pytest.approx(1.0 - m.auc(b["like_score"], b["like_label"]))
    assert c["better"] == "a" and c["low"] > 0.4
    r = {"rating_user": users, "rating_item": users, "rating_pred": np.full(n, 3.0), "rating_target": np.full(n, 4.0)}
    worse = r | {"rating_pred": np.full(n, 2.0)}
    c = intervals.compare(r, worse, "rmse", resamples=100)
    assert c["diff"] == pytest.approx(-1.0) and c["better"] == "a"  # lower RMSE is better
    assert "no measurable difference" in intervals.reading(same, "x", "y", "hr@10")
