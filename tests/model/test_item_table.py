"""The item table's starting rows (`mtrec.model.build.initial_item_table`): each distinct text is
encoded once, an item without descriptive text (``described=False``) is never passed through the
backbone (its row comes from its categories), and the encodings are cached on disk by content."""

from __future__ import annotations

import pytest
import torch

from mtrec.config import load_config
from mtrec.data.ciao_epinions import _product_item
from mtrec.data.records import Interaction, Item, RecDataset, User
from mtrec.model.backbone import resolve_backbone
from mtrec.model.build import build_backbone, initial_item_table, item_texts
from mtrec.prompts import load_prompts

from tests.conftest import ROOT


def catalog() -> RecDataset:
    items = [
        Item("1", "Dune", "A desert planet.", ("sci-fi",)),
        Item("2", "Dune", "A desert planet.", ("sci-fi",)),            # renders exactly as item 1
        Item("3", "Emma", "A village.", ("romance",)),
        _product_item("4077", ["Books", "Travel"], "Ciao"),            # no descriptive text
        _product_item("5188", ["Books"], "Ciao"),
        Item("6000", "product 6000", "", (), described=False),               # nothing at all
        _product_item("7000", ["Travel"], "Ciao"),
    ]
    users = [User("u1")]
    return RecDataset.from_records("toy", users, items, [Interaction("u1", "1", weight=1.0)])


@pytest.fixture
def built(tiny_backbone_dir):
    cfg = load_config(ROOT / "tests/configs/tiny.yaml", [f"model.backbone={tiny_backbone_dir}",
                                                         "model.item_init=backbone", "model.item_noise=0"])
    prompts = load_prompts(ROOT / "prompts")
    backbone, tokenizer, _, pooling = build_backbone(cfg.model, prompts, resolve_backbone(str(tiny_backbone_dir)))
    seen: list[str] = []

    def spy(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        seen.extend(tokenizer.decode(row[m.bool()]) for row, m in zip(ids, mask))

    backbone.register_forward_pre_hook(spy, with_kwargs=True)
    return cfg, prompts, backbone, tokenizer, pooling, seen


def test_ciao_and_epinions_products_are_undescribed():
    it = _product_item("4077", ["Books", "Travel"], "Ciao")
    assert not it.described and it.categories == ("Books", "Travel")
    assert Item("1", "Dune").described


def test_identical_texts_encoded_once_and_undescribed_items_never_reach_the_backbone(built):
    cfg, prompts, backbone, tokenizer, pooling, seen = built
    ds = catalog()
    texts, pair_item, pair_text = item_texts(ds, prompts)
    render = prompts["recommendation"].render_item
    assert texts == [render("Dune", "A desert planet.", ("sci-fi",)), render("Emma", "A village.", ("romance",)),
                     "Books", "Travel"]
    assert pair_item.tolist() == [0, 1, 2, 3, 3, 4, 6] and pair_text.tolist() == [0, 0, 1, 2, 3, 2, 3]
    hidden = backbone.config.hidden_size
    table = initial_item_table(ds, cfg.model, backbone, tokenizer, prompts, pooling, hidden, seed=0)
    # one forward row per distinct text, and no product id (nor its placeholder title) among them
    assert sorted(seen) == sorted(texts)
    assert not any(i in s for s in seen for i in ("4077", "5188", "product"))
    assert table.shape == (7, hidden)
    assert torch.equal(table[0], table[1])                               # the one shared encoding
    assert not torch.allclose(table[0], table[2])
    assert torch.allclose(table[3], (table[4] + table[6]) / 2, atol=1e-6)  # Books+Travel = mean(Books, Travel)
    assert torch.count_nonzero(table[5]) == 0                            # no text, no categories: zeros


def test_encodings_are_cached_by_content(built, tmp_path, monkeypatch):
    cfg, prompts, backbone, tokenizer, pooling, seen = built
    monkeypatch.setenv("MTREC_CACHE_DIR", str(tmp_path))
    ds, hidden = catalog(), backbone.config.hidden_size
    first = initial_item_table(ds, cfg.model, backbone, tokenizer, prompts, pooling, hidden, 0, backbone_hash="h")
    assert len(seen) == 4 and len(list((tmp_path / "item-encodings").glob("*.pt"))) == 1
    again = initial_item_table(ds, cfg.model, backbone, tokenizer, prompts, pooling, hidden, 0, backbone_hash="h")
    assert len(seen) == 4 and torch.equal(first, again)                 # read back, no forward pass
    other = RecDataset.from_records("toy", ds.users, [*ds.items[:2], Item("3", "Persuasion", "A navy.", ("romance",)),
                                                      *ds.items[3:]], [Interaction("u1", "1", weight=1.0)])
    initial_item_table(other, cfg.model, backbone, tokenizer, prompts, pooling, hidden, 0, backbone_hash="h")
    assert len(seen) == 4 + 4 and len(list((tmp_path / "item-encodings").glob("*.pt"))) == 2  # a changed text misses
    # another encode batch size pads otherwise (the last float bits): its own entry, not the first run's bits
    from dataclasses import replace

    wider = replace(cfg.model, encode_batch_size=cfg.model.encode_batch_size + 1)
    initial_item_table(ds, wider, backbone, tokenizer, prompts, pooling, hidden, 0, backbone_hash="h")
    assert len(seen) == 12 and len(list((tmp_path / "item-encodings").glob("*.pt"))) == 3


def test_random_init_encodings_are_cached_per_seed(built, tmp_path, monkeypatch):
    """A random-init backbone's encodings are keyed by its seed too: the same seed reuses them, another
    seed (other weights) and the pretrained weights miss."""
    from dataclasses import replace

    cfg, prompts, backbone, tokenizer, pooling, seen = built
    monkeypatch.setenv("MTREC_CACHE_DIR", str(tmp_path))
    ds, hidden = catalog(), backbone.config.hidden_size
    rand = replace(cfg.model, random_init=True)
    first = initial_item_table(ds, rand, backbone, tokenizer, prompts, pooling, hidden, 0, backbone_hash="h")
    again = initial_item_table(ds, rand, backbone, tokenizer, prompts, pooling, hidden, 0, backbone_hash="h")
    assert len(seen) == 4 and torch.equal(first, again)
    initial_item_table(ds, rand, backbone, tokenizer, prompts, pooling, hidden, 1, backbone_hash="h")
    initial_item_table(ds, cfg.model, backbone, tokenizer, prompts, pooling, hidden, 0, backbone_hash="h")
    assert len(seen) == 12 and len(list((tmp_path / "item-encodings").glob("*.pt"))) == 3
