"""Collaborative factors: the hold-out, the fits, and how the heads use them."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtrec import metrics, ranking
from mtrec.data.splits import make_split
from mtrec.data.synthetic import load_synthetic
from mtrec.model.build import build_heads
from mtrec.model.collaborative import fit_ranking, fit_rating, newest_per_user, platt
from mtrec.model.multitask import TaskHeads


@pytest.fixture(scope="module")
def split():
    # synthetic ratings follow user tastes x item categories: factors have something to find
    return make_split(load_synthetic(num_users=200, num_items=150, seed=3), "leave_one_out")


def _centred_log_pop(split):
    ds = split.dataset
    pop = torch.from_numpy(np.log1p(np.bincount(ds.item_idx[split.train], minlength=ds.num_items))).float()
    return pop - pop.mean()


def test_platt_recovers_a_known_scale_and_offset():
    gen = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(40_000, generator=gen)
    y = torch.bernoulli(torch.sigmoid(0.5 * z + 0.3), generator=gen)
    a, c = platt(z, y)
    assert a == pytest.approx(0.5, abs=0.03) and c == pytest.approx(0.3, abs=0.03)
    # labels that a threshold separates have no finite optimum: the fit must not return inf/nan
    a, c = platt(torch.tensor([-1.0, 1.0]), torch.tensor([0.0, 1.0]))
    assert math.isfinite(a) and math.isfinite(c)


def test_calibration_negatives_are_unobserved_and_a_user_who_saw_everything_does_not_hang():
    from mtrec.model.collaborative import pair_keys, sample_unobserved

    # user 0 saw items 0..7 of 10; user 1 saw all 10 (the calibration draws its negatives with this)
    seen = pair_keys(np.array([0] * 8 + [1] * 10), np.array(list(range(8)) + list(range(10))), 10)
    neg = sample_unobserved(np.array([0] * 10 + [1]), seen, 10, np.random.default_rng(0))
    assert neg.shape == (11,)
    assert set(neg[:10].tolist()) == {8, 9}  # only the two items user 0 never touched (both drawn)
    assert neg[10] == -1  # nothing left for user 1


def test_holdout_is_each_users_newest_training_interaction(split):
    train = split.train
    mask = newest_per_user(split, train)
    ds = split.dataset
    users = ds.user_idx[train]
    assert mask.sum() == len(np.unique(users))  # every synthetic user keeps >= 13 training items
    for u in np.unique(users)[:20]:
        rows = np.flatnonzero(users == u)
        newest = rows[np.argmax(split.position[train[rows]])]
        assert mask[rows].tolist() == [r == newest for r in rows]


def test_holdout_skips_users_with_too_few_training_items(split):
    train = split.train
    users = split.dataset.user_idx[train]
    u0 = users[0]
    keep = np.flatnonzero(users == u0)[:2]  # u0 left with two training interactions
    sub = np.concatenate([keep, np.flatnonzero(users != u0)])
    mask = newest_per_user(split, train[sub])
    assert not mask[:2].any()


def _valid_rmse(split, p):
    ds = split.dataset
    va = split.valid
    u, i = torch.as_tensor(ds.user_idx[va]), torch.as_tensor(ds.item_idx[va])
    lo, hi = ds.rating_scale
    z = p["b"] + p["io"][i] + p["uo"][u] + (p["P"][u] * p["Q"][i]).sum(-1)
    return metrics.rmse(lo + (hi - lo) * torch.sigmoid(z), torch.as_tensor(ds.values[va]).float())


@pytest.mark.parametrize("sparse", [False, True])
def test_rating_fit_beats_the_global_mean_and_is_seeded(split, sparse, monkeypatch):
    # sparse: the large-catalog path (row-sparse lookups, lazy Adam), forced by lowering the limit
    from mtrec.model import collaborative

    monkeypatch.setattr(collaborative, "FULL_SOFTMAX_ITEMS", 10 if sparse else collaborative.FULL_SOFTMAX_ITEMS)
    ds = split.dataset
    hold = newest_per_user(split, split.train)
    p = fit_rating(split, split.train, hold, dim=8, like_threshold=4.0, seed=0)
    assert p["io"].shape == (ds.num_items,) and p["luo"].shape == (ds.num_users,)
    global_rmse = float(np.sqrt(((ds.values[split.valid] - ds.values[split.train].mean()) ** 2).mean()))
    assert p["report"]["epochs"] >= 1
    assert _valid_rmse(split, p) < global_rmse - 0.05
    again = fit_rating(split, split.train, hold, dim=8, like_threshold=4.0, seed=0)
    assert torch.equal(p["P"], again["P"]) and torch.equal(p["io"], again["io"])


@pytest.mark.parametrize("sampled", [False, True])
def test_ranking_fit_beats_popularity_on_validation(split, sampled, monkeypatch):
    # sampled: the large-catalog path (Ciao, Epinions), forced here by lowering the full-softmax limit
    from mtrec.model import collaborative

    monkeypatch.setattr(collaborative, "FULL_SOFTMAX_ITEMS", 10 if sampled else collaborative.FULL_SOFTMAX_ITEMS)
    ds = split.dataset
    counts = np.bincount(ds.item_idx[split.train], minlength=ds.num_items)
    pop = torch.from_numpy(np.log1p(counts)).float()
    hold = newest_per_user(split, split.train)
    p = fit_ranking(split, split.train, hold, dim=8, item_bias0=pop - pop.mean(), seed=0, negatives=20,
                    like_negatives=4)
    assert p["report"]["sampled_softmax"] is sampled and p["bias"].shape == (ds.num_items,)
    assert np.isfinite(p["like_calibration"]).all()
    again = fit_ranking(split, split.train, hold, dim=8, item_bias0=pop - pop.mean(), seed=0, negatives=20)
    assert torch.equal(p["T"], again["T"]) and torch.equal(p["bias"], again["bias"])  # seeded
    va = split.valid
    users, items = ds.user_idx[va], torch.as_tensor(ds.item_idx[va])
    seen = ranking.Seen.before(split, "valid")

    def ndcg(scores):
        return metrics.ndcg(ranking.ranks(scores, items, users, seen), 10)

    fitted = ndcg(p["R"][torch.as_tensor(users)] @ p["T"].T + p["bias"])
    popularity = ndcg(pop.expand(len(users), -1).clone())
    assert fitted > popularity + 0.02


def test_heads_add_factors_for_known_users_only():
    torch.manual_seed(0)
    hidden, users, items, dim = 16, 5, 7, 3
    collab = {"P": torch.randn(users, dim), "Q": torch.randn(items, dim), "R": torch.randn(users, dim),
              "T": torch.randn(items, dim), "a": torch.tensor(0.5)}
    heads = TaskHeads(hidden, 2, torch.randn(items, hidden), torch.zeros(items), (1.0, 5.0), 3.0, num_users=users,
                      collab_dim=dim, collab=collab).eval()
    plain = TaskHeads(hidden, 2, heads.item_table.detach(), torch.zeros(items), (1.0, 5.0), 3.0, num_users=users).eval()
    pooled = torch.randn(2, hidden)
    u, i = torch.tensor([2, -1]), torch.tensor([4, 4])
    out, ref = heads(pooled, None, i, u), plain(pooled, None, i, u)
    dot = float(collab["P"][2] @ collab["Q"][4])
    z0 = math.log((3.0 - 1.0) / 4 / (1 - (3.0 - 1.0) / 4))  # the rating head's bias: logit of the mean
    assert out["rating"][0].item() == pytest.approx(1 + 4 / (1 + math.exp(-(z0 + dot))), rel=1e-5)
    assert out["like_logit"][0].item() == pytest.approx(ref["like_logit"][0].item() + 0.5 * dot, rel=1e-5, abs=1e-6)
    expected = ref["item_logits"][0] + collab["R"][2] @ collab["T"].T
    assert torch.allclose(out["item_logits"][0], expected, atol=1e-5)
    # an unknown user (-1) gets exactly the prompt-only outputs
    for key in ("rating", "like_logit", "item_logits"):
        assert torch.allclose(out[key][1], ref[key][1])


def test_build_heads_with_factors_starts_from_the_fit(split):
    ds = split.dataset
    table = torch.randn(ds.num_items, 8)
    with_cf = build_heads(ds, table, split.train, 8, 4.0, collab_dim=4, split=split, seed=0)
    without = build_heads(ds, table, split.train, 8, 4.0)
    assert with_cf.user_factors.shape == (ds.num_users, 4) and with_cf.user_factors.abs().sum() > 0
    assert with_cf.rec_item_factors.shape == (ds.num_items, 4) and with_cf.rec_item_factors.abs().sum() > 0
    assert without.user_factors.shape == (ds.num_users, 0)
    va = split.valid
    u, i = torch.as_tensor(ds.user_idx[va]), torch.as_tensor(ds.item_idx[va])
    r = torch.as_tensor(ds.values[va]).float()
    pooled = torch.zeros(len(va), 8)
    with torch.no_grad():
        rmse_cf = metrics.rmse(with_cf(pooled, None, i, u)["rating"], r)
        rmse_bias = metrics.rmse(without(pooled, None, i, u)["rating"], r)
    assert rmse_cf < rmse_bias


def test_implicit_like_prior_is_the_softmax_log_odds_and_ranks_held_out_likes():
    from mtrec.data.splits import VALID
    from mtrec.tasks import ExampleOptions, build_specs

    split = make_split(load_synthetic(num_users=200, num_items=150, seed=3, explicit=False), "leave_one_out")
    ds = split.dataset
    table = torch.randn(ds.num_items, 8)
    heads = {d: build_heads(ds, table, split.train, 8, 4.0, collab_dim=d, split=split, seed=0,
                            negatives_per_positive=2) for d in (0, 4)}
    h = heads[4]
    fit = fit_ranking(split, split.train, newest_per_user(split, split.train), 4, _centred_log_pop(split), seed=0,
                      like_negatives=2)
    scale, offset = fit["like_calibration"]
    assert torch.equal(fit["R"], h.rec_user_factors.detach()) and float(h.like_factor_scale) == pytest.approx(scale)
    assert 0.05 < scale < 2 and scale != 1.0, scale
    u, i = torch.tensor([5, -1]), torch.tensor([7, 7])
    with torch.no_grad():
        like = h(torch.zeros(2, 8), None, i, u)["like_logit"]
        scores = h.item_bias + h.rec_user_factors[5] @ h.rec_item_factors.T
        # known user: log p(i | u) under the recommendation softmax + log(N / k), calibrated on the fit's hold-out
        raw = float(torch.log_softmax(scores, 0)[7]) + math.log(ds.num_items / 2)
        assert like[0] == pytest.approx(scale * raw + offset, abs=1e-4)
        # unknown user: the same item's popularity prior, shifted by the users' mean normaliser
        assert like[1] == pytest.approx(float(h.like.bias + h.item_like_offset[7]), abs=1e-6)
        assert heads[0](torch.zeros(1, 8), None, i[:1], u[:1])["like_logit"][0] == pytest.approx(
            float(torch.log_softmax(heads[0].item_bias, 0)[7]) + math.log(ds.num_items / 2), abs=1e-4)
    specs = build_specs(split, VALID, ("like",), ExampleOptions(negatives_per_positive=2))
    users = torch.as_tensor(ds.user_idx[specs.interaction], dtype=torch.long)
    items = torch.as_tensor(specs.item, dtype=torch.long)
    auc, z = {}, {}
    with torch.no_grad():
        for d, hd in heads.items():
            z[d] = hd(torch.zeros(len(items), 8), None, items, users)["like_logit"]
            auc[d] = metrics.auc(z[d].numpy(), specs.label)
    # synthetic tastes follow categories, not popularity: the factors carry the signal (0.51 -> 0.60)
    assert auc[4] > 0.57 and auc[4] > auc[0] + 0.05, auc
    # the calibration fitted on the training hold-out also lowers the validation log-loss (here a little:
    # 0.6205 -> 0.6198; on Last.fm-2k's 3,766 validation examples 0.511 -> 0.445: python -m mtrec.bench prior)
    labels = torch.as_tensor(specs.label, dtype=torch.float32)
    raw = (z[4] - offset) / scale
    calibrated, uncalibrated = (float(F.binary_cross_entropy_with_logits(v, labels)) for v in (z[4], raw))
    assert calibrated < uncalibrated, (calibrated, uncalibrated)


def test_prior_bench_scores_every_prior_on_the_evaluations_examples(capsys, monkeypatch):
    from mtrec.bench.__main__ import main as bench_main
    from mtrec.bench.prior import prior_rows
    from mtrec.data.splits import TRAIN, VALID
    from mtrec.tasks import ExampleOptions, build_specs

    split = make_split(load_synthetic(num_users=200, num_items=150, seed=3, explicit=False), "leave_one_out")
    rows = prior_rows(split, collab_dim=4, negatives=2)
    assert [r["prior"] for r in rows] == ["popularity softmax, no factors",
                                          "collaborative factors (d=4), raw log-odds",
                                          "collaborative factors (d=4), calibrated"]
    specs = build_specs(split, VALID, ("like",), ExampleOptions(negatives_per_positive=2))
    assert rows[0]["valid/examples"] == len(specs.label) == 3 * 200  # one held-out item + 2 negatives per user
    # popularity's prior ranks by training counts: its AUC is that of the counts themselves
    counts = np.bincount(split.dataset.item_idx[split.train], minlength=split.dataset.num_items)
    assert rows[0]["valid/auc"] == pytest.approx(metrics.auc(np.log1p(counts[specs.item]), specs.label), abs=1e-9)
    # the calibration is monotone: same AUC as the raw log-odds, lower log-loss
    assert rows[2]["valid/auc"] == pytest.approx(rows[1]["valid/auc"])
    assert rows[2]["valid/log_loss"] < rows[1]["valid/log_loss"]
    # the training split's like rows: in-sample for the fitted factors, which look better there
    train = build_specs(split, TRAIN, ("like",), ExampleOptions(negatives_per_positive=2))
    assert rows[0]["train/examples"] == len(train.label) > rows[0]["valid/examples"]
    assert rows[2]["train/log_loss"] < rows[2]["valid/log_loss"] and rows[2]["train/auc"] > rows[2]["valid/auc"]
    # scored in chunks of rows (the training role is large): the chunk size changes nothing
    monkeypatch.setattr("mtrec.bench.prior.CHUNK", 7)
    for chunked, whole in zip(prior_rows(split, collab_dim=4, negatives=2), rows, strict=True):
        assert chunked.keys() == whole.keys() and chunked["prior"] == whole["prior"]
        assert {k: v for k, v in chunked.items() if k != "prior"} == pytest.approx(
            {k: v for k, v in whole.items() if k != "prior"}, abs=1e-6)
    assert [r["prior"] for r in prior_rows(split, collab_dim=0)] == ["popularity softmax, no factors"]
    # --stack-tail: the tail's like rows, scored by priors fitted without them (out-of-sample, as validation)
    from mtrec.model.stacking import tail_mask

    stacked = prior_rows(split, collab_dim=4, negatives=2, stack_tail=3)
    tail = tail_mask(split, 3)
    assert stacked[0]["tail/examples"] == int(tail[train.interaction].sum()) == 3 * int(tail.sum())  # a positive + 2 negatives each
    assert stacked[2]["tail/log_loss"] > stacked[2]["train/log_loss"] and stacked[2]["tail/auc"] < stacked[2]["train/auc"]
    assert {k: v for k, v in stacked[2].items() if not k.startswith("tail/")} == rows[2]
    assert bench_main(["prior", "--dataset", "nope"]) == 2
    assert "unknown data set 'nope'" in capsys.readouterr().err


def test_rerank_ceiling_by_hand_and_the_prior_bench_rerank_table(capsys):
    """`bench prior --rerank`: recall@K, a perfect and a random re-ranker's NDCG@10 of the prior's top K,
    checked by hand; the rows come from the prior alone's full-catalog ranks (its NDCG@10 is theirs)."""
    from mtrec.bench.__main__ import main as bench_main
    from mtrec.bench.baselines import PriorAlone, _role_arrays, full_catalog_ranks
    from mtrec.bench.prior import rerank_ceiling, rerank_rows
    from mtrec.data.splits import TEST

    ranks = np.array([0, 5, 15, 30, 100])
    top20, top10 = rerank_ceiling(ranks, [20, 10], target=0.13)
    # 3 of 5 targets inside the top 20; a random place among 20: 0.6 * (1/20) * sum_{p<10} 1/log2(p + 2)
    # = 0.6 * 4.543559 / 20; the prior's own order: ranks 0 and 5 score 1 and 1/log2(7), rank 15 scores 0
    assert top20["recall"] == top20["perfect"] == 0.6
    assert top20["random"] == pytest.approx(0.6 * 4.543559 / 20, abs=1e-6)
    assert top20["own"] == pytest.approx((1 + 1 / math.log2(7) + 0) / 3)
    assert top20["needed"] == pytest.approx(0.13 / 0.6)
    # K = 10: 2 inside; random among 10 places; the own discount's mean times recall is the NDCG@10 itself
    assert top10["recall"] == 0.4 and top10["random"] == pytest.approx(0.4 * 4.543559 / 10, abs=1e-6)
    assert top10["own"] * top10["recall"] == pytest.approx(metrics.ndcg(ranks, 10))
    assert rerank_ceiling(ranks, [20])[0]["needed"] is None
    with pytest.raises(ValueError, match="K = 5 is below"):  # targets at ranks 5-9 would stay in NDCG@10
        rerank_ceiling(ranks, [5])

    split = make_split(load_synthetic(num_users=120, num_items=80, seed=3, explicit=False), "leave_one_out")
    out = rerank_rows(split, [10, 40], collab_dim=4, target=0.5)
    prior = PriorAlone(4, 4.0, 1).fit(split)
    users, items, _ = _role_arrays(split, TEST)
    expected = full_catalog_ranks(prior, split, users, items, TEST)
    assert out["test"]["users"] == 120 and out["test"]["ndcg@10"] == pytest.approx(metrics.ndcg(expected, 10))
    recalls = [(expected < 10).mean(), (expected < 40).mean()]
    assert [r["recall"] for r in out["test"]["rows"]] == pytest.approx(recalls)
    assert bench_main(["prior", "--dataset", "synthetic", "--collab-dim", "4", "--rerank", "10", "40",
                       "--target", "0.5"]) == 0
    table = capsys.readouterr().out
    assert "Re-ranking the recommendation prior's top K on synthetic" in table and "| 40 |" in table
    with pytest.raises(SystemExit):
        bench_main(["prior", "--dataset", "synthetic", "--target", "0.13"])  # --target without --rerank
    with pytest.raises(SystemExit):
        bench_main(["prior", "--dataset", "synthetic", "--rerank", "5"])


