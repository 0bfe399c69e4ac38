"""Training only the top k layers (`model.train_top_layers`), the activation cache and fixed batches."""

import numpy as np
import pytest
import torch
from accelerate.utils import set_seed

from mtrec.config import ConfigError
from mtrec.data.splits import VALID
from mtrec.inference import Recommender
from mtrec.kinds import KIND_NAMES
from mtrec.model.layer_cut import ActivationCache, batch_key
from mtrec.pipeline import eval_specs
from mtrec.training import build_setup, train, _step_loss


def config(backbone, *overrides):
    from mtrec.config import load_config
    from tests_paths import ROOT

    return load_config(ROOT / "tests/configs/tiny.yaml", [f"model.backbone={backbone}", "model.train_top_layers=2",
                                                         "train.fixed_batches=2", "train.max_steps=6",
                                                         "train.eval_every=3", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, four_layers):
    # the collaborative fits come from the shared test cache (the tiny config's, fitted once); the
    # activation cache starts empty in a folder of its own
    cfg = config(four_layers, f"train.activation_cache_dir={tmp_path_factory.mktemp('activations')}")
    set_seed(cfg.run.seed)  # as train() does before it builds: both runs start from the same weights
    setup = build_setup(cfg)
    before = {n: p.detach().clone() for n, p in setup.model.named_parameters()}
    run_dir = tmp_path_factory.mktemp("runs") / "top2"
    result = train(cfg, run_dir, setup=setup)
    uncached = train(config(four_layers, "train.activation_cache=false"), tmp_path_factory.mktemp("runs") / "plain")
    return cfg, setup, before, run_dir, result, uncached


def test_only_the_top_layers_train(trained):
    _, setup, before, _, result, _ = trained
    lora = [n for n, _ in setup.model.named_parameters() if "lora_" in n]
    assert lora and all(".layers.2." in n or ".layers.3." in n for n in lora), lora
    moved = {n: not torch.equal(before[n], p.detach()) for n, p in setup.model.named_parameters()}
    trainable = {n for n, p in setup.model.named_parameters() if p.requires_grad}
    assert not any(moved[n] for n in moved if n not in trainable), "a frozen parameter changed"
    assert any(moved[n] for n in trainable if "lora_B" in n)
    assert any(moved[n] for n in trainable if "modules_to_save.default.rating.weight" in n)
    tokens = [n for n in moved if "trainable_tokens_delta" in n]
    assert tokens and not any(n in trainable or moved[n] for n in tokens)  # instruction-token rows frozen
    assert setup.bottom.cut == 2 and all(not m.training for m in setup.bottom.frozen)  # no dropout below the cut


def test_fixed_batches_replay_from_the_cache(trained):
    *_, result, uncached = trained
    # 6 steps over 2 fixed batches: each computed once, then read back twice
    assert {k: result["activation_cache"][k] for k in ("hits", "misses", "stored")} == {"hits": 4, "misses": 2, "stored": 2}
    assert "activation_cache" not in uncached


def test_cached_path_gives_the_uncached_losses(trained):
    *_, result, uncached = trained
    got = [h["loss"] for h in result["history"]]
    want = [h["loss"] for h in uncached["history"]]
    assert len(got) == 3 and got[-1] != got[0]  # validation at steps 0, 3, 6: training moved it
    assert np.allclose(got, want, rtol=0, atol=1e-4), (got, want)


def test_one_step_replayed_equals_computed(trained, tmp_path):
    """Loss and every gradient of one batch, through the frozen layers and replayed from the cache."""
    cfg, setup, *_ = trained
    model = setup.model
    cache = ActivationCache(setup.bottom, "test", folder=tmp_path)
    batch = setup.batcher.collate(*_some_rows(setup, 8))
    grads = []
    for expect_hit in (False, True):
        model.zero_grad()
        with cache.around(batch["input_ids"], batch["attention_mask"]):
            loss, _, _ = _step_loss(model, batch, setup.weights, cfg)
            loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
        assert cache.stats["hits"] == int(expect_hit)
    (l0, g0), (l1, g1) = grads
    assert abs(float(l0 - l1)) <= 1e-6 and set(g0) == set(g1) and len(g0) > 0
    assert all(torch.allclose(g0[n], g1[n], atol=1e-6) for n in g0)
    assert not any(".layers.0." in n or ".layers.1." in n for n in g0)  # backward stopped at the cut


def _some_rows(setup, n):
    specs = eval_specs(setup.split, setup.kinds, setup.example_options, VALID, max_users=8)
    rows = np.arange(min(len(specs), n))
    return specs, rows, [setup.batcher.templates(KIND_NAMES[int(k)])[0] for k in specs.kind[rows]]


def test_cache_key_covers_backbone_token_rows_and_prompt(trained, tmp_path, four_layers):
    cfg, setup, *_ = trained
    bottom = setup.bottom
    first = ActivationCache(bottom, "k", folder=tmp_path).dir
    assert ActivationCache(bottom, "k", folder=tmp_path).dir == first            # same weights: same folder
    assert ActivationCache(bottom, "other precision", folder=tmp_path).dir != first
    emb = setup.model.base_model.model.backbone.get_input_embeddings()
    delta = next(p for n, p in emb.named_parameters() if "trainable_tokens_delta" in n)
    kept = delta.detach().clone()
    with torch.no_grad():
        delta[0, 0] += 1.0                                                      # one instruction-token row moved
    try:
        assert ActivationCache(bottom, "k", folder=tmp_path).dir != first
    finally:
        with torch.no_grad():
            delta.copy_(kept)
    assert ActivationCache(bottom, "k", folder=tmp_path).dir == first
    other = build_setup(config(four_layers, "model.random_init=true"))          # other backbone weights
    assert ActivationCache(other.bottom, "k", folder=tmp_path).dir != first
    specs, rows, templates = _some_rows(setup, 4)
    batch = setup.batcher.collate(specs, rows, templates)
    changed = batch["input_ids"].clone()
    changed[0, -1] += 1                                                         # one prompt token differs
    assert batch_key(changed, batch["attention_mask"]) != batch_key(batch["input_ids"], batch["attention_mask"])


def test_fixed_batches_repeat_in_a_new_order_each_epoch(trained):
    _, setup, *_ = trained
    from mtrec.pipeline import TaskSampler

    sampler = TaskSampler({k: s for k, s in _specs(setup).items()}, {k: 1 / len(setup.kinds) for k in setup.kinds},
                          setup.batcher, 4, seed=0, buckets=2, fixed=4)
    keys = [batch_key(b["input_ids"], b["attention_mask"]) for b in (sampler.batch(d) for d in range(12))]
    epochs = [keys[0:4], keys[4:8], keys[8:12]]
    assert len(set(keys)) == 4 and all(sorted(e) == sorted(epochs[0]) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled between epochs


def _specs(setup):
    from mtrec.pipeline import train_specs

    return train_specs(setup.split, setup.kinds, setup.example_options, None, 0)


def test_train_top_layers_is_checked(four_layers):
    from mtrec.config import load_config
    from tests_paths import ROOT

    with pytest.raises(ConfigError, match="model.train_top_layers"):
        load_config(ROOT / "tests/configs/tiny.yaml", [f"model.backbone={four_layers}", "model.train_top_layers=0"])
    with pytest.raises(ValueError, match="model.train_top_layers: 5 is not between 1 and the backbone's 4 layers"):
        build_setup(config(four_layers, "model.train_top_layers=5"))


def test_top_layers_run_folder_reloads_exactly(trained):
    """The frozen instruction-token rows and the top layers' LoRA come back from the run folder."""
    _, setup, _, run_dir, *_ = trained
    rec = Recommender.from_run(run_dir, device="cpu", merge=False)
    batch = setup.batcher.collate(*_some_rows(setup, 12))
    setup.model.eval()
    with torch.no_grad():
        want = setup.model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"])
        got = rec.model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"])
    for key in ("rating", "like_logit", "category_logits", "item_logits"):
        assert torch.equal(want[key], got[key]), key
