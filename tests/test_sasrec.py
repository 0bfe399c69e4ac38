"""SASRec on sequences with a known rule: the loss falls, the rule is learnt, the test history holds
the validation item, and a seed fixes every number."""

import numpy as np
import pytest
import torch

from mtrec.bench.baselines import SASRec, evaluate_baseline
from mtrec.data import Item, RecDataset, User
from mtrec.data.splits import TEST, TRAIN, VALID, leave_one_out


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests share two cores with other jobs; one thread keeps timings stable and results exact.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _successor_data(seed=0, n_users=150, n_items=30, length=(6, 14)):
    """Implicit data where item i is always followed by item (i + 1) mod n_items: user u consumes
    start, start + 1, ..., start + n - 1 (mod n_items) in that order, timestamps increasing. The
    wrap-around makes every item a training target for someone (no item is only ever a test item)."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        n = int(rng.integers(*length, endpoint=True))
        start = int(rng.integers(0, n_items))
        users += [u] * n
        items += [(start + j) % n_items for j in range(n)]
        ts += list(range(n))
    return RecDataset(
        "successor",
        [User(str(u)) for u in range(n_users)],
        [Item(str(i), f"item {i}") for i in range(n_items)],
        np.array(users),
        np.array(items),
        np.ones(len(users)),
        np.array(ts),
        explicit=False,
    )


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    split = leave_one_out(_successor_data())
    model = SASRec(hidden=32, lr=5e-3, batch_size=64, dropout=0.1).fit(
        split, seed=0, max_epochs=40, patience=5
    )
    return split, model


def test_loss_falls_and_epochs_are_recorded(fitted):
    _, model = fitted
    info = model.info
    assert info["train_loss"][-1] < 0.3 * info["train_loss"][0]
    assert len(info["train_loss"]) == info["epochs_run"] == len(info["valid"])
    assert info["best_valid"] == max(info["valid"]) and 1 <= info["best_epoch"] <= info["epochs_run"]
    assert info["windows"] == 150 and not info["budget_stopped"]  # every sequence fits one window of 51
    assert info["hparams"]["max_len"] == 50 and info["hparams"]["blocks"] == 2


def test_learns_the_successor_rule(fitted):
    split, model = fitted
    # the full-catalog rank of the true next item is 0 for nearly everyone (29 candidates at chance)
    test = evaluate_baseline(model, split, "test", k=1)
    assert test["hr@1"] > 0.95 and test["n"] == 150
    assert evaluate_baseline(model, split, "valid", k=1)["hr@1"] > 0.95


def test_test_time_history_includes_the_validation_item(fitted):
    split, model = fitted
    ds = split.dataset
    valid_item = ds.item_idx[split.valid]  # ordered by user: one validation and one test target each
    test_item = ds.item_idx[split.test]
    users = ds.user_idx[split.valid]
    assert np.array_equal(users, ds.user_idx[split.test])
    # The inputs: the newest history item is the last training item for validation, the
    # validation item for test.
    last_train = np.array(
        [ds.item_idx[split.user_sequence(u)[split.role[split.user_sequence(u)] == TRAIN][-1]] for u in users]
    )
    assert np.array_equal(model.history_inputs(users, VALID)[:, -1].numpy(), last_train + 1)
    assert np.array_equal(model.history_inputs(users, TEST)[:, -1].numpy(), valid_item + 1)
    # Without any exclusion, the top item follows the history's newest item: the validation item
    # when ranking for validation, the test item when ranking for test.
    assert (model.score_all(users, "valid").argmax(1) == valid_item).mean() > 0.95
    assert (model.score_all(users, "test").argmax(1) == test_item).mean() > 0.95


def test_same_seed_same_numbers_other_seed_differs():
    split = leave_one_out(_successor_data(n_users=60))
    fit = lambda seed: SASRec(hidden=16, batch_size=32).fit(split, seed=seed, max_epochs=3, patience=3)
    users = np.arange(10)
    first, again, other = fit(0), fit(0), fit(1)
    assert np.array_equal(first.score_all(users, "test"), again.score_all(users, "test"))
    assert first.info["train_loss"] == again.info["train_loss"]
    assert not np.array_equal(first.score_all(users, "test"), other.score_all(users, "test"))


def test_chunked_softmax_matches_one_big_softmax():
    # A logits budget of 7 entries forces one row per chunk; the gradient must equal the plain loss's.
    split = leave_one_out(_successor_data(n_users=20))
    model = SASRec(hidden=8, batch_size=8, dropout=0.0, max_logits=7).fit(split, seed=0, max_epochs=1)
    net = model.net
    seq = model.history_inputs(np.arange(5), TEST)
    labels = torch.arange(5)
    net.zero_grad()
    from mtrec.model.sequential import softmax_backward

    softmax_backward(net(seq)[:, -1], net, labels, max_logits=7)
    chunked = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(seq)[:, -1] @ net.catalog().T, labels).backward()
    for got, want in zip(chunked, (p.grad for p in net.parameters())):
        assert torch.allclose(got, want, atol=1e-6)


def test_time_budget_cuts_training_short_and_says_so():
    split = leave_one_out(_successor_data(n_users=40))
    model = SASRec(hidden=16, batch_size=8).fit(split, seed=0, max_epochs=50, patience=50, max_seconds=0.0)
    info = model.info
    # the first batch always runs, then the deadline ends the epoch and the training
    assert info["budget_stopped"] and info["epochs_run"] == 1 and not info["stopped_early"]
    assert len(info["valid"]) == 1  # the partial epoch is still evaluated and kept


def test_item_knn_reads_the_validation_item_at_test_time():
    # ItemKNN, the other history-reading baseline: its test history is TRAIN + VALID.
    from mtrec.bench.baselines import ItemKNN

    split = leave_one_out(_successor_data(n_users=40))
    knn = ItemKNN(neighbours=5).fit(split)
    ds, users = split.dataset, np.arange(5)
    valid_items = ds.item_idx[split.valid][:5]
    diff = knn.score_all(users, "test") - knn.score_all(users, "valid")
    # the extra history row is exactly the validation item's neighbour row
    assert np.allclose(diff, knn.S[valid_items].toarray())
