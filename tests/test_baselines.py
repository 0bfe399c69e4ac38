"""Baselines on small data with known answers: recovered biases, falling losses, hand-computed scores."""

import numpy as np
import pytest
import torch

from mtrec.bench.baselines import BiasBaseline, BiasedMF, BPRMF, ItemKNN, Popularity, evaluate_baseline
from mtrec.data import Interaction, Item, RecDataset, User
from mtrec.data.splits import TRAIN, VALID, leave_one_out
from mtrec.metrics import target_ranks
from mtrec.ranking import Seen


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests share two cores with other jobs; one thread keeps timings stable and results exact.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _columnar(name, users, items, values, n_users, n_items, explicit=True, rating_scale=None, seed=0):
    """A RecDataset from index columns, with random distinct timestamps (so LOO picks random targets)."""
    ts = np.random.default_rng(seed).permutation(len(users))
    return RecDataset(
        name, [User(str(u)) for u in range(n_users)], [Item(str(i), f"item {i}") for i in range(n_items)],
        users, items, values, ts, explicit=explicit, rating_scale=rating_scale,
    )


def _bias_data(seed=0, n_users=150, n_items=80, density=0.4, noise=0.3):
    """Ratings = 3.5 + b_u + b_i + N(0, noise^2) on a random 40% of cells."""
    rng = np.random.default_rng(seed)
    b_u, b_i = rng.normal(0, 0.5, n_users), rng.normal(0, 0.5, n_items)
    u, i = np.nonzero(rng.random((n_users, n_items)) < density)
    r = 3.5 + b_u[u] + b_i[i] + rng.normal(0, noise, len(u))
    return _columnar("bias", u, i, r, n_users, n_items), b_u, b_i


def test_bias_baseline_recovers_known_biases():
    ds, b_u, b_i = _bias_data()
    split = leave_one_out(ds)
    model = BiasBaseline(reg_user=1.0, reg_item=1.0).fit(split, max_epochs=50)
    # biases are identified up to a shared shift (absorbed by mu): compare centred values
    est_i, est_u = model.b_i - model.b_i.mean(), model.b_u - model.b_u.mean()
    rms = lambda err: np.sqrt(np.mean(err**2))
    assert rms(est_i - (b_i - b_i.mean())) < 0.08  # ~60 ratings per item: s.e. 0.3/sqrt(60) ~ 0.04
    assert rms(est_u - (b_u - b_u.mean())) < 0.1  # ~32 per user: s.e. ~0.055
    assert np.corrcoef(est_i, b_i)[0, 1] > 0.98
    valid = evaluate_baseline(model, split, "valid")
    assert 0.25 < valid["rmse"] < 0.36  # near the noise level 0.3
    assert model.info["stopped_early"] and model.info["epochs_run"] < 50  # converged before 50 sweeps
    # far better than the global mean, which misses the biases' sd of ~0.7
    assert evaluate_baseline(Popularity().fit(split), split, "valid")["rmse"] > 0.6


def _low_rank_data(seed=0, n_users=120, n_items=60, rank=3):
    rng = np.random.default_rng(seed)
    p, q = rng.normal(0, 0.6, (n_users, rank)), rng.normal(0, 0.6, (n_items, rank))
    u, i = np.nonzero(rng.random((n_users, n_items)) < 0.5)
    r = 3.0 + (p[u] * q[i]).sum(1) + rng.normal(0, 0.2, len(u))
    return _columnar("lowrank", u, i, r, n_users, n_items)


def test_biased_mf_loss_falls_beats_biases_and_is_deterministic():
    split = leave_one_out(_low_rank_data())
    mf = BiasedMF(dim=8, lr=0.02, reg=0.01, batch_size=512).fit(split, seed=0, max_epochs=40, patience=4)
    losses = mf.info["train_loss"]
    assert len(losses) == mf.info["epochs_run"] == len(mf.info["valid"])
    assert losses[-1] < 0.5 * losses[0]
    assert 1 <= mf.info["best_epoch"] <= mf.info["epochs_run"]
    bias_rmse = evaluate_baseline(BiasBaseline().fit(split), split, "valid")["rmse"]
    assert evaluate_baseline(mf, split, "valid")["rmse"] < 0.7 * bias_rmse  # the interaction term is learnt
    again = BiasedMF(dim=8, lr=0.02, reg=0.01, batch_size=512).fit(split, seed=0, max_epochs=40, patience=4)
    users, items = np.arange(10), np.arange(10)
    assert np.array_equal(mf.predict_ratings(users, items), again.predict_ratings(users, items))


