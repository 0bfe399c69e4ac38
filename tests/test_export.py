"""`python -m mtrec.export`: the merged folder scores like its run without peft; int8 and bf16
variants; the paired bootstrap used to compare them."""

import numpy as np
import pytest
import torch

from mtrec import metrics
from mtrec.export import export_run, main
from mtrec.inference import Recommender
from mtrec.run import RunFolderError


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The session's tiny run folder (see tests/conftest.py)."""
    return tiny_run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    return export_run(run_dir, tmp_path_factory.mktemp("out") / "export")


def _all_scores(rec: Recommender) -> torch.Tensor:
    examples = [rec._example("recommendation", u.id) for u in rec.dataset.users]
    return torch.cat([out["item_logits"] for _, out in rec._batches(examples, 16, full_catalog=True)])


def _has_peft(rec: Recommender) -> bool:
    return any(type(m).__module__.startswith("peft") for m in rec.model.modules())


def test_export_scores_like_the_run_without_peft(run_dir, exported):
    adapter, merged, loaded = (
        Recommender.from_run(run_dir, device="cpu", merge=False),
        Recommender.from_run(exported, device="cpu"),
        Recommender.from_run(run_dir, device="cpu"),  # the default: merged on load
    )
    assert _has_peft(adapter) and not _has_peft(merged) and not _has_peft(loaded)
    a, b = _all_scores(adapter), _all_scores(merged)
    assert a.shape == (30, 40) and (a - b).abs().max() <= 1e-5
    assert (a - _all_scores(loaded)).abs().max() <= 1e-5  # rounding only
    users = [u.id for u in adapter.dataset.users]
    for got, want in zip(merged.recommend(users, k=10), adapter.recommend(users, k=10)):
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-5)
    items = ["1", "5", "9"]
    assert merged.rate("3", items) == pytest.approx(adapter.rate("3", items), abs=1e-5)
    assert merged.prefer("3", items) == pytest.approx(adapter.prefer("3", items), abs=1e-5)
    cold, cold_ref = (
        merged.recommend_for_history(["5", "13"], k=5),
        adapter.recommend_for_history(["5", "13"], k=5),
    )
    assert [i for i, _ in cold] == [i for i, _ in cold_ref]
    assert not (exported / "adapter").exists() and (exported / "manifest.json").exists()


def test_tables_are_stored_once(exported):
    from safetensors import safe_open

    with safe_open(str(exported / "heads.safetensors"), "pt") as f:
        names = list(f.keys())
    assert sum(n.endswith("item_table") for n in names) == 1
    assert sum(1 for _ in (exported / "backbone").glob("*.safetensors")) >= 1


def test_int8_and_bf16_variants_stay_close(exported):
    fp32 = Recommender.from_run(exported, device="cpu")
    int8 = Recommender.from_run(exported, device="cpu", precision="int8")
    bf16 = Recommender.from_run(exported, device="cpu", precision="bf16")
    from torch.ao.nn.quantized.dynamic import Linear as QuantLinear

    assert any(isinstance(m, QuantLinear) for m in int8.model.backbone.modules())
    assert not any(
        isinstance(m, torch.nn.Linear) and not isinstance(m, QuantLinear)
        for m in int8.model.backbone.modules()
    )
    assert next(bf16.model.backbone.parameters()).dtype == torch.bfloat16
    ref = _all_scores(fp32)
    for variant in (int8, bf16):
        diff = (_all_scores(variant) - ref).abs().max()
        assert 0 < diff < 0.1  # changed (a real variant), and close
    with pytest.raises(ValueError, match="precision"):
        Recommender.from_run(exported, device="cpu", precision="int4")


def test_the_server_serves_an_export(exported):
    pytest.importorskip("fastapi")
    from mtrec.serve import Served

    served = Served.load(exported, device="cpu", precision="int8")
    assert served.rec.recommend("3", k=3)[0] and served.titles.resolve("5") == served.rec.dataset.item_index["5"]


def test_the_command_line_refuses_what_it_cannot_export(run_dir, exported, tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main([str(exported), "--out", str(tmp_path / "y")]) == 2
    assert "already an export" in capsys.readouterr().err
    assert main([str(run_dir), "--out", str(exported)]) == 2  # not empty, and nothing is overwritten
    assert (exported / "heads.safetensors").exists()
    with pytest.raises(RunFolderError, match="the run folder itself"):
        export_run(run_dir, run_dir)


def test_paired_bootstrap_against_hand_computed_values():
    d = np.array([0.0, 0.0, 0.0, 1.0])
    one = metrics.paired_bootstrap(d, np.zeros(4), resamples=1, seed=3)
    idx = np.random.default_rng(3).integers(0, 4, size=(1, 4))
    assert one["diff"] == 0.25 and one["low"] == one["high"] == pytest.approx(d[idx].mean())
    same = metrics.paired_bootstrap([0.5, 0.7, 0.9], [0.2, 0.4, 0.6])  # every user gains 0.3
    assert (same["low"], same["high"]) == pytest.approx((0.3, 0.3))
    rng = np.random.default_rng(0)
    noise = rng.normal(size=2000)
    assert metrics.paired_bootstrap(noise + 0.2, noise * 0)["low"] > 0.1
    sym = metrics.paired_bootstrap(np.r_[noise, -noise], np.zeros(4000))
    assert sym["low"] < 0 < sym["high"] and sym == metrics.paired_bootstrap(
        np.r_[noise, -noise], np.zeros(4000)
    )
    with pytest.raises(ValueError):
        metrics.paired_bootstrap([1.0, 2.0], [1.0])
