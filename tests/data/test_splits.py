"""Splits and context rules on small hand-built data sets (real data sets: test_leakage.py)."""

import numpy as np
import pytest

from mtrec.data import Interaction, Item, RecDataset, SocialEdge, User
from mtrec.data.context import ContextIndex
from mtrec.data.splits import TRAIN, leave_one_out, make_split, ratio_split


def _ds(rows, social=(), timed=True):
    users = sorted({r[0] for r in rows} | {e[0] for e in social} | {e[1] for e in social})
    items = sorted({r[1] for r in rows})
    inter = [Interaction(u, i, rating=float(r), timestamp=t if timed else None) for u, i, r, t in rows]
    return RecDataset.from_records(
        "toy", [User(u) for u in users], [Item(i, f"title {i}") for i in items], inter,
        [SocialEdge(a, b) for a, b in social], rating_scale=(1, 5),
    )


def test_ids_sorted_numerically_not_by_appearance():
    ds = _ds([("10", "30", 5, 1), ("2", "4", 3, 2), ("10", "4", 1, 3)])
    assert [u.id for u in ds.users] == ["2", "10"]
    assert [i.id for i in ds.items] == ["4", "30"]
    # interaction 0 is user "10" (index 1) on item "30" (index 1)
    assert ds.user_idx.tolist() == [1, 0, 1] and ds.item_idx.tolist() == [1, 0, 0]
    assert ds.interaction(0) == Interaction("10", "30", rating=5.0, timestamp=1)


def test_leave_one_out_ties_broken_by_item_id():
    # user 1 rated items 9 and 3 in the same second (t=5) after item 7: item 9 is last by the tie rule.
    ds = _ds([("1", "9", 4, 5), ("1", "3", 2, 5), ("1", "7", 5, 1), ("2", "3", 1, 1), ("2", "7", 1, 2)])
    sp = leave_one_out(ds)
    items = lambda idx: sorted(ds.items[ds.item_idx[i]].id for i in idx if ds.user_idx[i] == 0)
    assert items(sp.test) == ["9"] and items(sp.valid) == ["3"] and items(sp.train) == ["7"]
    # user 2 has 2 interactions (< 3): all kept in training and counted
    assert sp.too_few_users == 1
    assert sp.sizes() == {"train": 3, "valid": 1, "test": 1}
    assert sp.order_rule == "chronological"


def test_history_is_exactly_what_precedes_the_target():
    ds = _ds([("1", str(i), 3, 100 - i) for i in range(6)])  # item 5 oldest ... item 0 newest
    sp = leave_one_out(ds)
    test = int(sp.test[0])
    assert ds.items[ds.item_idx[test]].id == "0"
    hist = [ds.items[ds.item_idx[i]].id for i in sp.history(test)]
    assert hist == ["5", "4", "3", "2", "1"]  # oldest first, valid item "1" included at test time
    valid = int(sp.valid[0])
    assert [ds.items[ds.item_idx[i]].id for i in sp.history(valid)] == ["5", "4", "3", "2"]


def test_untimed_order_is_seeded_random_and_reproducible():
    rows = [("1", str(i), 3, 0) for i in range(30)]
    ds = _ds(rows, timed=False)
    a, b, c = leave_one_out(ds, seed=1), leave_one_out(ds, seed=1), leave_one_out(ds, seed=2)
    assert a.order_rule == "random"
    assert np.array_equal(a.seq, b.seq) and not np.array_equal(a.seq, c.seq)
    assert not np.array_equal(a.seq, np.arange(30))  # not file order


def test_ratio_split_sizes():
    ds = _ds([("1", str(i), 3, i) for i in range(20)])
    sp = ratio_split(ds, valid=0.1, test=0.2)
    assert sp.sizes() == {"train": 14, "valid": 2, "test": 4}
    # test items are the newest
    assert sorted(int(ds.items[ds.item_idx[i]].id) for i in sp.test) == [16, 17, 18, 19]
    with pytest.raises(ValueError, match="valid"):
        ratio_split(ds, valid=0.6, test=0.5)
    with pytest.raises(ValueError, match="unknown split method"):
        make_split(ds, "kfold")


def test_social_context_train_only_and_strictly_earlier():
    rows = [
        ("1", "a", 5, 10), ("1", "b", 4, 20), ("1", "c", 3, 30), ("1", "d", 3, 40),
        # friend 2: train items at t=5, 15, 25; valid at 35; test at 45
        ("2", "e", 5, 5), ("2", "f", 5, 15), ("2", "g", 5, 25), ("2", "h", 5, 35), ("2", "i", 5, 45),
    ]
    ds = _ds(rows, social=[("1", "2")])
    sp = leave_one_out(ds)
    ctx = ContextIndex(sp)
    title = lambda idx: [ds.items[ds.item_idx[i]].id for i in idx]
    test_1 = int([i for i in sp.test if ds.user_idx[i] == 0][0])  # user 1's test at t=40
    assert title(ctx.social(test_1)) == ["g", "f", "e"]  # friend's valid "h" (t=35) excluded
    first = int(sp.seq[0])  # user 1's first interaction at t=10
    assert title(ctx.social(first)) == ["e"]
    assert title(ctx.social(first, limit=0)) == []
    assert ctx.popularity(before=15).tolist() == np.bincount(
        [ds.item_index[x] for x in ("a", "e")], minlength=ds.num_items).tolist()
    assert set(ctx.friends(0).tolist()) == {1} and ctx.friends(1).tolist() == []


def test_negative_sampling_skips_users_who_have_seen_everything():
    from mtrec.tasks import ExampleOptions, build_specs

    # user 1 has seen both items; user 2 only one: only user 2 can get a negative
    rows = [("1", "a", 1, 1), ("1", "b", 1, 2), ("1", "a", 1, 3), ("2", "a", 1, 1), ("2", "a", 1, 2), ("2", "a", 1, 3)]
    ds = RecDataset.from_records(
        "toy", [User("1"), User("2")], [Item("a", "A"), Item("b", "B")],
        [Interaction(u, i, weight=float(w), timestamp=t) for u, i, w, t in rows],
    )
    specs = build_specs(leave_one_out(ds), TRAIN, ("like",), ExampleOptions())
    negatives = specs.label == 0
    assert negatives.sum() == 1  # user 2's single training target; user 1 gets none
    assert ds.user_idx[specs.interaction[negatives]].tolist() == [1] and specs.item[negatives].tolist() == [1]
