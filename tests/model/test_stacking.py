"""Stacked priors (`model.stack_tail`): priors fitted without each user's newest training
interactions, the model trained on those alone, served with the priors fitted on all."""

import numpy as np
import pytest
import torch
from accelerate.utils import set_seed

from mtrec.config import ConfigError
from mtrec.data.splits import TRAIN, VALID, make_split
from mtrec.data.synthetic import load_synthetic
from mtrec.inference import Recommender
from mtrec.model.stacking import FACTOR_TABLES, MIN_LEFT, StackedPriors, is_prior, is_ranking_prior, prior_split, tail_mask
from mtrec.pipeline import eval_specs, evaluate_rows, train_specs
from mtrec.training import build_setup, train

STACK = ["model.stack_tail=2", "model.stack_ranking=true", "model.ranking_prior=both", "model.sequence_len=6", "model.collab_dim=4",
         "train.max_steps=6", "train.eval_every=3", "train.checkpoint_every=3"]


def test_the_tail_is_each_users_newest_k_training_interactions():
    split = make_split(load_synthetic(num_users=12, num_items=30, interactions_per_user=(5, 12)), "leave_one_out", seed=0)
    tail = tail_mask(split, 3)
    ds = split.dataset
    for u in range(ds.num_users):
        train = split.seq[split.offsets[u] : split.offsets[u + 1]]
        train = train[split.role[train] == TRAIN]  # oldest first
        mine = np.flatnonzero(tail & (ds.user_idx == u))
        if len(train) - 3 >= MIN_LEFT:
            assert sorted(mine) == sorted(train[-3:]), u
        else:
            assert len(mine) == 0, u
    assert tail.any() and not tail[split.role != TRAIN].any()
    # the priors' split: the tail leaves TRAIN, nothing else moves
    fit = prior_split(split, tail)
    assert np.array_equal(fit.role == TRAIN, (split.role == TRAIN) & ~tail)
    assert (fit.role[tail] == VALID).all() and np.array_equal(fit.position, split.position)


@pytest.fixture(scope="module")
def stacked(tiny_backbone_dir, tmp_path_factory):
    from mtrec.config import load_config
    from tests_paths import ROOT

    tiny_config = lambda *o: load_config(ROOT / "tests/configs/tiny.yaml", [f"model.backbone={tiny_backbone_dir}", *o])  # noqa: E731
    cfg = tiny_config(*STACK)
    set_seed(cfg.run.seed)
    setup = build_setup(cfg)
    plain = build_setup(tiny_config(*STACK[2:]))  # the same run without stacking: the priors fitted on all
    heads = lambda s: dict(s.model.base_model.model.heads.modules_to_save["default"].named_parameters())  # noqa: E731
    built = {n: p.detach().clone() for n, p in heads(setup).items()}
    run_dir = tmp_path_factory.mktemp("runs") / "stacked"
    result = train(cfg, run_dir, setup=setup)
    return cfg, setup, heads(plain), built, heads(setup), run_dir, result


def test_the_model_trains_on_tail_rows_only(stacked):
    cfg, setup, *_ = stacked
    specs = train_specs(setup.split, setup.kinds, setup.example_options, only=setup.tail)
    every = train_specs(setup.split, setup.kinds, setup.example_options)
    for kind in setup.kinds:
        assert len(specs[kind]) and len(specs[kind]) < len(every[kind])
        assert setup.tail[specs[kind].interaction].all()
    assert stacked[-1]["train_sizes"] == {k: len(v) for k, v in specs.items()}


def test_served_priors_are_the_fits_on_all_training_data(stacked):
    """Built, the heads serve the fits a run without stacking has; after training the factor tables
    and the sequential network still are exactly those (frozen), the trained priors moved."""
    _, setup, plain, built, after, *_ = stacked
    for n in (*FACTOR_TABLES, "item_bias", "user_like_offset", "sequence.item.weight"):
        assert torch.equal(built[n], plain[n]), n
    for n in (*FACTOR_TABLES, "sequence.item.weight"):
        assert torch.equal(after[n], plain[n]) and not after[n].requires_grad, n
    assert not torch.equal(after["item_like_offset"], plain["item_like_offset"])  # trained (at table_lr) on the tail
    assert after["item_bias"].requires_grad
    # the ranking priors: trained too, unless the ranking blend put the fits back (its reference)
    fitted = stacked[-1]["rank_blend"]["priors"] == "fitted"
    assert torch.equal(after["item_bias"], plain["item_bias"]) == fitted
    # the stacked fits are other values (the tail left out)
    with setup.stacking.training():
        differ = {n for n in setup.stacking.params if not torch.equal(after[n], plain[n])}
    assert {"user_factors", "item_factors", "user_like_offset", "sequence.item.weight"} <= differ, differ
    assert torch.equal(after["user_factors"], plain["user_factors"])