def test_early_stopping_keeps_the_best_epoch():
    split = leave_one_out(_low_rank_data(n_users=60, n_items=40))
    # no regularisation, a large model and a high learning rate: validation RMSE soon rises
    mf = BiasedMF(dim=32, lr=0.05, reg=0.0, batch_size=256).fit(split, max_epochs=200, patience=3)
    info = mf.info
    assert info["stopped_early"] and info["epochs_run"] == info["best_epoch"] + 3 < 200
    assert info["best_valid"] == min(info["valid"])
    # the restored parameters are the best epoch's: evaluating now gives the best RMSE again
    assert evaluate_baseline(mf, split, VALID)["rmse"] == pytest.approx(info["best_valid"])


def test_epoch_limit_reached_is_marked_and_early_stop_is_not():
    split = leave_one_out(_low_rank_data(n_users=60, n_items=40))
    capped = BiasedMF(dim=8, lr=0.005, reg=0.01).fit(split, max_epochs=3, patience=10).info
    assert capped["epochs_run"] == 3 and capped["epoch_capped"] and not capped["stopped_early"]
    early = BiasedMF(dim=32, lr=0.05, reg=0.0, batch_size=256).fit(split, max_epochs=200, patience=3).info
    assert early["stopped_early"] and not early["epoch_capped"]


def _cluster_data(seed=0, n_users=80, n_items=40, groups=4):
    """Implicit data: each user consumes 8 random items of its group's block of 10 items."""
    rng = np.random.default_rng(seed)
    size = n_items // groups
    u = np.repeat(np.arange(n_users), 8)
    i = np.concatenate([(g % groups) * size + rng.choice(size, 8, replace=False) for g in range(n_users)])
    return _columnar("clusters", u, i, np.ones(len(u)), n_users, n_items, explicit=False)


def test_bpr_loss_falls_and_ranks_within_the_cluster():
    split = leave_one_out(_cluster_data())
    bpr = BPRMF(dim=8, lr=0.05, reg=1e-4, batch_size=256).fit(split, seed=0, max_epochs=30, patience=5)
    info = bpr.info
    assert info["train_loss"][-1] < 0.5 * info["train_loss"][0]
    assert len(info["valid"]) == info["epochs_run"] and info["best_valid"] == max(info["valid"])
    test = evaluate_baseline(bpr, split, "test")
    # a target is one of the <= 2-3 unseen items of its block among 40 - 6 candidates: random HR@10 ~ 0.3
    assert test["hr@10"] > 0.9 and "rmse" not in test
    with pytest.raises(ValueError, match="implicit"):
        BiasBaseline().fit(split)


def test_popularity_ranks_most_popular_unseen_item_first():
    # item counts in training: a=3, b=2, c=1 (+ valid/test items d, e). User "1" has seen a in training,
    # so for validation the most popular unseen item is b.
    rows = [("1", "a", 1), ("1", "d", 2), ("1", "e", 3),
            ("2", "a", 1), ("2", "b", 2), ("2", "d", 3), ("2", "e", 4),
            ("3", "a", 1), ("3", "b", 2), ("3", "c", 3), ("3", "d", 4), ("3", "e", 5)]
    ds = RecDataset.from_records(
        "pop", [User(u) for u in "123"], [Item(i, i) for i in "abcde"],
        [Interaction(u, i, rating=4.0, timestamp=t) for u, i, t in rows], rating_scale=(1, 5),
    )
    split = leave_one_out(ds)
    pop = Popularity().fit(split)
    assert pop.counts.tolist() == [3, 2, 1, 0, 0]
    scores = pop.score_all([0])
    mask = Seen.before(split, VALID).rows([0]).numpy()
    assert mask[0].tolist() == [True, False, False, False, False]
    best = np.argmax(np.where(mask, -np.inf, scores), axis=1)
    assert best.tolist() == [1]  # b
    # user "1"'s validation target d (count 0) ties with e: pessimistic rank = b, c, e ahead -> 3
    assert target_ranks(scores, [3], mask).tolist() == [3]
    assert pop.predict_ratings([0], [0]).tolist() == [4.0]  # the global training mean


