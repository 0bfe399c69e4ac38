"""The one ranking protocol (`mtrec.ranking`): what is left out, ties, candidates, blocks; and that
evaluation, the baselines, the speed bench and `Recommender` all rank through it."""

import numpy as np
import pytest
import torch

from mtrec import ranking
from mtrec.bench.baselines import Baseline, full_catalog_ranks
from mtrec.data import Interaction, Item, RecDataset, User
from mtrec.data.splits import TEST, VALID, leave_one_out, make_split
from mtrec.data.synthetic import load_synthetic
from mtrec.kinds import Kind
from mtrec.pipeline import _ranks
from mtrec.ranking import Seen


def _toy():
    # user 1: a(t1) b(t2) train, c(t3) valid, d(t4) test; user 2: b, d train, a valid, c test
    rows = [("1", "a", 1), ("1", "b", 2), ("1", "c", 3), ("1", "d", 4),
            ("2", "b", 1), ("2", "d", 2), ("2", "a", 3), ("2", "c", 4)]
    ds = RecDataset.from_records(
        "toy", [User("1"), User("2")], [Item(i, i) for i in "abcde"],
        [Interaction(u, i, rating=4.0, timestamp=t) for u, i, t in rows],
    )
    return leave_one_out(ds)


def test_seen_follows_the_protocol_dense_or_sparse():
    sp = _toy()
    # items a..e are indices 0..4; users "1", "2" are 0, 1
    for dense in (True, False):
        valid = Seen.before(sp, "valid", dense=dense).rows([0, 1]).tolist()
        assert valid == [[True, True, False, False, False], [False, True, False, True, False]]
        test = Seen.before(sp, TEST, dense=dense).rows(np.array([1, 0])).tolist()  # order of users is kept
        assert test == [[True, True, False, True, False], [True, True, True, False, False]]
        assert Seen.every(sp, dense=dense).rows([0]).tolist() == [[True, True, True, True, False]]
    with pytest.raises(ValueError, match="valid"):
        Seen.before(sp, "train")


def test_ranks_by_hand_ties_repeats_and_candidates():
    sp = _toy()
    seen = Seen.before(sp, TEST)
    scores = torch.tensor([[5.0, 1.0, 3.0, 3.0, 0.0],   # user 1, target d=3: seen a, b, c left out
                           [9.0, 2.0, 2.0, 8.0, 2.0]])  # user 2, target b=1 (a repeat: b is seen, still ranked)
    got = ranking.ranks(scores, [3, 1], [0, 1], seen)
    # row 0: only e (0.0) is left besides d: rank 0. Row 1: a, d seen, left out; c and e tie b: rank 2
    assert got.tolist() == [0, 2]
    # among candidates {c, d, e} only; row 1's target b must be a candidate
    assert ranking.ranks(scores[:1], [3], [0], seen, candidates=[2, 3, 4]).tolist() == [0]
    assert ranking.ranks(scores[:1], [3], [0], None, candidates=[2, 3, 4]).tolist() == [1]  # c ties d
    with pytest.raises(ValueError, match="not among the candidates"):
        ranking.ranks(scores[1:], [1], [1], seen, candidates=[2, 3, 4])
    with pytest.raises(ValueError, match="NaN"):
        ranking.ranks(torch.full((1, 5), float("nan")), [0], [0])


class _Fixed(Baseline):
    """A baseline whose scores are a given matrix (one row per user)."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.table = table

    def score_all(self, users, role=VALID):
        return self.table[np.asarray(users)]


def test_every_consumer_gives_the_same_ranks_for_the_same_scores():
    split = make_split(load_synthetic(num_users=60, num_items=90, seed=1), "leave_one_out")
    ds = split.dataset
    table = np.random.default_rng(0).standard_normal((ds.num_users, ds.num_items)).astype(np.float32)
    for role in (VALID, TEST):
        idx = np.flatnonzero(split.role == role)
        users, items = ds.user_idx[idx].astype(np.int64), ds.item_idx[idx].astype(np.int64)
        seen = Seen.before(split, role)
        # by hand: count non-seen items other than the target scoring at least as high
        want = []
        for u, t in zip(users, items):
            before = {int(ds.item_idx[i]) for i in split.seq[split.offsets[u]:split.offsets[u + 1]]
                      if split.role[i] < role} - {int(t)}
            want.append(sum(1 for j in range(ds.num_items) if j != t and j not in before
                            and table[u, j] >= table[u, t]))
        # the baselines, scored in blocks of 7 users
        base = full_catalog_ranks(_Fixed(table), split, users, items, role, batch_size=7)
        # the language model's evaluation, on a batch of recommendation rows
        batch = {"kind": torch.full((len(users),), int(Kind.RECOMMENDATION)), "item": torch.as_tensor(items),
                 "user": torch.as_tensor(users)}
        lm = _ranks(torch.as_tensor(table[users]), batch, seen)
        # Recommender and the speed bench: seen items masked, top-k over the catalog
        values, order = ranking.top_k(torch.as_tensor(table[users]), ds.num_items, torch.as_tensor(users),
                                      Seen.before(split, role, dense=False))
        position = [row.index(t) if t in row else None for row, t in zip(order.tolist(), items.tolist())]
        fresh = [p is not None for p in position]  # a repeated target is masked by top_k (it was seen)
        assert base.tolist() == want and lm.tolist() == want
        assert [p for p, f in zip(position, fresh) if f] == [w for w, f in zip(want, fresh) if f]
        assert sum(fresh) > 0.9 * len(users)
