"""The like head's text term (`model.like_text`): the like logit becomes ``a * p + c * h + s * t + b`` (prior,
the head's reading of the prompt, and ``t`` the mean cosine of the backbone's encodings of the newest history
items' texts with the item's), ``(a, c, s, b)`` fitted on validation after training (`fit_like_text`)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed

from mtrec.config import ConfigError
from mtrec.data.splits import VALID
from mtrec.model.collaborative import logistic_fit
from mtrec.model.build import heads_of
from mtrec.model.multitask import TaskHeads
from mtrec.pipeline import eval_specs, evaluate_rows
from mtrec.training import build_setup, train


def _heads(enc, length=2, sequence=None):
    torch.manual_seed(0)
    return TaskHeads(4, 2, torch.randn(len(enc), 4), torch.zeros(len(enc)), None, sequence=sequence,
                     like_text={"table": enc, "len": length}).eval()


def test_the_term_is_the_mean_cosine_of_the_newest_history_items_with_the_item():
    enc = torch.tensor([[1.0, 0, 0, 0], [0, 2, 0, 0], [1, 1, 0, 0], [0, 0, 3, 1], [1, 0, 1, 0]])
    heads = _heads(enc, length=2)
    e = F.normalize(enc - enc.mean(0), dim=-1)  # centred over the catalog, then unit rows
    # ids + 1, oldest first: row 0 read items 1 and 2 (item 0, older, is beyond length 2); row 1 has
    # one history item; row 2 none; row 3 names no item
    history = torch.tensor([[1, 2, 3], [0, 0, 4], [0, 0, 0], [0, 2, 3]])
    items = torch.tensor([4, 0, 3, -1])
    want = torch.tensor([(e[1] @ e[4] + e[2] @ e[4]) / 2, e[3] @ e[0], 0.0, 0.0])
    assert torch.allclose(heads.like_text_similarity(history, items), want, atol=1e-6)
    pooled = torch.randn(4, 4)
    with torch.no_grad():
        heads.item_like_offset.copy_(torch.tensor([0.1, -0.2, 0.3, -0.4, 0.5]))  # the prior p of each item
        heads.like.bias.fill_(0.25)  # the head's reading h (zero weights: its bias alone)
        z = heads(pooled, items=items, history=history)["like_logit"]
        # (1, 1, 0, 0): the like logit as without the term
        assert torch.allclose(z, heads(pooled, items=items)["like_logit"], atol=1e-6)
        heads.like_prior_scale.fill_(0.5)
        heads.like_head_scale.fill_(2.0)
        heads.like_text_scale.fill_(7.0)
        heads.like_text_bias.fill_(0.3)
        mixed = heads(pooled, items=items, history=history)["like_logit"]
    prior = torch.tensor([0.5, 0.1, -0.4, 0.0])  # row 3 names no item: no offset
    assert torch.allclose(mixed, 0.5 * prior + 2.0 * 0.25 + 7.0 * want + 0.3, atol=1e-5)
    assert "item_text" not in dict(heads.named_parameters())  # a frozen buffer, saved with the heads
    assert "item_text" in heads.state_dict()


def test_the_sequential_prior_reads_only_its_own_width_of_a_longer_history():
    shape = dict(num_items=5, max_len=3, hidden=8, blocks=1, heads=1)
    heads = _heads(torch.randn(5, 4), length=5, sequence={"shape": shape})
    pooled = torch.randn(2, 4)
    wide = torch.tensor([[1, 2, 3, 4, 5], [5, 4, 0, 1, 2]])
    other_old = wide.clone()
    other_old[:, :2] = torch.tensor([[3, 3], [0, 0]])  # columns beyond the prior's 3
    with torch.no_grad():
        a = heads(pooled, history=wide)["item_logits"]
        assert torch.equal(a, heads(pooled, history=wide[:, -3:])["item_logits"])
        assert torch.equal(a, heads(pooled, history=other_old)["item_logits"])


def test_the_fit_recovers_the_generating_weights_at_the_likelihood_maximum():
    g = torch.Generator().manual_seed(0)
    base, feature = torch.randn(20000, generator=g) * 2, torch.rand(20000, generator=g) * 2 - 1
    columns = torch.stack([base, feature, torch.ones(20000)], 1)
    labels = torch.bernoulli(torch.sigmoid(columns @ torch.tensor([0.5, 3.0, -0.8])), generator=g)
    w = torch.as_tensor(logistic_fit(columns, labels))
    assert torch.allclose(w.float(), torch.tensor([0.5, 3.0, -0.8]), atol=0.15)

    def nll(v):
        return float(F.binary_cross_entropy_with_logits(columns.double() @ v, labels.double()))

    for i in range(3):  # a maximum, not just near one
        for d in (-0.02, 0.02):
            assert nll(w) < nll(w + d * torch.eye(3, dtype=torch.float64)[i])
    flat = torch.as_tensor(logistic_fit(torch.stack([base, torch.zeros(20000), torch.ones(20000)], 1), labels))
    assert abs(float(flat[1])) < 1e-9  # a column that is 0 everywhere keeps weight 0


def test_a_run_fits_records_serves_and_updates_the_term(tiny_config, tmp_path):
    """Training ends with the fit (recorded; the model is left at it); the encodings never train; the
    run folder reloads to identical like logits, its export to the same preferences; an update encodes
    the grown catalog and carries the fitted weights."""
    from mtrec.inference import Recommender
    from mtrec.run import load_catalog
    from mtrec.update import update
    from new_data import new_data

    with pytest.raises(ConfigError, match="model.like_text"):
        tiny_config("model.like_text=-1")
    cfg = tiny_config("model.like_text=4", "train.eval_users=0")
    set_seed(cfg.run.seed)
    setup = build_setup(cfg)
    heads = heads_of(setup.model)
    start = heads.item_text.clone()
    assert float(heads.like_text_scale.detach()) == 0.0 and setup.example_options.sequence_len == 4
    result = train(cfg, tmp_path / "run", setup=setup)
    fit = result["like_text"]
    now = {"a": heads.like_prior_scale, "c": heads.like_head_scale, "s": heads.like_text_scale,
           "b": heads.like_text_bias}
    assert fit["rows"] > 0 and all(math.isclose(float(p.detach()), fit["fitted"][k], abs_tol=1e-4) for k, p in now.items())
    assert fit["log_loss"]["fitted"] <= min(fit["log_loss"]["no text"], fit["log_loss"]["trained"]) + 1e-6
    assert torch.equal(heads.item_text, start)  # frozen
    specs = eval_specs(setup.split, ["like"], setup.example_options, VALID, 0, 0)
    want = evaluate_rows(setup.model, setup.batcher, specs, setup.split, VALID)["like_logit"]
    rec = Recommender.from_run(tmp_path / "run", device="cpu", merge=False)
    assert torch.equal(evaluate_rows(rec.model, setup.batcher, specs, setup.split, VALID)["like_logit"], want)
    # an export (LoRA merged) serves the same preferences, the term included
    from mtrec.export import export_run

    export_run(tmp_path / "run", tmp_path / "export")
    merged = Recommender.from_run(tmp_path / "export", device="cpu")
    users, items = [u.id for u in rec.dataset.users[:6]], [it.id for it in rec.dataset.items[:3]]
    assert merged.prefer(users, items[0]) == pytest.approx(rec.prefer(users, items[0]), abs=1e-5)
    with torch.no_grad():
        heads_of(rec.model).like_text_scale.zero_()
    assert rec.prefer(users, items[0]) != pytest.approx(merged.prefer(users, items[0]), abs=1e-5)  # the term is live
    # an update: one new item, encoded into the grown buffer; the fitted scale carried over
    from safetensors.torch import load_file

    new = new_data(tmp_path / "new", load_catalog(tmp_path / "run" / "catalog"), [("3", 5.0)])
    update(tmp_path / "run", new, tmp_path / "out", steps=0)
    a, b = (load_file(str(d / "adapter/adapter_model.safetensors")) for d in (tmp_path / "run", tmp_path / "out"))
    key = "base_model.model.heads.item_text"
    assert b[key].shape[0] == a[key].shape[0] + 1
    assert np.isclose(float(b["base_model.model.heads.like_text_scale"]), fit["fitted"]["s"], atol=1e-4)
