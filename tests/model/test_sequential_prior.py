"""The sequential prior (`model.ranking_prior: sequence | both`): a SASRec-shaped network fitted on
the training split only, read by the ranking head from each row's history item ids."""

import numpy as np
import pytest
import torch

from mtrec.bench.accuracy import prior_settings
from mtrec.bench.baselines import PriorAlone
from mtrec.data.splits import TEST, TRAIN, VALID, cold_items, make_split
from mtrec.data.synthetic import load_synthetic
from mtrec.inference import NewUser, Recommender
from mtrec.model.build import build_heads
from mtrec.model.sequential import fit_sequence, history_inputs, text_start
from mtrec.pipeline import eval_specs
from mtrec.tasks import ExampleFactory, ExampleOptions, history_ids

SMALL = dict(max_len=6, hidden=8, blocks=1, heads=1, max_epochs=6, patience=3)
# SMALL at a learning rate that trains past the start on the synthetic split (at the default 3e-3 the
# best epoch there is 0: the kept weights would be the untrained start)
TRAINS = dict(SMALL, lr=3e-2)


@pytest.mark.parametrize("refit", [False, True])
def test_fitted_parameters_do_not_depend_on_validation_or_test(refit):
    split = make_split(load_synthetic(num_users=40, num_items=30), "leave_one_out", seed=0)
    first = fit_sequence(split, **TRAINS, refit=refit)
    later = np.flatnonzero(split.role != 0)
    assert len(later) > 0
    items = split.dataset.item_idx
    saved = items.copy()
    items.setflags(write=True)
    try:
        items[later] = (items[later] + 7) % split.dataset.num_items  # other validation / test items
        second = fit_sequence(split, **TRAINS, refit=refit)
    finally:
        items[:] = saved
    assert first["report"]["epochs"] >= 1  # the kept weights were trained
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), name  # bit-identical
    # scoring the test targets reads the validation item, as SASRec does; validation does not
    users = np.unique(split.dataset.user_idx[split.test])[:5]
    valid_items = {int(split.dataset.user_idx[i]): int(split.dataset.item_idx[i]) + 1 for i in split.valid}
    for row, u in enumerate(users):
        assert history_inputs(split, [u], TEST, 6)[0, -1] == valid_items[int(u)]
        assert valid_items[int(u)] not in history_inputs(split, [u], VALID, 6)[0].tolist()[-1:]


def test_the_refit_trains_a_fresh_network_for_the_best_epoch_count_on_every_training_item():
    """refit: the hold-out picks the epoch count, then the same seed's network trains that many epochs
    on windows whose targets include each user's newest training item (which the hold-out left out)."""
    from mtrec.model.sequential import training_windows

    split = make_split(load_synthetic(num_users=40, num_items=30), "leave_one_out", seed=0)
    kept, refit = fit_sequence(split, **TRAINS), fit_sequence(split, **TRAINS, refit=True)
    report = refit["report"]
    assert report["refit_epochs"] == report["epochs"] == kept["report"]["epochs"] >= 1
    every = training_windows(split, SMALL["max_len"])
    assert report["refit_windows"] == len(every)
    # each user's windows come newest first: the refit's first one ends with the user's newest training
    # interaction, the hold-out fit's with the one before it (the newest is held out)
    held_mask = _without_newest(split)
    held = training_windows(split, SMALL["max_len"], held_mask)
    ends = {}
    for name, windows, keep in (("refit", every, split.role == TRAIN), ("hold-out", held, held_mask)):
        first, ends[name] = 0, []
        for u in range(split.dataset.num_users):
            mine = split.seq[split.offsets[u] : split.offsets[u + 1]]
            own = mine[keep[mine]]
            assert windows[first, -1] == split.dataset.item_idx[own[-1]] + 1
            ends[name].append(int(np.flatnonzero(mine == own[-1])[0]))  # its place in the user's sequence
            first += len(range(len(own), 1, -SMALL["max_len"]))
        assert first == len(windows)
    assert all(r > h for r, h in zip(ends["refit"], ends["hold-out"]))  # later in the sequence, every user
    assert not torch.equal(refit["state"]["item.weight"], kept["state"]["item.weight"])
    # the refit is that many epochs from the same start: with the count at 0 it is the start itself
    start = fit_sequence(split, **SMALL, lr=0.0, refit=True)
    assert start["report"]["refit_epochs"] == 0
    assert torch.equal(start["state"]["item.weight"], fit_sequence(split, **SMALL, lr=0.0)["state"]["item.weight"])


def _without_newest(split):
    from mtrec.model.collaborative import newest_per_user

    keep = split.role == TRAIN
    keep[split.train[newest_per_user(split, split.train)]] = False
    return keep


