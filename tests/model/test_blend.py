"""The ranking blend (`train.rank_blend`): the backbone term's share and the sequential prior's weight,
chosen by validation NDCG@10 after training."""

import math

import torch
from accelerate.utils import set_seed

from mtrec import metrics
from mtrec.data.splits import VALID
from mtrec.kinds import KIND_IDS
from mtrec.model.blend import OFF, choose, setting_label, tune_rank_blend
from mtrec.model.stacking import RANKING_PRIORS
from mtrec.model.build import heads_of
from mtrec.pipeline import eval_specs, evaluate_rows
from mtrec.training import build_setup, train

BLEND = ["model.ranking_prior=both", "model.sequence_len=6", "model.collab_dim=4", "train.eval_users=0"]


def _ndcg(setup, specs) -> float:
    rank = evaluate_rows(setup.model, setup.batcher, specs, setup.split, VALID)["rank"]
    return metrics.ndcg(rank[rank >= 0], 10)  # (other kinds' rows have rank -1)


def test_the_blend_scores_every_setting_and_keeps_the_priors_on_noise(tiny_config, monkeypatch):
    """A backbone term made loud and random (a scale of 400 on an untrained query): the blend scores
    every setting as evaluating the model with it would, and on 30 rows no setting beats the priors
    alone by an interval (the best, ×0.25, by +0.03 [−0.07, +0.15]), so it keeps the priors alone
    and leaves the model scoring exactly that."""
    set_seed(0)
    setup = build_setup(tiny_config(*BLEND))
    heads = heads_of(setup.model)
    specs = eval_specs(setup.split, setup.kinds, setup.example_options, VALID, 0, 0)
    with torch.no_grad():
        heads.log_scale.fill_(math.log(400.0))
        heads.sequence_weight.fill_(0.5)
    loud = _ndcg(setup, specs)
    out = tune_rank_blend(setup.model, heads, setup.batcher, specs, setup.split, VALID)
    table = out["ndcg@10"]
    assert len(table) == 8 and out["rows"] == int((specs.kind == KIND_IDS["recommendation"]).sum())
    assert math.isclose(table["text x1, sequence 0.5"], loud, abs_tol=1e-4)  # the decomposition is exact
    assert table[out["best"]] == max(table.values()) > table["text x0, sequence 1"]
    iv = out["against_prior"]
    assert math.isclose(iv["diff"], table[out["best"]] - table["text x0, sequence 1"], abs_tol=1e-4)
    assert iv["low"] < 0 and (out["text"], out["sequence"]) == (0.0, 1.0)  # not measurable: the priors alone
    assert math.isclose(_ndcg(setup, specs), table["text x0, sequence 1"], abs_tol=1e-4)  # what the model now scores
    chosen = math.log(400.0) + math.log(out["text"]) if out["text"] > 0 else OFF
    assert math.isclose(float(heads.log_scale), chosen, abs_tol=1e-5)
    assert float(heads.sequence_weight) == out["sequence"]
    # more rows than MAX_ROWS: that many of them are read
    monkeypatch.setattr("mtrec.model.blend.MAX_ROWS", 7)
    assert tune_rank_blend(setup.model, heads, setup.batcher, specs, setup.split, VALID)["rows"] == 7


def test_a_trained_run_records_its_blend_and_serves_it(tiny_config, tmp_path):
    """Training ends with the blend (recorded in the result); the run folder reloads to the blended
    scores; with the knob off, nothing is chosen."""
    from mtrec.inference import Recommender

    cfg = tiny_config(*BLEND)
    set_seed(cfg.run.seed)
    setup = build_setup(cfg)
    result = train(cfg, tmp_path / "run", setup=setup)
    blend = result["rank_blend"]
    assert blend["text"] in (0.0, 0.25, 0.5, 1.0) and blend["rows"] > 0
    heads = heads_of(setup.model)
    assert float(heads.sequence_weight) == blend["sequence"]
    specs = eval_specs(setup.split, ["recommendation"], setup.example_options, VALID, 0, 0)
    want = evaluate_rows(setup.model, setup.batcher, specs, setup.split, VALID)["rank"]
    rec = Recommender.from_run(tmp_path / "run", device="cpu", merge=False)
    assert torch.equal(evaluate_rows(rec.model, setup.batcher, specs, setup.split, VALID)["rank"], want)
    kept = blend["ndcg@10"][setting_label((blend["priors"], blend["text"], blend["sequence"]))]
    assert math.isclose(kept, _ndcg(setup, specs), abs_tol=1e-4)
    # the priors as fitted are a setting (and the reference): with no backbone term and the sequential
    # prior at weight 1 they score what an untrained model with its term off scores (the bench's prior alone)
    fresh = build_setup(cfg)
    fresh_heads = heads_of(fresh.model)
    with torch.no_grad():
        fresh_heads.log_scale.fill_(OFF)
        fresh_heads.sequence_weight.fill_(1.0)
    assert math.isclose(blend["ndcg@10"]["fitted priors, text x0"], _ndcg(fresh, specs), abs_tol=1e-4)
    moved = [n for n in RANKING_PRIORS if not torch.equal(setup.fitted_ranking[n], fresh.fitted_ranking[n])]
    assert not moved  # the snapshot is the fit, whatever training did
    params = dict(heads.named_parameters())
    same = all(torch.equal(params[n].detach(), setup.fitted_ranking[n]) for n in RANKING_PRIORS)
    assert same == (blend["priors"] == "fitted")  # training moved them; the blend put them back only if it chose them
    off = tiny_config(*BLEND, "train.rank_blend=false", "train.max_steps=2")
    assert train(off, tmp_path / "off")["rank_blend"] is None
    # validating on 5 users, the blend still reads at least MIN_USERS (here: all 30)
    few = tiny_config(*BLEND, "train.eval_users=5", "train.max_steps=2")
    assert train(few, tmp_path / "few")["rank_blend"]["rows"] == len(specs)


def test_a_setting_is_kept_only_where_it_beats_the_priors_alone_by_an_interval():
    """`choose`: the best setting by mean NDCG, kept only where its paired interval against the priors
    alone excludes 0; a best ahead on noise leaves the priors alone."""
    gen = torch.Generator().manual_seed(0)
    prior = torch.rand(400, generator=gen)
    clear = prior + 0.05  # ahead on every row
    noisy = prior + 0.3 * torch.randn(400, generator=gen)
    noisy += 0.004 - (noisy - prior).mean()  # ahead by 0.004 on average, far inside the noise
    kept, best, interval = choose({(0.0, 1.0): prior, (0.5, 1.0): clear, (1.0, 1.0): prior - 0.1}, (0.0, 1.0))
    assert kept == best == (0.5, 1.0)
    assert math.isclose(interval["diff"], 0.05, abs_tol=1e-6) and interval["low"] > 0
    kept, best, interval = choose({(0.0, None): prior, (0.25, None): noisy}, (0.0, None))
    assert best == (0.25, None) and kept == (0.0, None)
    assert math.isclose(interval["diff"], 0.004, abs_tol=1e-6) and interval["low"] < 0 < interval["high"]
    # the priors alone best (or tied): kept, no interval
    assert choose({(0.0, None): prior, (1.0, None): prior.clone()}, (0.0, None)) == ((0.0, None), (0.0, None), None)
