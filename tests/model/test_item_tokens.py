"""Hybrid item tokens (`prompt.item_tokens: hybrid | both`): each history / friend's item as one
input embedding, a trained projection of its collaborative embedding (LLaRA, E4SRec)."""

import numpy as np
import pytest
import torch

from mtrec.batching import pad_right
from mtrec.config import ConfigError
from mtrec.inference import NewUser, Recommender
from mtrec.model.build import heads_of
from mtrec.prompts.render import ITEM_TOKEN
from mtrec.training import build_setup

# the reading run's config without its sequential prior (nor the settings only that prior takes)
FACTORS_ONLY = ("model.ranking_prior=factors", "model.sequence_init=random", "model.sequence_seeds=1")


@pytest.fixture(scope="module")
def run(reading_run):
    cfg, setup, before, run_dir, result = reading_run
    # per prompt kind: examples/s and mean prompt length; the lengths add up to the tokens trained on
    per_kind = result["examples_per_kind"]
    total = sum(result["prompt_tokens_per_kind"][k] * n for k, n in per_kind.items())
    assert abs(total - result["tokens"]) < 0.1 * len(per_kind) * max(per_kind.values())
    assert set(result["kind_examples_per_second"]) == set(per_kind)
    return cfg, setup, before, run_dir


def _batch(setup, n=8):
    from mtrec.pipeline import TaskSampler, mixing_probs, train_specs

    specs = train_specs(setup.split, setup.kinds, setup.example_options, None, 0)
    sampler = TaskSampler(specs, mixing_probs({k: len(v) for k, v in specs.items()}, "temperature", 2.0),
                          setup.batcher, n, 0)
    return sampler.batch(0)


def test_each_history_item_is_one_token_at_its_item(run):
    _, setup, _, _ = run
    split, batcher = setup.split, setup.batcher
    i = int(split.train[-1])
    ex = batcher.factory.make("recommendation", i, int(split.dataset.item_idx[i]), 1.0)
    template = batcher.templates("recommendation")[0]
    hybrid = batcher.renderer.render(ex, template)
    text = batcher.renderer.as_text().render(ex, template)
    token = setup.tokenizer.convert_tokens_to_ids(ITEM_TOKEN)
    shown = ex.history[: hybrid.history_shown] + ex.social[: hybrid.social_shown]  # friends' items too
    assert hybrid.history_shown > 1 and hybrid.social_shown > 0 and shown[0].title not in hybrid.text
    assert sorted(item for _, item in hybrid.item_slots) == sorted(h.item for h in shown)
    assert all(hybrid.input_ids[p] == token for p, _ in hybrid.item_slots)
    assert hybrid.num_tokens < text.num_tokens and not text.item_slots  # the prompt shrinks
    # positions follow the order the template writes the entries in (checked on the titles it shows)
    own = ex.history[: hybrid.history_shown]
    import dataclasses

    text = batcher.renderer.as_text().render(dataclasses.replace(ex, history=own, social=()), template)
    assert text.history_shown == len(own)
    order = [text.text.index(h.title) for h in own]
    by_position = [item for _, item in sorted(hybrid.item_slots) if item in {h.item for h in own}]
    assert by_position == [h.item for _, h in sorted(zip(order, own), key=lambda x: x[0])]


def test_projector_and_lora_train_and_the_base_stays_frozen(run):
    _, setup, before, _ = run
    params = dict(setup.model.named_parameters())
    projector = [n for n in params if "item_projector" in n and "original_module" not in n]
    assert projector and all(params[n].requires_grad for n in projector)
    assert any(not torch.equal(params[n], before[n]) for n in projector)
    base = [n for n in params if n.startswith("base_model.model.backbone") and "lora_" not in n
            and "trainable_tokens" not in n]
    assert base and all(not params[n].requires_grad and torch.equal(params[n], before[n]) for n in base)