def test_prior_bench_seeds_table_by_hand(capsys):
    """`bench prior --seeds`: each seed's figures are the sequence network alone's as the bench's prior
    alone ranks (PriorAlone with only the sequential prior), the ensemble ranks by the summed scores,
    the summary's mean and paired differences are those of the per-user rows."""
    from mtrec.bench.__main__ import main as bench_main
    from mtrec.bench.baselines import PriorAlone, _role_arrays, full_catalog_ranks
    from mtrec.bench.prior import sequence_seed_rows, seeds_markdown
    from mtrec.data.splits import TEST
    from mtrec.model.sequential import history_inputs
    from mtrec.ranking import Seen, rank_targets

    split = make_split(load_synthetic(num_users=50, num_items=30, seed=4, explicit=False), "leave_one_out")
    out = sequence_seed_rows(split, [0, 1], sequence_len=5)
    users, items, _ = _role_arrays(split, TEST)
    alone = [PriorAlone(0, ranking_prior="sequence", sequence_len=5).fit(split, seed=s) for s in (0, 1)]
    ranks = [full_catalog_ranks(p, split, users, items, TEST) for p in alone]
    for row, r in zip(out["seeds"], ranks):
        assert row["test"]["ndcg@10"] == pytest.approx(metrics.ndcg(r, 10))
        assert row["test"]["hr@10"] == pytest.approx((r < 10).mean())
    per_user = (np.asarray(metrics.ndcg_rows(ranks[0], 10)) + np.asarray(metrics.ndcg_rows(ranks[1], 10))) / 2
    np.testing.assert_allclose(out["per_user"]["test"], per_user)
    hist = history_inputs(split, users, TEST, 5)
    summed = sum(p.heads.sequence(hist)[:, -1] @ p.heads.sequence.catalog().T for p in alone).detach()
    row_of = {int(u): r for r, u in enumerate(users)}
    ens = rank_targets(lambda b: summed[[row_of[int(u)] for u in b]], users, items,
                       Seen.before(split, TEST, dense=False), num_items=split.dataset.num_items)
    assert out["ensemble"]["test"]["ndcg@10"] == pytest.approx(metrics.ndcg(ens, 10))
    assert out["users"]["test"] == len(users) == 50
    # the text start: another fit, and the paired difference is that of the seed-averaged rows
    enc = torch.randn(30, 12, generator=torch.Generator().manual_seed(0))
    texted = sequence_seed_rows(split, [0, 1], sequence_len=5, text=enc)
    assert texted["seeds"][0]["holdout"] != out["seeds"][0]["holdout"] or texted["seeds"][0]["test"] != out["seeds"][0]["test"]
    table = seeds_markdown({"random start": out, "text start": texted}, "synthetic")
    mean = metrics.paired_bootstrap(texted["per_user"]["test"], out["per_user"]["test"])
    assert f"- text start minus random start, test NDCG@10 (paired over 50 users): seed-averaged {mean['diff']:+.4f}" in table
    v = [row["test"]["ndcg@10"] for row in out["seeds"]]
    assert f"- random start, test: NDCG@10 over 2 seeds mean {np.mean(v):.4f}, sd {np.std(v, ddof=1):.4f}" in table
    assert bench_main(["prior", "--dataset", "synthetic", "--collab-dim", "4", "--seeds", "0", "--sequence-len", "5"]) == 0
    assert "| random start | 0 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_main(["prior", "--dataset", "synthetic", "--sequence-text", "bundled:minilm-l6"])  # without --seeds
    # another fit setting (--sequence-fit): the refit against the runs' fit (the best epoch's weights kept)
    kept = sequence_seed_rows(split, [0], sequence_len=5, fit={"refit": True})
    assert kept["seeds"][0]["test"] != out["seeds"][0]["test"] or kept["per_user"]["valid"].tolist() != out["per_user"][
        "valid"].tolist()
    assert bench_main(["prior", "--dataset", "synthetic", "--collab-dim", "4", "--seeds", "0", "--sequence-len", "5",
                       "--sequence-fit", "refit=true"]) == 0
    printed = capsys.readouterr().out
    assert "| the runs' fit | 0 |" in printed and "| refit=True | 0 |" in printed
    assert "- refit=True minus the runs' fit, test NDCG@10" in printed
    for bad in ("refit=maybe", "patience=three", "depth=3", "refit"):
        with pytest.raises(SystemExit):
            bench_main(["prior", "--dataset", "synthetic", "--seeds", "0", "--sequence-fit", bad])
        assert "--sequence-fit" in capsys.readouterr().err


