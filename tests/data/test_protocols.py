"""The evaluation protocols. Cold items leak nothing: no held-out item in any training row,
training prompt or fitted prior (their biases, offsets and factors are exactly zero, and stay so
through training); targets are each user's newest held-out interactions; evaluation histories are
warm only. Short history: a seeded 30% of users keep their first 3-5 training interactions."""

import numpy as np
import pytest
import torch

from mtrec.data.splits import TEST, TRAIN, VALID, cold_items, user_order
from mtrec.data.synthetic import load_synthetic
from mtrec.model.build import COLD_ZEROED, build_heads
from mtrec.tasks import ExampleFactory, ExampleOptions, build_specs


@pytest.fixture(scope="module", params=[True, False], ids=["explicit", "implicit"])
def split(request):
    return cold_items(load_synthetic(num_users=60, num_items=80, explicit=request.param), seed=3)


def test_targets_are_each_users_newest_held_out_interactions(split):
    full = load_synthetic(num_users=60, num_items=80, explicit=split.dataset.explicit)
    held = split.heldout_items
    assert held.sum() == 16  # 20% of 80, seeded
    assert not held[split.dataset.item_idx[split.train]].any()  # no training row names a held-out item
    assert held[split.dataset.item_idx[split.role != TRAIN]].all()
    seq, _, _ = user_order(full, 3)
    ds = split.dataset
    for u in range(full.num_users):
        mine = seq[full.user_idx[seq] == u]
        cold = mine[held[full.item_idx[mine]]]
        test = np.flatnonzero((split.role == TEST) & (ds.user_idx == u))
        valid = np.flatnonzero((split.role == VALID) & (ds.user_idx == u))
        assert len(test) == 1 and ds.item_idx[test[0]] == full.item_idx[cold[-1]]
        assert ds.timestamps[test[0]] == full.timestamps[cold[-1]]
        assert len(valid) == (len(cold) >= 2) and ds.item_idx[valid].tolist() == full.item_idx[cold[-2:-1]].tolist()
    # the other held-out interactions are gone; every warm one is kept
    assert ds.num_interactions == (~held[full.item_idx]).sum() + (split.role != TRAIN).sum()


def test_no_prompt_shows_a_held_out_item(split):
    ds, held = split.dataset, split.heldout_items
    opts = ExampleOptions(max_history=50, max_social=50)
    factory = ExampleFactory(split, opts)
    warm_titles = {it.title for k, it in enumerate(ds.items) if not held[k]}
    assert len(warm_titles) == (~held).sum()  # titles are unique: a title names its item
    for role in (TRAIN, VALID, TEST):
        specs = build_specs(split, role, ("like", "recommendation", "categories") + ("rating",) * ds.explicit, opts)
        for r in range(len(specs)):
            ex = factory.make_row(specs, r)
            shown = [h.title for h in ex.history] + [s.title for s in ex.social]
            assert set(shown) <= warm_titles, (role, r)
            if role == TRAIN:
                assert not held[specs.item[r]]  # nor the item a training row asks about (like negatives too)
        if not ds.explicit and role != TRAIN:  # evaluation negatives come from held-out items only
            like = specs.kind == 1
            assert held[specs.item[like]].all()