def test_text_start_is_the_texts_principal_components_at_the_random_starts_spread():
    gen = torch.Generator().manual_seed(0)
    # two groups of items whose texts differ along one direction, plus noise
    group = torch.tensor([1.0] * 10 + [-1.0] * 10)
    enc = 3 * group[:, None] * torch.linspace(1, 2, 12)[None] + 0.1 * torch.randn(20, 12, generator=gen)
    start = text_start(enc, 4)
    assert start.shape == (20, 4) and start.dtype == torch.float32
    assert abs(float(start.std()) - 4**-0.5) < 1e-6  # SequenceNet's random start: normal(0, hidden ** -0.5)
    # the first component separates the groups; its sign is fixed, so negated encodings start the same
    first = start[:, 0]
    assert (first[:10] * first[10:].mean() < 0).all() and (first[10:] * first[:10].mean() < 0).all()
    torch.testing.assert_close(text_start(-enc, 4), start)
    # wider than the encodings: zero columns past their rank
    wide = text_start(enc, 16)
    assert wide.shape == (20, 16) and (wide[:, 12:] == 0).all() and abs(float(wide.std()) - 16**-0.5) < 1e-6


def test_the_sequence_fit_starts_from_the_given_item_rows():
    split = make_split(load_synthetic(num_users=40, num_items=30), "leave_one_out", seed=0)
    start = text_start(torch.randn(30, 20, generator=torch.Generator().manual_seed(1)), SMALL["hidden"])
    frozen = fit_sequence(split, **SMALL, lr=0.0, item_start=start)  # nothing moves: the start is kept
    assert torch.equal(frozen["state"]["item.weight"][1:], start)
    assert (frozen["state"]["item.weight"][0] == 0).all()  # padding
    texted, again = fit_sequence(split, **SMALL, item_start=start), fit_sequence(split, **SMALL, item_start=start)
    plain = fit_sequence(split, **SMALL)
    assert torch.equal(texted["state"]["item.weight"], again["state"]["item.weight"])  # deterministic
    assert not torch.equal(texted["state"]["item.weight"], plain["state"]["item.weight"])
    assert not torch.equal(texted["state"]["item.weight"][1:], start)  # and trained from there


def test_a_seed_ensemble_scores_the_mean_of_its_networks():
    """model.sequence_seeds=2: the first network is the one-network prior's fit, the second the next
    seed's (the same cached fits), and the prior scores their mean."""
    from mtrec.model.build import empty_heads, sequence_prior

    split = make_split(load_synthetic(num_users=40, num_items=30), "leave_one_out", seed=0)
    ds = split.dataset

    def heads(seeds):
        return build_heads(ds, torch.randn(ds.num_items, 8), split.train, 8, 4.0, split=split, seed=3,
                           ranking_prior="sequence", sequence_len=6, sequence_seeds=seeds).eval()

    one, two = heads(1), heads(2)
    assert len(one.sequence_members) == 0 and len(two.sequence_members) == 1
    assert torch.equal(two.sequence.item.weight, one.sequence.item.weight)
    assert torch.equal(two.sequence_members[0].item.weight, sequence_prior(split, 6, 4)["state"]["item.weight"])
    history = history_inputs(split, np.arange(12), TEST, 6)
    history[0] = 0  # a row without history: no prior
    with torch.no_grad():
        by_hand = [net(history)[:, -1] @ net.catalog().T for net in (two.sequence, two.sequence_members[0])]
        mean = two.sequence_scores(history)
        assert not torch.allclose(by_hand[0][1:], by_hand[1][1:])
        torch.testing.assert_close(mean[1:], (by_hand[0][1:] + by_hand[1][1:]) / 2)
        assert (mean[0] == 0).all()
        assert torch.equal(one.sequence_scores(history)[1:], by_hand[0][1:])
    # a run folder's empty heads have both networks' shapes, and load to the same scores
    from mtrec.config import from_dict

    cfg = from_dict({"model": {"ranking_prior": "sequence", "sequence_len": 6, "sequence_seeds": 2, "collab_dim": 0,
                               "item_dim": 8}}).model
    empty = empty_heads(ds, cfg, 8)
    empty.load_state_dict(two.state_dict())
    with torch.no_grad():
        assert torch.equal(empty.eval().sequence_scores(history), mean)
    with pytest.raises(ValueError, match="model.sequence_seeds: must be >= 1"):
        heads(0)


