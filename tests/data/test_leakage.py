"""Leakage tests on every real data set (movielens-100k, lastfm-2k, ciao, epinions).

The rules under test (DESIGN.md "splits" and "ties in time", mtrec/data/splits.py, context.py):
1. no validation/test interaction is context for a training target (own history or social);
2. a target's own history is exactly what precedes it in the user's order; leave-one-out puts the
   last interaction in test and the second-to-last in validation (users with >= 3 interactions);
3. other users' interactions (friends, popularity) come from the training split only and, where
   timed, strictly before the target's timestamp;
4. order: chronological with ties by item id ascending (timed), seeded random per user (untimed);
5. indices follow sorted ids, never the order of appearance;
6. the examples built by `ExampleFactory` obey the same rules.

Checks over all interactions are vectorised; per-target checks (social context, examples) run on a
seeded sample. A data set is skipped only when its folder is absent from MTREC_DATA_DIR.
"""

from __future__ import annotations

import functools
from collections import defaultdict

import numpy as np
import pytest
from data_helpers import load_shared, shared_data_root

from mtrec.data import RecDataset, SocialEdge, sorted_ids
from mtrec.data.context import ContextIndex
from mtrec.data.splits import MIN_INTERACTIONS, ROLE_NAMES, TEST, TRAIN, VALID, Split, make_split
from mtrec.tasks import ExampleFactory, ExampleOptions, build_specs

FOLDERS = {
    "movielens-100k": "movielens-100k",
    "lastfm-2k": "lastfm-hetrec2011-2k",
    "ciao": "ciao-epinions-tang2012",
    "epinions": "ciao-epinions-tang2012",
}
DATASETS = list(FOLDERS)
SOCIAL = ["lastfm-2k", "ciao", "epinions"]
UNTIMED = ["lastfm-2k", "ciao", "epinions"]
METHODS = ["leave_one_out", "ratio"]
ROLES = (TRAIN, VALID, TEST)


def _ds(name: str) -> RecDataset:
    return load_shared(name, FOLDERS[name])


@functools.cache
def _cached_split(name: str, method: str, seed: int) -> Split:
    return make_split(_ds(name), method, seed=seed)


def _split(name: str, method: str = "leave_one_out", seed: int = 0) -> Split:
    _ds(name)  # skips when the folder is absent
    return _cached_split(name, method, seed)


def _same_second_pairs(ds: RecDataset) -> tuple[np.ndarray, np.ndarray]:
    """Interactions (a, b) of different users in the same second (ML-100K has 157 such neighbours)."""
    o = np.lexsort((ds.user_idx, ds.timestamps))
    same = (np.diff(ds.timestamps[o]) == 0) & (np.diff(ds.user_idx[o]) != 0)
    return o[:-1][same], o[1:][same]


@functools.cache
def _ml_with_friends() -> RecDataset:
    """ML-100K's interactions (timed) plus a seeded random directed friend graph (6 edges a user),
    plus edges both ways between users who rated something in the same second (to test "strictly")."""
    base = _ds("movielens-100k")
    n = base.num_users
    rng = np.random.default_rng(12345)
    src = np.repeat(np.arange(n), 6)
    dst = rng.integers(0, n - 1, size=len(src))
    dst = dst + (dst >= src)  # no self edges
    a, b = (base.user_idx[x].astype(np.int64) for x in _same_second_pairs(base))
    src, dst = np.concatenate([src, a, b]), np.concatenate([dst, b, a])
    pairs = np.unique(src * n + dst)  # no repeated edges
    return RecDataset(
        "movielens-100k+friends", base.users, base.items, base.user_idx, base.item_idx, base.values,
        base.timestamps, explicit=True, social_src=pairs // n, social_dst=pairs % n,
        categories=base.categories, rating_scale=base.rating_scale,
    )


@functools.cache
def _ml_friends_split(method: str) -> Split:
    return make_split(_ml_with_friends(), method)


def _sample_by_role(sp: Split, per_role: int, seed: int, roles=ROLES) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for r in roles:
        idx = np.flatnonzero(sp.role == r)
        out.append(rng.choice(idx, size=min(per_role, len(idx)), replace=False))
    return np.concatenate(out)


def _item_ids(ds: RecDataset) -> np.ndarray:
    return np.array([int(it.id) for it in ds.items], dtype=np.int64)