def test_the_item_token_carries_the_projection(run):
    """Scores move when the projector changes, and an item token's row is never read."""
    _, setup, _, _ = run
    batch = _batch(setup)
    assert "item_slots" in batch and (batch["item_slots"] >= 0).any()
    model = setup.model
    model.eval()
    args = (batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"])
    heads = heads_of(model)
    log_scale = heads.log_scale.detach().clone()
    with torch.no_grad():
        heads.log_scale.zero_()  # the backbone's ranking term on, whatever the ranking blend chose
        a = model(*args, history=batch["history"], item_slots=batch["item_slots"])["item_logits"]
        emb = model.base_model.model.backbone.get_input_embeddings()
        weight = next(p for n, p in emb.named_parameters() if n.endswith("weight") and "trainable" not in n)
        token = setup.tokenizer.convert_tokens_to_ids(ITEM_TOKEN)
        saved = weight[token].clone()
        weight[token] += 1.0  # the placeholder row: replaced, so nothing changes
        b = model(*args, history=batch["history"], item_slots=batch["item_slots"])["item_logits"]
        weight[token] = saved
        proj = next(p for n, p in model.named_parameters() if n.endswith("default.item_projector.3.bias"))
        kept = proj.clone()
        proj += 0.5
        c = model(*args, history=batch["history"], item_slots=batch["item_slots"])["item_logits"]
        proj.copy_(kept)
        heads.log_scale.copy_(log_scale)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_run_folder_reloads_to_identical_scores(run):
    _, setup, _, run_dir = run
    rec = Recommender.from_run(run_dir, device="cpu", merge=False)
    ex = rec.factory.make_now("recommendation", 3)
    rendered = rec.renderer.render(ex, rec._template(ex))
    assert rendered.item_slots
    from mtrec.batching import item_slots
    from mtrec.tasks import history_ids

    ids, mask = pad_right([rendered], rec.tokenizer.pad_token_id)
    kw = dict(history=history_ids([ex], 6), item_slots=item_slots([rendered], ids.shape[1]))
    setup.model.eval()
    with torch.no_grad():
        want = setup.model(ids, mask, None, None, torch.tensor([3]), **kw)["item_logits"]
        got = rec.model(ids, mask, None, None, torch.tensor([3]), **kw)["item_logits"]
    assert torch.equal(want, got)
    assert len(rec.recommend(rec.dataset.users[3].id, k=5)[0]) == 5
    assert len(rec.recommend(NewUser(history=[rec.dataset.items[1].id]), k=5)[0]) == 5


def test_an_item_without_an_embedding_keeps_its_title(run):
    _, setup, _, _ = run
    from mtrec.prompts import PromptRenderer

    r = setup.batcher.renderer
    ex = setup.batcher.factory.make_now("recommendation", 3)
    first = ex.history[0]
    known = np.ones(setup.split.dataset.num_items, bool)
    known[first.item] = False
    cold = PromptRenderer(r.tokenizer, r.instruction_tokens, r.options, known)
    out = cold.render(ex, setup.batcher.templates("recommendation")[0])
    assert first.title in out.text and first.item not in [i for _, i in out.item_slots]


def test_both_writes_the_token_before_the_title_and_the_curriculum_mixes(reading_cfg):
    from mtrec.pipeline import TaskSampler, mixing_probs, train_specs

    setup = build_setup(reading_cfg("prompt.item_tokens=both"))
    ex = setup.batcher.factory.make_now("recommendation", 3)
    out = setup.batcher.renderer.render(ex, setup.batcher.templates("recommendation")[0])
    assert f"{ITEM_TOKEN} {ex.history[0].title}" in out.text and out.item_slots
    specs = train_specs(setup.split, setup.kinds, setup.example_options, None, 0)
    probs = mixing_probs({k: len(v) for k, v in specs.items()}, "temperature", 2.0)
    sampler = TaskSampler(specs, probs, setup.batcher, 32, 0, curriculum=100)
    share = [float(((sampler.batch(s)["item_slots"] >= 0).any(1)).float().mean()) if "item_slots" in sampler.batch(s)
             else 0.0 for s in (0, 50, 100)]
    assert share[0] == 0.0 and 0.0 < share[1] < share[2]


def test_hybrid_tokens_and_frozen_layers_are_refused(reading_cfg):
    with pytest.raises(ConfigError, match="prompt.item_tokens"):
        build_setup(reading_cfg("model.train_top_layers=1"))
    with pytest.raises(ConfigError, match="prompt.item_tokens: 'ids'"):
        build_setup(reading_cfg("prompt.item_tokens=ids"))


def test_hybrid_tokens_without_the_sequential_prior_read_the_factors(reading_cfg):
    """With the factors prior alone the projector reads the ranking factors (collab_dim wide), and
    without factors the item table (a run with neither used to fail building the heads)."""
    heads = lambda s: s.model.base_model.model.heads.modules_to_save["default"]  # noqa: E731
    factors = heads(build_setup(reading_cfg(*FACTORS_ONLY, "model.collab_dim=4")))
    assert factors.token_source == "factors" and factors.item_projector[0].normalized_shape == (4,)
    table = heads(build_setup(reading_cfg(*FACTORS_ONLY, "model.collab_dim=0")))
    assert table.token_source == "table" and table.item_projector[0].normalized_shape == (table.item_table.shape[1],)
