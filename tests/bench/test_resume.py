"""Resumable benchmark rows: a finished row is loaded by a rerun with the same settings, and
computed again when the settings change."""

import math

from mtrec.bench.resume import RowStore


def test_a_stored_row_is_loaded_and_a_changed_setting_recomputes(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"ndcg@10": 0.25, "missing": math.nan, "records": {"rank": [0, 3]}}

    store = RowStore(tmp_path, {"seed": 0, "users": "abc"}, log=lambda _: None)
    first = store.row("mtrec multi-task, random-init backbone", compute)
    assert first == {"ndcg@10": 0.25, "missing": None, "records": {"rank": [0, 3]}}  # as read back
    assert (tmp_path / "mtrec-multi-task-random-init-backbone.json").exists()
    logged = []
    again = RowStore(tmp_path, {"users": "abc", "seed": 0}, log=logged.append)  # same settings, other order
    assert again.row("mtrec multi-task, random-init backbone", compute) == first and len(calls) == 1
    assert "done earlier" in logged[0]
    changed = RowStore(tmp_path, {"seed": 1, "users": "abc"}, log=lambda _: None)
    assert changed.get("mtrec multi-task, random-init backbone") is None
    changed.row("mtrec multi-task, random-init backbone", compute)
    assert len(calls) == 2 and not list(tmp_path.glob("*.tmp"))


def test_a_row_stored_under_another_version_is_recomputed(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"auc": 0.5 + len(calls)}

    store = RowStore(tmp_path, {"seed": 0}, log=lambda _: None)
    assert store.row("content kNN (TF-IDF)", compute) == {"auc": 1.5}             # stored without a version
    assert store.row("content kNN (TF-IDF)", compute, "2") == {"auc": 2.5}        # its code changed: recomputed
    assert store.row("content kNN (TF-IDF)", compute, "2") == {"auc": 2.5} and len(calls) == 2