def _prefix_max_role(sp: Split) -> tuple[np.ndarray, np.ndarray]:
    """Along `seq`: each interaction's role and the highest role among the interactions before it
    in its user's order (-1 when there are none)."""
    user = sp.dataset.user_idx[sp.seq].astype(np.int64)
    role = sp.role[sp.seq].astype(np.int64)
    # users are contiguous and ascending along seq, so user*3 + role makes a running max per user
    running = np.maximum.accumulate(user * 3 + role)
    before = np.concatenate([[-1], running[:-1]]) - user * 3
    return role, np.where(sp.position[sp.seq] > 0, before, -1)


# ---- 1 + 2: own history: train targets see only training; history strictly precedes ----------
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", DATASETS)
def test_own_history_never_holds_valid_or_test_for_training_targets(name: str, method: str):
    sp = _split(name, method)
    ds = sp.dataset
    n = ds.num_interactions
    counts = np.diff(sp.offsets)
    # seq is a permutation grouped by user (ascending), and `position` is the place in it
    assert np.array_equal(np.sort(sp.seq), np.arange(n))
    assert np.array_equal(ds.user_idx[sp.seq], np.repeat(np.arange(ds.num_users), counts))
    assert np.array_equal(sp.seq[sp.offsets[ds.user_idx] + sp.position], np.arange(n))

    role, before = _prefix_max_role(sp)
    # every interaction before a TRAIN target (= its whole own history) is TRAIN ...
    assert (before[role == TRAIN] <= TRAIN).all(), "a training target's history holds valid/test"
    # ... and in general roles never go back along a user's order: TRAIN* VALID* TEST*
    assert (before <= role).all()
    per_user = {r: np.bincount(ds.user_idx[sp.role == r], minlength=ds.num_users) for r in ROLES}
    enough = counts >= MIN_INTERACTIONS
    if method == "leave_one_out":
        assert np.array_equal(per_user[VALID], enough.astype(np.int64))
        assert np.array_equal(per_user[TEST], enough.astype(np.int64))
    else:  # default ratio fractions 0.1 / 0.1, at least one each
        expect = np.where(enough, np.maximum(1, np.round(counts * 0.1)), 0)
        assert np.array_equal(per_user[VALID], expect) and np.array_equal(per_user[TEST], expect)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", DATASETS)
def test_history_is_exactly_what_precedes_the_target(name: str, method: str):
    sp = _split(name, method)
    ds = sp.dataset
    # vectorised over every target: the interaction at each position before i is the same user's
    # and history(i) is the first position(i) entries of the user's sequence (see the test above)
    assert (sp.position >= 0).all() and (sp.position < np.diff(sp.offsets)[ds.user_idx]).all()
    for i in _sample_by_role(sp, 100, seed=1).tolist():
        h = sp.history(i)
        assert i not in h
        assert (ds.user_idx[h] == ds.user_idx[i]).all()
        assert np.array_equal(sp.position[h], np.arange(sp.position[i]))  # positions < position(i)
        if ds.timed:
            assert (ds.timestamps[h] <= ds.timestamps[i]).all()


@pytest.mark.parametrize("name", DATASETS)
def test_leave_one_out_targets_are_last_and_second_to_last(name: str):
    sp = _split(name)
    ds = sp.dataset
    counts = np.diff(sp.offsets)
    n_u = counts[ds.user_idx]
    enough = n_u >= MIN_INTERACTIONS
    assert np.array_equal(sp.role == TEST, enough & (sp.position == n_u - 1))
    assert np.array_equal(sp.role == VALID, enough & (sp.position == n_u - 2))
    assert (sp.role[~enough] == TRAIN).all()
    assert sp.too_few_users == int(((counts > 0) & (counts < MIN_INTERACTIONS)).sum())
    assert sp.sizes()["test"] == sp.sizes()["valid"] == int((counts >= MIN_INTERACTIONS).sum())


# ---- 1 + 3: social context and popularity: training split only (and earlier when timed) ----
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", SOCIAL)
def test_social_context_is_friends_training_interactions_only(name: str, method: str):
    sp = _split(name, method)
    ds = sp.dataset
    assert ds.num_social_edges > 0 and not ds.timed
    ctx = ContextIndex(sp)
    n_train = 1500 if method == "leave_one_out" else 500
    targets = np.concatenate([
        _sample_by_role(sp, n_train, seed=2, roles=(TRAIN,)),
        _sample_by_role(sp, 100, seed=3, roles=(VALID, TEST)),
    ])
    train_of = {}  # friend -> its TRAIN interactions (brute force from the split, not the index)
    checked = 0
    for i in targets.tolist():
        u = int(ds.user_idx[i])
        friends = ds.social_dst[ds.social_src == u]
        got = ctx.social(i)
        assert (sp.role[got] == TRAIN).all(), f"{name}: social context of {i} holds valid/test"
        assert np.isin(ds.user_idx[got], friends).all()
        for f in friends.tolist():
            if f not in train_of:
                s = sp.user_sequence(f)
                train_of[f] = s[sp.role[s] == TRAIN]
        expect = np.concatenate([train_of[f] for f in np.unique(friends).tolist()] + [np.zeros(0, np.int64)])
        assert np.array_equal(np.sort(got), np.sort(expect))  # untimed: all of it, no time cut
        assert np.array_equal(ctx.social(i, limit=7), got[:7])
        checked += len(got)
    assert checked > 0