def test_history_ids_put_the_newest_item_last():
    split = make_split(load_synthetic(num_users=10, num_items=20), "leave_one_out", seed=0)
    factory = ExampleFactory(split, ExampleOptions(sequence_len=4))
    i = int(split.valid[0])
    ex = factory.make("recommendation", i, int(split.dataset.item_idx[i]), 1.0)
    earlier = split.history(i)
    want = (split.dataset.item_idx[earlier][-4:] + 1).tolist()
    got = history_ids([ex], 4)[0].tolist()
    assert got[-len(want):] == want and got[: 4 - len(want)] == [0] * (4 - len(want))
    assert torch.equal(history_ids([ex], 4), history_inputs(split, [int(split.dataset.user_idx[i])], VALID, 4))
    # without a sequential prior no example carries ids
    assert ExampleFactory(split).make("recommendation", i, 0, 1.0).history_items == ()


@pytest.fixture(scope="module")
def run(reading_run):
    """The tiny run with the sequential prior (and hybrid item tokens: tests/model/conftest.py)."""
    return reading_run[:4]


def test_the_network_is_frozen_and_its_weight_trains(run, reading_run):
    _, setup, before, _ = run
    params = dict(setup.model.named_parameters())
    seq = [n for n in params if (".sequence." in n or ".sequence_members." in n) and "original_module" not in n]
    assert any(".sequence_members.0." in n for n in seq)  # the seed ensemble's second network, frozen too
    assert seq and not any(params[n].requires_grad for n in seq)
    assert all(torch.equal(params[n], before[n]) for n in seq)
    weight = next(n for n in params if n.endswith("default.sequence_weight"))
    # trained (the ranking blend then sets the weight it chose: the trained one or 1)
    blend = reading_run[4]["rank_blend"]
    assert params[weight].requires_grad and float(before[weight]) == 1.0 != blend["trained_sequence"]
    assert float(params[weight]) == blend["sequence"]
    lora = [n for n in params if "lora_" in n]
    assert any(not torch.equal(params[n], before[n]) for n in lora)


def test_the_prior_part_is_what_prior_alone_scores(run):
    """`item_prior` holds the sequential scores too, and the bench's prior alone is exactly it."""
    _, setup, _, _ = run
    split = setup.split
    specs = eval_specs(split, ["recommendation"], setup.example_options, VALID, 0, 0)
    rows = np.arange(min(8, len(specs)))
    batch = setup.batcher.collate(specs.take(rows), np.arange(len(rows)),
                                  setup.batcher.templates("recommendation")[:1] * len(rows))
    users = batch["user"].numpy()
    assert torch.equal(batch["history"], history_inputs(split, users, VALID, 6))
    setup.model.eval()
    with torch.no_grad():
        out = setup.model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"],
                          with_prior=True, history=batch["history"])
        none = setup.model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"],
                           with_prior=True)
    seq = out["item_prior"] - none["item_prior"]
    assert seq.abs().max() > 0  # the sequence moved the prior, by the same amount as the scores
    torch.testing.assert_close(out["item_logits"] - none["item_logits"], seq)
    # the bench's settings for these runs (hybrid item tokens and the tiny config's encoding batch size: both
    # change the encodings, by the vocabulary and by float rounding)
    fresh = PriorAlone(**prior_settings(setup.cfg)).fit(split, seed=0)
    assert fresh.encoder["prompt.item_tokens"] == "hybrid" and fresh.encoder["model.encode_batch_size"] == 16
    heads = next(m for n, m in setup.model.named_modules() if n.endswith("modules_to_save.default"))
    # trained heads differ from fresh ones only where training moved them: compare a fresh build at step 0
    assert fresh.sequence_seeds == 2 and len(heads.sequence_members) == 1
    for mine, theirs in zip(fresh.heads.sequence_nets(), heads.sequence_nets(), strict=True):
        assert torch.equal(mine.item.weight, theirs.item.weight)
    assert not torch.equal(heads.sequence.item.weight, heads.sequence_members[0].item.weight)  # other seeds
    # both fitted from the backbone's text start, not the random one
    randomly = PriorAlone(collab_dim=setup.cfg.model.collab_dim, ranking_prior="both", sequence_len=6).fit(split, seed=0)
    assert not torch.equal(randomly.heads.sequence.item.weight, heads.sequence.item.weight)
    got = torch.as_tensor(fresh.score_all(users, VALID))
    want = fresh.heads(torch.zeros(len(users), 1), None, None, batch["user"], history=batch["history"])["item_logits"]
    torch.testing.assert_close(got, want)