def test_item_knn_hand_computed_scores():
    # Training matrix (items 0-3); each user then has valid item 4 and test item 5 (never in training):
    #   u0: 0, 1   u1: 0, 1, 2   u2: 1, 2   u3: 3
    # item user counts: |U0|=2, |U1|=3, |U2|=2, |U3|=1
    # cos(0,1) = 2/sqrt(2*3) = 0.8165, cos(0,2) = 1/sqrt(2*2) = 0.5, cos(1,2) = 2/sqrt(3*2) = 0.8165,
    # item 3 shares no user with any item -> 0.
    train = {0: [0, 1], 1: [0, 1, 2], 2: [1, 2], 3: [3]}
    u, i = [], []
    for user, items in train.items():
        u += [user] * (len(items) + 2)
        i += items + [4, 5]
    ts = np.concatenate([np.arange(len(v) + 2) for v in train.values()])  # 4 then 5 come last
    ds = RecDataset("knn", [User(str(x)) for x in range(4)], [Item(str(x), str(x)) for x in range(6)],
                    np.array(u), np.array(i), np.ones(len(u)), ts, explicit=False)
    split = leave_one_out(ds)
    assert sorted(ds.item_idx[split.train].tolist()) == sorted(sum(train.values(), []))
    c01, c02, c12 = 2 / np.sqrt(6), 0.5, 2 / np.sqrt(6)
    full = ItemKNN(neighbours=5).fit(split)
    # u0 (items 0, 1): row 0 + row 1 = [0, c01, c02, 0] + [c01, 0, c12, 0] = [c01, c01, c02 + c12, 0]
    assert full.score_all([0])[0] == pytest.approx([c01, c01, c02 + c12, 0, 0, 0])
    assert full.score_all([3])[0] == pytest.approx([0] * 6)
    # one neighbour per item: row 0 keeps item 1; row 1 ties (0 and 2 at 0.8165) -> lower index 0;
    # row 2 keeps item 1. u2 (items 1, 2): [c01, 0, 0, 0] + [0, c12, 0, 0]
    top1 = ItemKNN(neighbours=1).fit(split)
    assert top1.score_all([2])[0] == pytest.approx([c01, c12, 0, 0, 0, 0])
    assert top1.info["hparams"] == {"neighbours": 1, "chunk": 1024}


def test_like_probability_is_calibrated_on_training():
    ds, _, _ = _bias_data(seed=1)
    split = leave_one_out(ds)
    model = BiasBaseline().fit(split)
    tr = split.train
    p = model.like_proba(ds.user_idx[tr], ds.item_idx[tr])
    # Platt scaling with an intercept matches the training like-rate on average
    assert p.mean() == pytest.approx((ds.values[tr] >= 4.0).mean(), abs=0.01)
    out = evaluate_baseline(model, split, "test")
    assert out["auc"] > 0.75 and out["n"] == 150 and 0 < out["log_loss"] < 0.69
    assert split.role[tr].max() == TRAIN


def test_two_cpu_threads_fit_to_the_same_bits_twice():
    # The backward of advanced indexing (P[u]: index_put_ with accumulate) sums in a thread-dependent
    # order on a multi-threaded CPU, so a same-seed refit drifted in the 9th digit and benchmark
    # reruns differed; the models and the collaborative fits use index_select instead.
    from mtrec.model.collaborative import fit_rating, newest_per_user

    from mtrec.data.synthetic import load_synthetic

    split = leave_one_out(load_synthetic(num_users=300, num_items=80, seed=1))
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        mf = [BiasedMF(dim=32, batch_size=1024).fit(split, max_epochs=2, patience=5).P for _ in range(3)]
        bpr = [BPRMF(dim=32, batch_size=1024).fit(split, max_epochs=1, patience=5).P for _ in range(3)]
        holdout = newest_per_user(split, split.train)
        cf = [fit_rating(split, split.train, holdout, 32, 4.0, epochs=2)["P"] for _ in range(3)]
    finally:
        torch.set_num_threads(old)
    for runs in (mf, bpr, cf):
        assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_tfidf_and_content_knn_hand_computed():
    from mtrec.bench.baselines import ContentKNN, item_words, tfidf_matrix

    items = [Item("a", "Alien Space", categories=("Sci-Fi",)), Item("b", "Space Cowboy", categories=("Western",)),
             Item("c", "Cowboy", categories=("Western",)), Item("d", "Shop product d", categories=("Books",),
                                                                described=False)]
    assert item_words(items[3]) == ["cat:books"]  # no id as a word for an item without descriptive text
    t = tfidf_matrix(items).toarray()
    # 4 items; df: alien 1, space 2, cat:sci-fi 1, cowboy 2, cat:western 2, cat:books 1
    idf = lambda df: np.log(5 / (1 + df)) + 1
    a = np.array([idf(1), idf(2), idf(1)])  # alien, space, cat:sci-fi (a category is one word)
    np.testing.assert_allclose(np.sort(t[0][t[0] > 0]), np.sort(a / np.linalg.norm(a)), rtol=1e-6)
    assert np.allclose(np.linalg.norm(t, axis=1), 1.0)
    # user 0 history: a (train), b (valid), c (test); user 1: c (train), b (valid), a (test)
    rows = [("0", "a", 1), ("0", "b", 2), ("0", "c", 3), ("1", "c", 1), ("1", "b", 2), ("1", "a", 3),
            ("2", "d", 1), ("2", "b", 2), ("2", "c", 3)]
    ds = RecDataset.from_records("content", [User(u) for u in "012"], items,
                                 [Interaction(u, i, rating=4.0, timestamp=s) for u, i, s in rows], rating_scale=(1, 5))
    split = leave_one_out(ds)
    model = ContentKNN().fit(split)
    np.testing.assert_allclose(model.score_all([0], role="valid")[0], t @ t[0], rtol=1e-6)  # profile: a
    np.testing.assert_allclose(model.score_all([0], role="test")[0], t @ (t[0] + t[1]), rtol=1e-6)  # a + b
    recent = ContentKNN(recent=1).fit(split)
    np.testing.assert_allclose(recent.score_all([1], role="test")[0], t @ t[1], rtol=1e-6)  # newest only: b
    # u1's test target a shares "space" with its valid item b: ranked above d (nothing shared)
    out = evaluate_baseline(recent, split, "test")
    assert out["n"] == 3 and 0 < out["ndcg@10"] <= 1
    # on explicit data too, a ranking-only model scores the language model's like rows by its ranking score
    from mtrec.bench.baseline_suite import like_rows
    from mtrec.bench.baselines import baseline_records
    from mtrec.tasks import ExampleOptions

    rows = like_rows(split, np.arange(3), ExampleOptions(like_threshold=4.0))
    rec = baseline_records(recent, split, "test", users=np.arange(3), like_rows=rows)
    assert rec["like_user"].tolist() == [0, 1, 2] and rec["like_label"].all()  # each test target, rated 4
    want = [recent.score_all([u], role="test")[0][i] for u, i in zip(rec["like_user"], rec["like_item"])]
    np.testing.assert_allclose(rec["like_score"], want, rtol=1e-12)