@pytest.mark.parametrize("name", DATASETS)
def test_popularity_counts_training_interactions_only(name: str):
    sp = _split(name, "ratio")
    ds = sp.dataset
    ctx = ContextIndex(sp)
    train_counts = np.bincount(ds.item_idx[sp.role == TRAIN], minlength=ds.num_items)
    assert np.array_equal(ctx.popularity(), train_counts)
    if not ds.timed:
        assert np.array_equal(ctx.popularity(before=123), train_counts)


@pytest.mark.parametrize("method", METHODS)
def test_timed_social_context_on_movielens_with_synthetic_friends(method: str):
    sp = _ml_friends_split(method)
    ds = sp.dataset
    ctx = ContextIndex(sp)
    ts = ds.timestamps
    is_train = sp.role == TRAIN
    nonempty = at_same_second = 0
    ties = np.concatenate(_same_second_pairs(ds))
    for i in np.concatenate([_sample_by_role(sp, 150, seed=4), ties]).tolist():
        t = ts[i]
        friends = ds.social_dst[ds.social_src == ds.user_idx[i]]
        of_friends = np.isin(ds.user_idx, friends)
        at_same_second += bool((of_friends & is_train & (ts == t)).any())
        got = ctx.social(i)
        assert (sp.role[got] == TRAIN).all()
        assert (ts[got] < t).all(), "a friend's interaction at or after the target's time is shown"
        assert (np.diff(ts[got]) <= 0).all()  # newest first
        expect = np.flatnonzero(is_train & (ts < t) & of_friends)
        assert np.array_equal(np.sort(got), expect)
        assert np.array_equal(ctx.social(i, limit=20), got[:20])
        nonempty += len(got) > 0
    assert nonempty > 100 and at_same_second > 100  # friends' items in the target's second are excluded
    # popularity before t: TRAIN interactions strictly before t, against a brute-force count
    rng = np.random.default_rng(5)
    cuts = [int(ts.min()), int(ts.max()) + 1, *np.quantile(ts, [0.1, 0.5, 0.9]).astype(int),
            *rng.choice(ts, 5).tolist()]  # exact timestamps test "strictly"
    for t in cuts:
        expect = np.bincount(ds.item_idx[is_train & (ts < t)], minlength=ds.num_items)
        assert np.array_equal(ctx.popularity(before=t), expect), t
    assert np.array_equal(ctx.popularity(), np.bincount(ds.item_idx[is_train], minlength=ds.num_items))


# ---- 4: ordering rule -------------------------------------------------------------------------
def test_movielens_order_is_chronological_ties_by_item_id():
    sp = _split("movielens-100k")
    ds = sp.dataset
    assert ds.timed and sp.order_rule == "chronological"
    same_user = np.diff(ds.user_idx[sp.seq]) == 0
    ts = ds.timestamps[sp.seq]
    iid = _item_ids(ds)[ds.item_idx[sp.seq]]
    dt, di = np.diff(ts), np.diff(iid)
    assert ((dt > 0) | ((dt == 0) & (di >= 0)))[same_user].all()
    # 415 of 943 users rated their last two items in the same second (DESIGN.md)
    last, prev = sp.offsets[1:] - 1, sp.offsets[1:] - 2
    tied = ts[last] == ts[prev]
    assert (ds.num_users, int(tied.sum())) == (943, 415)
    # for them the tie rule alone picks the test target: the larger item id
    assert (iid[last][tied] > iid[prev][tied]).all()
    assert np.array_equal(_split("movielens-100k", "ratio").seq, sp.seq)


def test_movielens_split_does_not_depend_on_row_order():
    ds = _ds("movielens-100k")
    perm = np.random.default_rng(6).permutation(ds.num_interactions)
    shuffled = RecDataset("shuffled", ds.users[::-1], ds.items[::-1], ds.num_users - 1 - ds.user_idx[perm],
                          ds.num_items - 1 - ds.item_idx[perm], ds.values[perm], ds.timestamps[perm],
                          explicit=True)
    assert np.array_equal(shuffled.user_idx, ds.user_idx[perm])
    assert np.array_equal(shuffled.item_idx, ds.item_idx[perm])
    assert np.array_equal(make_split(shuffled).role, _split("movielens-100k").role[perm])