def test_prior_bench_text_term_fits_on_validation_and_scores_test(capsys, tmp_path):
    """`bench prior --text`: the like prior with the text term stacked on it, fitted on validation. With
    the items' categories as their "encodings" (synthetic users pick items by category taste), the
    term is weighted up and improves on the prior; --random-init needs --text."""
    from mtrec.bench.__main__ import main as bench_main
    from mtrec.bench.prior import text_rows

    split = make_split(load_synthetic(num_users=200, num_items=150, seed=3, explicit=False), "leave_one_out")
    ds = split.dataset
    enc = torch.zeros(ds.num_items, len(ds.categories))
    for i, item in enumerate(ds.items):
        enc[i, [ds.category_index[c] for c in item.categories]] = 1.0
    out = text_rows(split, enc, length=5, collab_dim=4, negatives=2)
    assert out["valid"]["examples"] == out["test"]["examples"] == 3 * 200
    assert out["weights"][1] > 0  # same-category history predicts the held-out item
    # fitted on validation by likelihood, (1, 0, 0) among the candidates: no worse there than the prior
    assert out["valid"]["with text log_loss"] <= out["valid"]["prior log_loss"] + 1e-9
    assert out["test"]["with text auc"] > out["test"]["prior auc"]
    i = out["test interval"]
    assert i["low"] <= i["diff"] <= i["high"] and i["n"] == 200
    # --against: a bench row holding the prior + text term's own scores differs by 0, one holding them
    # negated by 1 - 2 * AUC (its AUC is 1 - AUC)
    import json

    from mtrec.bench.prior import against

    rec = {k: np.asarray(v).tolist() for k, v in out["test records"].items()}
    flipped = dict(rec, like_score=(-out["test records"]["like_score"]).tolist())
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"split": {}, "baselines": {"same": {"records": rec}, "flipped": {"records": flipped}},
                                "mtrec": {}}))
    same, flip = against(out, [f"{path}:same", f"{path}:flipped"])
    assert "+0.0000 [+0.0000, +0.0000]" in same and "over 200 users" in same
    # (rows are matched by user and item: a negative drawn twice for a user counts once there)
    assert float(flip.split("term: ")[1].split(" ")[0]) == pytest.approx(1 - 2 * out["test"]["with text auc"], abs=2e-3)
    with pytest.raises(SystemExit):
        bench_main(["prior", "--dataset", "synthetic", "--random-init"])
    assert "--random-init and --against go with --text" in capsys.readouterr().err