def test_like_ratio_is_the_users_training_share_of_likes():
    from mtrec.bench.baselines import LikeRatio

    ds, _, _ = _bias_data(seed=2)
    split = leave_one_out(ds)
    model = LikeRatio().fit(split)
    tr = split.train
    u0 = tr[ds.user_idx[tr] == 0]
    assert model.ratio[0] == pytest.approx((ds.values[u0] >= 4.0).mean())
    out = evaluate_baseline(model, split, "test")
    assert set(out) == {"n", "users_sha256", "auc"} and 0.5 < out["auc"] < 1  # ranks nothing, rates nothing
    implicit = _columnar("imp", ds.user_idx, ds.item_idx, ds.values, 150, 80, explicit=False)
    with pytest.raises(ValueError, match="implicit feedback only"):
        LikeRatio().fit(leave_one_out(implicit))


def test_prior_alone_is_the_heads_priors_without_the_query():
    from mtrec.bench.baselines import PriorAlone
    from mtrec.model.build import build_heads

    ds, _, _ = _bias_data(seed=3, n_users=60, n_items=40)
    ds.rating_scale = (float(ds.values.min()), float(ds.values.max()))  # the heads need a scale
    split = leave_one_out(ds)
    prior = PriorAlone(collab_dim=4).fit(split)
    # the same heads training builds, with a real item table and hidden width: their item_prior
    # (bias + collaborative) is what the prior alone ranks by; the query's cosine term is left out
    heads = build_heads(ds, torch.randn(40, 8), split.train, 8, 4.0, collab_dim=4, split=split, seed=0).eval()
    users = torch.arange(5)
    with torch.no_grad():
        out = heads(torch.randn(5, 8), None, None, users, with_prior=True)
    np.testing.assert_allclose(prior.score_all(users.numpy()), out["item_prior"].numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(out["item_logits"].numpy(), out["item_prior"].numpy(), atol=1e-3)
    test = evaluate_baseline(prior, split, "test")
    assert {"rmse", "auc", "log_loss", "ndcg@10"} <= set(test) and test["rmse"] < 1.0


def test_a_rating_baseline_on_implicit_data_scores_like_rows_without_a_rating_probability():
    """Last.fm's bench crashed here: Popularity's Platt probability reads predicted ratings, which
    implicit data has not; its like score (the item's popularity) is still there."""
    from mtrec.bench.baselines import baseline_records
    from mtrec.data.splits import TEST
    from mtrec.data.synthetic import load_synthetic

    split = leave_one_out(load_synthetic(num_users=30, num_items=40, explicit=False))
    model = Popularity().fit(split)
    u, i = split.dataset.user_idx[split.role == TEST], split.dataset.item_idx[split.role == TEST]
    label = np.arange(len(u)) % 2 == 0
    rec = baseline_records(model, split, TEST, like_rows=(u, i, label))
    assert "like_proba" not in rec and "rating_pred" not in rec
    counts = np.bincount(split.dataset.item_idx[split.role == TRAIN], minlength=split.dataset.num_items)
    assert np.array_equal(np.argsort(rec["like_score"], kind="stable"), np.argsort(counts[i], kind="stable"))