@pytest.mark.parametrize("name", UNTIMED)
def test_untimed_order_is_seeded_random(name: str):
    ds = _ds(name)
    assert not ds.timed
    a, b, c = _split(name, seed=0), make_split(ds, seed=0), make_split(ds, seed=1)
    assert a.order_rule == b.order_rule == c.order_rule == "random"
    assert np.array_equal(a.seq, b.seq) and np.array_equal(a.role, b.role)
    assert not np.array_equal(a.seq, c.seq) and not np.array_equal(a.test, c.test)
    file_order = np.argsort(ds.user_idx, kind="stable")
    assert (a.seq != file_order).mean() > 0.5


# ---- 5: ids never encode the order of appearance -------------------------------------------
@pytest.mark.parametrize("name", DATASETS)
def test_indices_follow_sorted_ids(name: str):
    ds = _ds(name)
    for recs, index in ((ds.users, ds.user_index), (ds.items, ds.item_index)):
        ids = [r.id for r in recs]
        assert ids == sorted_ids(ids)
        assert all(index[x] == k for k, x in enumerate(ids))
        if all(x.lstrip("-").isdigit() for x in ids):
            assert (np.diff([int(x) for x in ids]) > 0).all()  # numeric order, not string order


def test_movielens_index_is_id_minus_one():
    ds = _ds("movielens-100k")
    assert [int(u.id) for u in ds.users] == list(range(1, 944))
    assert _item_ids(ds).tolist() == list(range(1, 1683))
    raw = np.loadtxt(shared_data_root() / FOLDERS["movielens-100k"] / "u.data", dtype=np.int64)
    ours = np.stack([ds.user_idx + 1, ds.item_idx + 1, ds.values.astype(np.int64), ds.timestamps], 1)
    order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    assert np.array_equal(order(ours), order(raw))


@pytest.mark.parametrize("name", ["movielens-100k", "lastfm-2k"])
def test_shuffled_records_give_identical_index_maps(name: str):
    ds = _ds(name)
    rng = np.random.default_rng(7)
    rows = [ds.interaction(int(i)) for i in rng.choice(ds.num_interactions, 4000, replace=False)]
    social = [SocialEdge(ds.users[s].id, ds.users[d].id, ds.social_kind)
              for s, d in zip(ds.social_src[:2000].tolist(), ds.social_dst[:2000].tolist())]
    uids = {r.user for r in rows} | {e.source for e in social} | {e.target for e in social}
    users = [u for u in ds.users if u.id in uids]
    iids = {r.item for r in rows}
    items = [it for it in ds.items if it.id in iids]

    def build(order_rows, order_users, order_items, order_social):
        return RecDataset.from_records(
            name, [users[k] for k in order_users], [items[k] for k in order_items],
            [rows[k] for k in order_rows], [social[k] for k in order_social])

    a = build(range(len(rows)), range(len(users)), range(len(items)), range(len(social)))
    b = build(*(rng.permutation(len(x)) for x in (rows, users, items, social)))
    assert a.users == b.users and a.items == b.items
    assert a.user_index == b.user_index and a.item_index == b.item_index
    assert sorted(a.iter_interactions(), key=repr) == sorted(b.iter_interactions(), key=repr)
    assert sorted(a.social_edges(), key=repr) == sorted(b.social_edges(), key=repr)
    if a.timed:  # the chronological split then assigns each (user, item) the same role
        def roles(d: RecDataset) -> list:
            return sorted((d.users[u].id, d.items[i].id, int(r))
                          for u, i, r in zip(d.user_idx, d.item_idx, make_split(d).role))

        assert roles(a) == roles(b)


# ---- 6: examples built by ExampleFactory ------------------------------------------------------
def _factory_cases():
    return [("movielens-100k", "leave_one_out"), ("movielens-100k", "ratio"),
            ("movielens-100k+friends", "ratio"), ("lastfm-2k", "leave_one_out")]


def _case_split(name: str, method: str) -> Split:
    return _ml_friends_split(method) if name == "movielens-100k+friends" else _split(name, method)


def _value(e) -> float:
    return e.rating if e.rating is not None else e.weight