def test_held_out_items_have_no_prior_and_training_leaves_them_at_zero(tiny_config, tmp_path):
    from mtrec.pipeline import TaskSampler, eval_specs, evaluate_rows, mixing_probs, summarise, train_specs
    from mtrec.training import _step_loss, build_setup, train

    cfg = tiny_config("data.split=cold_items", "model.collab_dim=4", "train.max_steps=4", "train.eval_every=0")
    setup = build_setup(cfg)
    split = setup.split
    held = torch.as_tensor(split.heldout_items)
    heads = build_heads(split.dataset, torch.randn(split.dataset.num_items, 8), split.train, 8, 4.0,
                        collab_dim=4, split=split, seed=0)
    for name in COLD_ZEROED:
        rows = getattr(heads, name).detach()
        assert (rows[held] == 0).all(), name
        assert (rows[~held] != 0).any(), name  # the warm items have their priors
    # one training step: no gradient reaches a held-out row (the softmax ranges over warm items);
    # without that pool the held-out items would be pushed down as negatives
    specs = train_specs(split, setup.kinds, setup.example_options, None, 0)
    sampler = TaskSampler(specs, mixing_probs({k: len(v) for k, v in specs.items()}, "temperature", 2.0),
                          setup.batcher, 16, 0)
    batch = sampler.batch(0)
    warm = torch.as_tensor(np.flatnonzero(~split.heldout_items))
    heads = dict(setup.model.named_parameters())
    rows = {n: p for n, p in heads.items() if n.endswith(tuple(f"default.{k}" for k in (*COLD_ZEROED, "item_table")))}
    assert len(rows) == len(COLD_ZEROED) + 1
    for pool, reaches in ((warm, False), (None, True)):
        setup.model.zero_grad()
        _step_loss(setup.model, batch, setup.weights, cfg, pool)[0].backward()
        bias_grad = rows[next(n for n in rows if n.endswith("item_bias"))].grad
        assert bool((bias_grad[held] != 0).any()) is reaches
        if pool is not None:
            for name, p in rows.items():
                assert p.grad is None or (p.grad[held] == 0).all(), name
            assert (bias_grad[~held] != 0).any()
    setup.model.zero_grad()
    train(cfg, tmp_path / "run", overwrite=True, setup=setup)
    for name, p in rows.items():
        if not name.endswith("item_table"):
            assert (p.detach()[held] == 0).all(), name  # still no prior after training
    # evaluation ranks each target among the 8 held-out items too (besides the full catalog)
    specs = eval_specs(split, ["recommendation"], setup.example_options, VALID, 0, 0)
    out = evaluate_rows(setup.model, setup.batcher, specs, split, VALID)
    assert (out["rank_cold"] < 8).all() and (out["rank"] >= out["rank_cold"]).all()
    assert "recommendation/heldout/ndcg@10" in summarise(out, setup.weights, 10)


def test_short_history_cuts_a_seeded_share_of_users_to_three_to_five_training_items():
    from mtrec.data.splits import leave_one_out, short_history

    ds = load_synthetic(num_users=60, num_items=80)
    loo, split = leave_one_out(ds), short_history(ds, seed=1)
    short = split.short_users
    assert short.sum() == 18  # 30% of the 60 users with a test target
    n_train = np.bincount(split.dataset.user_idx[split.role == TRAIN], minlength=60)
    loo_train = np.bincount(ds.user_idx[loo.role == TRAIN], minlength=60)
    assert ((n_train[short] >= 3) & (n_train[short] <= 5)).all() and len(set(n_train[short])) > 1
    assert (n_train[~short] == loo_train[~short]).all()
    for role in (VALID, TEST):  # every target kept, the same item
        assert np.array_equal(np.sort(split.dataset.item_idx[split.role == role] + 1000 * split.dataset.user_idx[split.role == role]),
                              np.sort(ds.item_idx[loo.role == role] + 1000 * ds.user_idx[loo.role == role]))
    u = int(np.flatnonzero(short)[0])  # the kept ones are the user's first (oldest) training interactions
    first = loo.user_sequence(u)[: n_train[u]]
    assert split.dataset.item_idx[split.user_sequence(u)[: n_train[u]]].tolist() == ds.item_idx[first].tolist()
    assert np.array_equal(short_history(ds, seed=1).short_users, short)


def test_a_cold_target_reads_only_the_warm_items_before_it(split):
    from mtrec.model.sequential import history_inputs

    ds = split.dataset
    mask = split.history_mask(TEST)
    for u in range(ds.num_users):
        t = np.flatnonzero((split.role == TEST) & (ds.user_idx == u))[0]
        assert set(np.flatnonzero(mask & (ds.user_idx == u))) == set(split.history(t))
        assert not split.heldout_items[ds.item_idx[split.history(t)]].any()
    # SASRec's input for the test target: the same items, in order (item ids + 1, left-padded)
    u = int(ds.user_idx[split.test[0]])
    row = history_inputs(split, np.array([u]), TEST, 200)[0].numpy()
    assert row[row > 0].tolist() == (ds.item_idx[split.history(split.test[0])] + 1).tolist()[-200:]