def test_heads_score_in_full_precision_under_bf16_autocast():
    """The heads ignore the autocast around the model (bf16 on a GPU or an AVX-512 CPU, where
    train.mixed_precision auto picks it): every output is bit-identical to fp32, so a run evaluated in
    bf16 serves exactly its priors' ranking (under bf16 a score of ~10 rounds to 0.06 and ranks move)."""
    split = make_split(load_synthetic(num_users=60, num_items=50, seed=2), "leave_one_out")
    ds = split.dataset
    heads = build_heads(ds, torch.randn(ds.num_items, 16), split.train, 16, 4.0, collab_dim=4, split=split,
                        ranking_prior="both", sequence_len=6).eval()
    users = torch.arange(8)
    items = torch.arange(8)
    history = history_inputs(split, users.numpy(), TEST, 6)
    pooled = torch.randn(8, 16).bfloat16()  # as a bf16 backbone hands it over
    with torch.no_grad():
        want = heads(pooled, None, items, users, with_prior=True, history=history)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = heads(pooled, None, items, users, with_prior=True, history=history)
            # what the heads would give inside it otherwise: the same product in bf16 is not exact
            rounded = heads.rec_user_factors[:8] @ heads.rec_item_factors.T
    for name in ("item_logits", "item_prior", "like_logit", "rating"):
        assert got[name].dtype == torch.float32 and torch.equal(got[name], want[name]), name
    assert rounded.dtype == torch.bfloat16
    assert not torch.equal(rounded.float(), heads.rec_user_factors[:8] @ heads.rec_item_factors.T)


def test_run_folder_reloads_to_identical_scores(run):
    _, setup, _, run_dir = run
    rec = Recommender.from_run(run_dir, device="cpu", merge=False)
    user = rec.dataset.users[3].id
    examples = [rec.factory.make_now("recommendation", 3)]
    history = history_ids(examples, 6)
    assert (history > 0).any()
    ids = rec.renderer.render(examples[0], rec._template(examples[0]))
    setup.model.eval()
    from mtrec.batching import pad_right

    from mtrec.batching import item_slots

    input_ids, mask = pad_right([ids], rec.tokenizer.pad_token_id)
    kw = dict(history=history, item_slots=item_slots([ids], input_ids.shape[1]))  # the run writes item tokens
    with torch.no_grad():
        want = setup.model(input_ids, mask, None, None, torch.tensor([3]), **kw)["item_logits"]
        got = rec.model(input_ids, mask, None, None, torch.tensor([3]), **kw)["item_logits"]
    assert torch.equal(want, got)
    top = rec.recommend(user, k=5)[0]
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True) and len(top) == 5
    # a new user's named items reach the prior too: naming other items changes the scores
    a = rec.recommend(NewUser(history=[rec.dataset.items[1].id]), k=40, exclude_seen=False)[0]
    b = rec.recommend(NewUser(history=[rec.dataset.items[2].id]), k=40, exclude_seen=False)[0]
    assert dict(a) != dict(b)


def test_cold_items_get_no_sequential_prior():
    split = cold_items(load_synthetic(num_users=40, num_items=30), seed=3)
    heads = build_heads(split.dataset, torch.randn(split.dataset.num_items, 8), split.train, 8, 4.0,
                        collab_dim=4, split=split, seed=0, ranking_prior="sequence", sequence_len=6)
    held = torch.as_tensor(np.flatnonzero(split.heldout_items))
    rows = heads.sequence.item.weight.detach()
    assert (rows[held + 1] == 0).all() and (rows[1:].abs().sum(1) > 0).sum() == split.dataset.num_items - len(held)
    assert (heads.item_bias == 0).all() and (heads.rec_item_factors == 0).all()  # "sequence": no factors
    with pytest.raises(ValueError, match="model.ranking_prior"):
        build_heads(split.dataset, torch.randn(split.dataset.num_items, 8), split.train, 8, 4.0,
                    split=split, ranking_prior="sasrec")


def test_an_update_refits_the_sequential_prior_on_the_grown_catalog(run, tmp_path):
    from safetensors.torch import load_file

    from mtrec.run import load_catalog
    from mtrec.update import update
    from new_data import new_data

    _, _, _, run_dir = run
    new = new_data(tmp_path / "new", load_catalog(run_dir / "catalog"), [("3", 5.0), ("4", 4.0)])
    update(run_dir, new, tmp_path / "out", steps=0)
    a, b = (load_file(str(d / "adapter/adapter_model.safetensors")) for d in (run_dir, tmp_path / "out"))
    for key in ("base_model.model.heads.sequence.item.weight", "base_model.model.heads.sequence_members.0.item.weight"):
        assert b[key].shape[0] == a[key].shape[0] + 1, key  # one row more: the new item
    w = "base_model.model.heads.sequence_weight"
    assert torch.equal(a[w], b[w])  # what training learned is carried over