class _Oracle:
    """Brute-force answers for examples: own history by sorting, friends' TRAIN interactions by key."""

    def __init__(self, sp: Split):
        self.sp, ds = sp, sp.dataset
        self.ds = ds
        self.titles = [it.title for it in ds.items]
        self.friends = defaultdict(set)
        for s, d in zip(ds.social_src.tolist(), ds.social_dst.tolist()):
            self.friends[s].add(d)
        # (friend id, title, value) -> earliest timestamp (0 when untimed) among TRAIN interactions
        self.train_key = {}
        for i in np.flatnonzero(sp.role == TRAIN).tolist():
            key = (ds.users[ds.user_idx[i]].id, self.titles[ds.item_idx[i]], float(ds.values[i]))
            t = int(ds.timestamps[i]) if ds.timed else 0
            self.train_key[key] = min(t, self.train_key.get(key, t))
        self.item_ids = _item_ids(ds) if ds.timed else None

    def history(self, i: int) -> np.ndarray:
        """Own history newest first: by (timestamp, item id) when timed (independent of Split)."""
        ds, sp = self.ds, self.sp
        if not ds.timed:
            return sp.history(i)[::-1]
        mine = np.flatnonzero(ds.user_idx == ds.user_idx[i])
        key = lambda j: (ds.timestamps[j], self.item_ids[ds.item_idx[j]])  # noqa: E731
        before = [j for j in mine.tolist() if key(j) < key(i)]
        return np.array(sorted(before, key=key, reverse=True), dtype=np.int64)

    def eligible_social(self, user: int, before: int | None) -> int:
        ds, sp = self.ds, self.sp
        mask = (sp.role == TRAIN) & np.isin(ds.user_idx, list(self.friends[user]))
        if before is not None:
            mask &= ds.timestamps < before
        return int(mask.sum())

    def check_social(self, ex, user: int, before: int | None, limit: int) -> None:
        ds = self.ds
        friend_ids = {ds.users[f].id for f in self.friends[user]}
        assert len(ex.social) == min(limit, self.eligible_social(user, before))
        for s in ex.social:
            assert s.friend in friend_ids
            t = self.train_key.get((s.friend, s.title, _value(s)))
            assert t is not None, f"social entry {s} is not a friend's training interaction"
            if before is not None:
                assert t < before, f"social entry {s} is not earlier than the target"


@pytest.mark.parametrize("name,method", _factory_cases())
def test_examples_obey_the_context_rules(name: str, method: str):
    sp = _case_split(name, method)
    ds = sp.dataset
    opts = ExampleOptions(max_history=20, max_social=15)
    factory = ExampleFactory(sp, opts)
    oracle = _Oracle(sp)
    kinds = ("rating", "like", "recommendation") if ds.explicit else ("like", "recommendation")
    rng = np.random.default_rng(8)
    for role in ROLES:
        specs = build_specs(sp, role, ("recommendation",), opts)
        for row in rng.choice(len(specs), size=min(100, len(specs)), replace=False).tolist():
            i = int(specs.interaction[row])
            ex = factory.make(str(rng.choice(kinds)), i, int(specs.item[row]), float(specs.label[row]))
            u = int(ds.user_idx[i])
            assert ex.role == ROLE_NAMES[role] == ROLE_NAMES[int(sp.role[i])]
            assert ex.user_id == ds.users[u].id and ex.interaction == i
            hist = oracle.history(i)
            expect = sp.history(i)[::-1][: opts.max_history]
            assert np.array_equal(hist[: opts.max_history], expect)
            assert [h.title for h in ex.history] == [oracle.titles[ds.item_idx[j]] for j in expect]
            assert [_value(h) for h in ex.history] == [float(ds.values[j]) for j in expect]
            if role == TRAIN:
                assert (sp.role[hist] == TRAIN).all()
            oracle.check_social(ex, u, int(ds.timestamps[i]) if ds.timed else None, opts.max_social)


@pytest.mark.parametrize("name,method", [("movielens-100k+friends", "leave_one_out"),
                                         ("lastfm-2k", "leave_one_out")])
def test_serving_examples_use_the_whole_sequence(name: str, method: str):
    sp = _case_split(name, method)
    ds = sp.dataset
    opts = ExampleOptions(max_history=30, max_social=15)
    factory = ExampleFactory(sp, opts)
    oracle = _Oracle(sp)
    for u in np.random.default_rng(9).choice(ds.num_users, 40, replace=False).tolist():
        ex = factory.make_now("recommendation", u)
        assert ex.role == "serve" and ex.interaction == -1 and ex.user_id == ds.users[u].id
        seq = sp.user_sequence(u)
        if ds.timed:  # newest first by (timestamp, item id)
            seq = seq[np.lexsort((oracle.item_ids[ds.item_idx[seq]], ds.timestamps[seq]))]
        expect = seq[::-1][: opts.max_history]
        assert [h.title for h in ex.history] == [oracle.titles[ds.item_idx[j]] for j in expect]
        oracle.check_social(ex, u, None, opts.max_social)  # friends' training items, no time cut
