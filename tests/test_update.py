"""`python -m mtrec.update`: new interactions, users and items grow a run's catalog; the priors are
refitted, the trained weights carried over, the old run untouched; an interrupted update resumes."""

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mtrec.data.errors import DataError
from mtrec.data.splits import TEST, TRAIN, VALID
from mtrec.run import load_catalog
from mtrec.model.stacking import PRIORS
from mtrec.update import grow_split, main, update
from new_data import new_data


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The session's tiny run folder (see tests/conftest.py)."""
    return tiny_run


def _new_data(folder, split):
    """Every validation interaction, one new item for user 3, and a new user who took two items."""
    new_data(folder, split, [("3", 5.0), ("newcomer", 4.0)], categories="jazz|rock")
    t = int(split.dataset.timestamps.max()) + 102
    with open(folder / "interactions.csv", "a", encoding="utf-8") as f:
        f.write(f"newcomer,7,2.0,{t}\n")
    return folder


def _tree_hash(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


def test_new_interactions_users_and_items_grow_the_split(run_dir, tmp_path):
    old = load_catalog(run_dir / "catalog")
    grown, growth = grow_split(old, _new_data(tmp_path / "new", old))
    ds = grown.dataset
    assert (growth.added, growth.moved, growth.new_users, growth.new_items) == (3, len(old.valid), 1, 1)
    assert ds.num_interactions == old.dataset.num_interactions + 3
    assert (grown.role == VALID).sum() == 0 and (grown.role == TEST).sum() == (old.role == TEST).sum()
    assert (grown.role[old.valid] == TRAIN).all()  # the same rows, now training data
    assert "newcomer" in ds.user_index and "new-1" in ds.item_index and "jazz" in ds.categories
    assert ds.categories[: len(old.dataset.categories)] == old.dataset.categories  # old indices kept
    # every user's sequence is in time order, and positions agree with it
    for u in range(ds.num_users):
        seq = grown.user_sequence(u)
        assert (np.diff(ds.timestamps[seq]) >= 0).all()
        assert (grown.position[seq] == np.arange(len(seq))).all()
    newcomer = grown.user_sequence(ds.user_index["newcomer"])
    assert [ds.items[ds.item_idx[j]].id for j in newcomer] == ["new-1", "7"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"interactions.csv": "user_id,item_id,rating\n3,nope,4\n"}, "interactions.csv, line 2: .*nope"),
        ({"interactions.csv": "user_id,item_id,weight,timestamp\n3,1,4,5\n"}, "ratings"),
        ({"interactions.csv": "user_id,item_id,rating\n3,1,4\n"}, "timestamp"),
        (
            {
                "interactions.csv": "user_id,item_id,rating,timestamp\n3,1,4,5\n",
                "items.csv": "item_id,title\n1,Again\n",
            },
            "items.csv: item_id '1' is already in the run's catalog",
        ),
    ],
)
def test_bad_new_data_is_refused_naming_the_file(run_dir, tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        grow_split(load_catalog(run_dir / "catalog"), tmp_path)


def test_refit_only_carries_the_weights_and_refits_the_priors(run_dir, tmp_path, capsys):
    before = _tree_hash(run_dir)
    old = load_catalog(run_dir / "catalog")
    out = tmp_path / "refit"
    assert (
        main(
            [
                "--run",
                str(run_dir),
                "--data",
                str(_new_data(tmp_path / "new", old)),
                "--out",
                str(out),
                "--steps",
                "0",
            ]
        )
        == 0
    )
    assert _tree_hash(run_dir) == before  # the old run is never written to
    a, b = (load_file(str(d / "adapter/adapter_model.safetensors")) for d in (run_dir, out))
    lora = [k for k in a if "lora_" in k or "trainable_tokens" in k]
    assert lora and all(torch.equal(a[k], b[k]) for k in lora)
    grown = load_catalog(out / "catalog").dataset
    rows = torch.as_tensor([grown.item_index[it.id] for it in old.dataset.items])
    head = "base_model.model.heads."
    assert torch.equal(b[head + "item_table"][rows], a[head + "item_table"])
    assert b[head + "item_table"].shape[0] == old.dataset.num_items + 1
    assert b[head + "item_table"][grown.item_index["new-1"]].abs().sum() > 0  # from its text
    for name in ("query.weight", "norm.weight", "rating.weight"):
        assert torch.equal(a[head + name], b[head + name]), name
    refit = [n for n in PRIORS if head + n in a and a[head + n].shape == b[head + n].shape]
    assert any(not torch.equal(a[head + n], b[head + n]) for n in refit)
    assert b[head + "user_factors"].shape[0] == old.dataset.num_users + 1
    record = json.loads((out / "update.json").read_text())
    assert record["growth"]["moved"] == len(old.valid) and record["steps"] == 0
    assert (
        main(["--run", str(run_dir), "--data", str(tmp_path / "new"), "--out", str(out), "--steps", "0"]) == 2
    )
    assert "not empty" in capsys.readouterr().err


def test_an_interrupted_update_resumes_to_the_same_weights(run_dir, tmp_path, monkeypatch):
    from mtrec import training

    old = load_catalog(run_dir / "catalog")
    new = _new_data(tmp_path / "new", old)
    opts = ["train.checkpoint_every=3", "train.eval_every=3"]
    whole = update(run_dir, new, tmp_path / "whole", steps=6, overrides=opts)
    assert whole["steps"] == 6
    real = training._Loop._evaluate

    def crash_at_6(self, step):
        if step == 6:
            raise KeyboardInterrupt("power cut")
        return real(self, step)

    monkeypatch.setattr(training._Loop, "_evaluate", crash_at_6)
    with pytest.raises(KeyboardInterrupt):
        update(run_dir, new, tmp_path / "cut", steps=6, overrides=opts)
    monkeypatch.setattr(training._Loop, "_evaluate", real)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = update(run_dir, new, tmp_path / "cut", resume=True, overrides=opts)
    assert resumed["steps"] == 6
    a, b = (
        load_file(str(d / "adapter/adapter_model.safetensors"))
        for d in (tmp_path / "whole", tmp_path / "cut")
    )
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    lora = [k for k in a if "lora_B" in k]
    start = load_file(str(run_dir / "adapter/adapter_model.safetensors"))
    assert any(not torch.equal(a[k], start[k]) for k in lora)  # the update did train


def test_the_pinned_check_scores_three_models_on_the_same_test_rows(run_dir, tmp_path):
    from mtrec.bench import update as bench

    out = tmp_path / "report.json"
    assert bench.main(["--run", str(run_dir), "--work", str(tmp_path / "work"), "--steps", "3",
                       "--resamples", "50", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["rows"]) == ["stale", "priors refit only", "updated"] and report["users"] == 30
    assert set(report["intervals"]) == {"priors refit only - stale", "updated - stale", "updated - priors refit only"}
    for d in report["intervals"].values():
        assert {"rmse", "like_auc", "ndcg@10"} <= set(d) and all(v["n"] == 30 for v in d.values())
        assert all(v["low"] <= v["high"] for v in d.values())
    rows = report["rows"]
    assert rows["priors refit only"]["rmse"] != rows["stale"]["rmse"]  # the refit moved the rating prior
    assert report["intervals"]["updated - stale"]["rmse"]["diff"] == pytest.approx(
        rows["updated"]["rmse"] - rows["stale"]["rmse"])


def test_a_blended_off_ranking_term_is_trained_afresh(run_dir, tmp_path):
    """A run whose ranking blend switched the backbone's term off (log_scale at the blend's OFF) is
    updated with the term back at its initial scale, so that training can move it again."""
    import shutil

    from safetensors.torch import save_file

    from mtrec.model.blend import OFF

    off_run = tmp_path / "off-run"
    shutil.copytree(run_dir, off_run)
    path = off_run / "adapter" / "adapter_model.safetensors"
    state = load_file(str(path))
    key = next(k for k in state if k.endswith("heads.log_scale"))
    state[key] = torch.tensor(OFF)
    save_file(state, str(path))
    out = tmp_path / "updated"
    assert main(["--run", str(off_run), "--data", str(_new_data(tmp_path / "new", load_catalog(run_dir / "catalog"))),
                 "--out", str(out), "--steps", "0"]) == 0
    assert float(load_file(str(out / "adapter/adapter_model.safetensors"))[key]) == 0.0