def test_stacked_fits_do_not_read_the_tail(tiny_config):
    """The priors the model trains against are out-of-sample on the tail: other tail items leave
    every stacked fit bit-identical."""
    from mtrec.model.build import build_heads

    split = make_split(load_synthetic(num_users=30, num_items=40), "leave_one_out", seed=0)
    tail = tail_mask(split, 2)
    fit = prior_split(split, tail)
    table = torch.zeros(split.dataset.num_items, 8)

    def fitted():
        h = build_heads(split.dataset, table, fit.train, 8, 4.0, collab_dim=4, split=fit, ranking_prior="both",
                        sequence_len=6)
        return {n: p.detach().clone() for n, p in h.named_parameters()}

    first = fitted()
    items = split.dataset.item_idx
    saved = items.copy()
    items.setflags(write=True)
    try:
        items[tail] = (items[tail] + 11) % split.dataset.num_items
        second = fitted()
    finally:
        items[:] = saved
    for n, v in first.items():
        if n != "item_table":
            assert torch.equal(v, second[n]), n


def test_without_stack_ranking_the_ranking_priors_are_the_full_fits_throughout():
    """model.stack_ranking off (the default): the recommendation head's priors hold the fits on all
    training data in training as in serving, trainable as without stacking; the others switch."""
    from mtrec.model.build import build_heads

    split = make_split(load_synthetic(num_users=30, num_items=40), "leave_one_out", seed=0)
    table = torch.zeros(split.dataset.num_items, 8)

    def heads(fit):
        return build_heads(split.dataset, table, fit.train, 8, 4.0, collab_dim=4, split=fit, ranking_prior="both",
                           sequence_len=6, sequence_seeds=2)

    mine, full = heads(prior_split(split, tail_mask(split, 2))), heads(split)
    stacked = {n: p.detach().clone() for n, p in mine.named_parameters()}
    stacking = StackedPriors(mine, full, ranking=False)
    served, theirs = dict(mine.named_parameters()), dict(full.named_parameters())
    ranking = {n for n in served if is_ranking_prior(n)}
    assert {"item_bias", "rec_item_factors", "sequence.item.weight", "sequence_members.0.item.weight"} <= ranking
    assert ranking.isdisjoint(stacking.params) and set(stacking.params) == {n for n in served if is_prior(n)} - ranking
    assert served["rec_item_factors"].requires_grad and not served["user_factors"].requires_grad
    with stacking.training():
        for n in ranking:
            assert torch.equal(served[n], theirs[n]), n  # the full fit while training too
        for n in ("user_factors", "item_like_offset"):
            assert torch.allclose(served[n], stacked[n], atol=1e-6) and not torch.equal(served[n], theirs[n]), n
    for n in ("user_factors", *ranking):
        assert torch.equal(served[n], theirs[n]), n
    assert torch.allclose(served["item_like_offset"], theirs["item_like_offset"], atol=1e-6)  # shifted back (an ulp)


def test_checkpoints_and_the_run_folder_hold_the_served_priors(stacked):
    _, setup, plain, _, after, run_dir, result = stacked
    from safetensors.torch import load_file

    from mtrec.checkpoint import PREFIX, checkpoint_dir

    state = load_file(checkpoint_dir(run_dir) / f"{PREFIX}3" / "trainable.safetensors")
    bias = next(v for k, v in state.items() if k.endswith("default.item_bias"))
    # served: 3 steps at table_lr 1e-4 from the full fit, while the stacked fit is further away
    assert (bias - plain["item_bias"].detach()).abs().max() < 1e-3 < setup.stacking.shift["item_bias"].abs().max()
    specs = eval_specs(setup.split, setup.kinds, setup.example_options, VALID, 0, 0)
    want = evaluate_rows(setup.model, setup.batcher, specs, setup.split, VALID)
    rec = Recommender.from_run(run_dir, device="cpu", merge=False)
    got = evaluate_rows(rec.model, setup.batcher, specs, setup.split, VALID)
    for key in ("loss", "rank", "like_logit", "rating_pred"):
        assert torch.equal(want[key], got[key]), key


def test_stacking_refuses_what_it_cannot_do(tiny_config):
    with pytest.raises(ConfigError, match="model.stack_tail"):
        build_setup(tiny_config("model.stack_tail=-1"))
    with pytest.raises(ConfigError, match="nothing to train on"):
        build_setup(tiny_config("model.stack_tail=500"))
    with pytest.raises(ConfigError, match="hybrid item tokens"):
        build_setup(tiny_config("model.stack_tail=2", "prompt.item_tokens=hybrid"))


def test_without_stack_ranking_the_sequential_prior_is_fitted_on_all_training_data_only(tiny_config, monkeypatch):
    """The stacked heads' sequential prior would be overwritten by the full fit (above): training fits
    it once, on the full split, not on the tail-less one too."""
    import mtrec.model.build as build

    fitted, real = [], build.sequence_prior
    monkeypatch.setattr(build, "sequence_prior", lambda split, *a, **k: fitted.append(split.role.copy()) or real(split, *a, **k))
    setup = build_setup(tiny_config("model.stack_tail=2", "model.stack_ranking=false", *STACK[2:5]))
    assert setup.stacking is not None and not setup.stacking.params.keys() & {"sequence.item.weight"}
    assert len(fitted) == 2 and all(np.array_equal(role, setup.split.role) for role in fitted)  # both heads, one split
    fitted.clear()
    build_setup(tiny_config(*STACK[:5]))  # stacking the ranking priors: the sequence too, on the tail-less split
    assert len(fitted) == 2 and sum(np.array_equal(role, setup.split.role) for role in fitted) == 1
