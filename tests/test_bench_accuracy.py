"""The accuracy benchmark end to end on synthetic data with the tiny backbone: every row is there,
the numbers are finite, the files are written, and the same seed gives the same numbers."""

import json
import math

import pytest
import torch

from mtrec.bench import report
from mtrec.bench.__main__ import main as bench_main

BASELINES = ["prior alone", "popularity", "user+item bias", "biased MF", "BPR-MF", "item-kNN", "SASRec",
             "content kNN (TF-IDF)", "user like-ratio"]
VARIANTS = [
    "mtrec multi-task",
    "mtrec multi-task (unseen prompts)",
    "mtrec single-task rating",
    "mtrec single-task preference",
    "mtrec single-task recommendation",
    "mtrec multi-task, no social context",
    "mtrec multi-task, no collaborative factors",
    "mtrec multi-task, random-init backbone",
    "mtrec multi-task, {control} backbone",  # the text control, here on the tiny backbone again
]
# Which table columns each row must fill (synthetic data: explicit ratings, categories, friends).
RANKING = ["hr@10", "ndcg@10", "mrr@10"]
MTREC_ALL = ["rmse", "mae", "auc", "log_loss", *RANKING, "cat_ndcg@5"]
EXPECTED = {
    "prior alone": ["rmse", "mae", "auc", "log_loss", *RANKING],
    "content kNN (TF-IDF)": RANKING,
    "user like-ratio": ["auc"],
    "popularity": ["rmse", "mae", *RANKING],
    "user+item bias": ["rmse", "mae", "auc", "log_loss", *RANKING],
    "biased MF": ["rmse", "mae", "auc", "log_loss", *RANKING],
    "BPR-MF": RANKING,
    "item-kNN": RANKING,
    "SASRec": RANKING,
    "mtrec single-task rating": ["rmse", "mae"],
    "mtrec single-task preference": ["auc", "log_loss", "cat_ndcg@5"],
    "mtrec single-task recommendation": RANKING,
}


def _tiny_args(backbone, out):
    """The quick profile shrunk to seconds: 30 users, 40 items, 6 multi-task steps, one thread."""
    return [
        "accuracy",
        "--dataset",
        "synthetic",
        "--quick",
        "--seed",
        "0",
        "--out",
        str(out),
        "--backbone",
        str(backbone),
        "--test-users",
        "0",
        "--text-control",
        str(backbone),
        "--set",
        "data.options={num_users: 30, num_items: 40}",
        "--set",
        "train.max_steps=6",
        "--set",
        "train.warmup_steps=1",
        "--set",
        "train.num_threads=1",
        "--set",
        'train.mixed_precision="no"',
        "--set",
        "train.eval_users=10",
        "--set",
        "model.lora_r=4",
        "--set",
        "model.lora_alpha=8",
    ]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_backbone_dir):
    old = torch.get_num_threads()
    outs = [tmp_path_factory.mktemp(f"bench{i}") for i in range(2)]
    assert bench_main(_tiny_args(tiny_backbone_dir, outs[0]) + ["--repeat-check"]) == 0
    assert bench_main(_tiny_args(tiny_backbone_dir, outs[1])) == 0
    torch.set_num_threads(old)
    return [json.loads((o / "accuracy_synthetic_quick.json").read_text()) for o in outs], outs


def test_files_and_every_row(two_runs, tiny_backbone_dir):
    (first, _), (out, _) = two_runs
    md = (out / "accuracy_synthetic_quick.md").read_text()
    assert "QUICK" in md and "train.max_steps=6" in md  # labelled quick, with the settings used
    rows = {r["model"]: r for r in first["rows"]}
    variants = [v.format(control=tiny_backbone_dir.name) for v in VARIANTS]
    assert list(rows) == BASELINES + variants
    for name in BASELINES + variants:
        assert f"| {name} |" in md
    assert set(first["baselines"]) == set(BASELINES) and first["repeat_check"]["equal"]
    assert first["files"]["plot"] is None or (out / "accuracy_synthetic_quick.png").stat().st_size > 0


def test_numbers_are_finite_where_defined(two_runs):
    (first, _), _ = two_runs
    for row in first["rows"]:
        wanted = EXPECTED.get(row["model"], MTREC_ALL)
        for key in wanted:
            assert row[key] is not None and math.isfinite(row[key]), (row["model"], key, row[key])
        for key, _ in report.COLUMNS:
            assert row[key] is None or math.isfinite(row[key])
        assert row["train_seconds"] is not None and row["train_seconds"] >= 0
    assert first["split"]["test_users_evaluated"] == 30
    assert {r["split_fingerprint"] for r in first["mtrec"].values()} == {first["split"]["fingerprint"]}


def test_every_row_names_its_reference_with_a_paired_interval(two_runs, tiny_backbone_dir):
    (first, _), (out, _) = two_runs
    rows = {r["model"]: r for r in first["rows"]}
    assert rows["prior alone"]["reference"] is None
    assert rows["mtrec multi-task"]["reference"] == rows["SASRec"]["reference"] == "prior alone"
    assert rows["mtrec multi-task, random-init backbone"]["reference"] == "mtrec multi-task"
    pairs = {(c["row"], c["reference"], c["metric"]): c for c in first["comparisons"]}
    for metric in ("ndcg@10", "hr@10", "auc", "rmse"):
        c = pairs[("mtrec multi-task, random-init backbone", "mtrec multi-task", metric)]  # listed once
        assert c["low"] <= c["diff"] <= c["high"] and c["n"] == 30 and c["resamples"] == 1000
    assert ("mtrec multi-task", "user like-ratio", "auc") in pairs and ("mtrec multi-task", "SASRec", "ndcg@10") in pairs
    assert ("mtrec multi-task", "mtrec multi-task, random-init backbone", "ndcg@10") not in pairs
    control = first["text_control_row"]  # here the tiny backbone again: trained afresh, same seed, same numbers
    assert control == f"mtrec multi-task, {tiny_backbone_dir.name} backbone"
    assert {(control, ref, "ndcg@10") for ref in ("mtrec multi-task", "content kNN (TF-IDF)", "prior alone")} <= set(pairs)
    assert pairs[(control, "mtrec multi-task", "ndcg@10")]["diff"] == 0.0
    assert {k: rows[control][k] for k in MTREC_ALL} == {k: rows["mtrec multi-task"][k] for k in MTREC_ALL}
    # a row against itself is 0; the interval of a recomputed difference matches the table's numbers
    c = pairs[("SASRec", "prior alone", "ndcg@10")]
    assert c["diff"] == pytest.approx(rows["SASRec"]["ndcg@10"] - rows["prior alone"]["ndcg@10"], abs=1e-9)
    assert "Paired differences" in (out / "accuracy_synthetic_quick.md").read_text()


def test_single_task_budgets_follow_the_multi_task_draws(two_runs):
    (first, _), _ = two_runs
    drawn = first["mtrec"]["mtrec multi-task"]["drawn_examples"]
    assert sum(drawn.values()) == 6 * 8  # 6 steps of 8 examples
    budgets = {
        k.removeprefix("mtrec single-task "): v["extra"]["examples_budget"]
        for k, v in first["mtrec"].items()
        if k.startswith("mtrec single-task")
    }
    assert budgets == {
        "rating": drawn["rating"],
        "preference": drawn["like"] + drawn["categories"],
        "recommendation": drawn["recommendation"],
    }
    for task, budget in budgets.items():
        seen = sum(first["mtrec"][f"mtrec single-task {task}"]["drawn_examples"].values())
        assert abs(seen - budget) <= 4  # whole batches of 8, rounded to the nearest step


def test_same_seed_same_numbers(two_runs):
    (first, second), _ = two_runs
    first = dict(first)
    first.pop("repeat_check")
    assert report.strip_volatile(first) == report.strip_volatile(second)


def test_a_rerun_loads_every_finished_row(two_runs, tiny_backbone_dir, capsys):
    (_, second), (_, out) = two_runs
    capsys.readouterr()
    assert bench_main(_tiny_args(tiny_backbone_dir, out)) == 0  # the second run's folder: all rows done
    logged = capsys.readouterr().out
    assert logged.count("[resume]") == len(BASELINES) + len(VARIANTS) - 1  # the unseen-prompts row is the multi-task's
    again = json.loads((out / "accuracy_synthetic_quick.json").read_text())
    assert report.strip_volatile(again) == report.strip_volatile(second)


def test_a_missing_benchmark_module_does_not_break_the_others(monkeypatch, capsys):
    # `speed` is imported only when asked for; a missing module is a clear message, not a crash.
    from mtrec.bench import __main__ as dispatch

    monkeypatch.setitem(dispatch.BENCHMARKS, "speed", ("mtrec.bench._not_there", "throughput"))
    assert dispatch.main(["speed", "--help"]) == 2
    assert "not available" in capsys.readouterr().err
    assert dispatch.main(["--help"]) == 0


def test_a_baseline_stopped_by_its_epoch_limit_is_marked_cut_short():
    entry = {"class": "SASRec", "selected": {"lr": 3e-3}, "select_by": "ndcg@10", "max_epochs": 50,
             "grid": [{"hparams": {"lr": 3e-3}}], "test": {"ndcg@10": 0.1},
             "info": {"epochs_run": 50, "best_epoch": 50, "epoch_capped": True, "fit_seconds": 1.0}}
    assert "CUT SHORT at the epoch limit (50, still improving)" in report.baseline_row("SASRec", entry)["notes"]
    entry["info"] |= {"best_epoch": 47}
    assert "CUT SHORT at the epoch limit (50)" in report.baseline_row("SASRec", entry)["notes"]
    entry["info"] |= {"epoch_capped": False, "stopped_early": True, "epochs_run": 52}
    assert "CUT SHORT" not in report.baseline_row("SASRec", entry)["notes"]


def test_compare_names_every_differing_cell_and_ignores_timings(tmp_path, capsys):
    from mtrec.bench import compare

    def result(ndcg, seconds, steps):
        return {"seed": 0, "created": str(seconds), "total_seconds": seconds,
                "rows": [{"model": "BPR-MF", "ndcg@10": ndcg, "auc": float("nan"), "train_seconds": seconds,
                          "epochs_or_steps": steps, "notes": "early-stopped"}]}

    paths = []
    for name, data in (("a", result(0.1, 1.0, "11 epochs")), ("b", result(0.1, 9.0, "11 epochs")),
                       ("c", result(0.1 + 1e-6, 1.0, "12 epochs"))):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(data))
    a, b, c = map(str, paths)
    assert bench_main(["compare", a, b]) == 0  # only times differ; NaN equals NaN
    assert "4 of 4 cells equal" in capsys.readouterr().out
    assert bench_main(["compare", a, c]) == 1
    out = capsys.readouterr().out
    assert "2 of 4 cells equal" in out and "BPR-MF / ndcg@10: 0.1 against 0.100001" in out
    assert "BPR-MF / epochs_or_steps: '11 epochs' against '12 epochs'" in out
    assert compare.table_differences(json.loads(paths[0].read_text()), json.loads(paths[2].read_text()),
                                     tolerance=1e-5)[1] == ["BPR-MF / epochs_or_steps: '11 epochs' against '12 epochs'"]
    (tmp_path / "bad.json").write_text("{not json")
    assert bench_main(["compare", a, str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not a readable accuracy JSON" in capsys.readouterr().err


def test_compare_names_a_different_cpu_kernel_level(tmp_path, capsys):
    """Same seed on an AVX2 and an AVX512 machine: sums run in another order; compare says so."""
    def result(capability):
        return {"seed": 0, "environment": {"cpu_capability": capability, "threads": 2, "torch": "2.13.0"},
                "rows": [{"model": "BPR-MF", "ndcg@10": 0.1}]}

    paths = [tmp_path / f"{c}.json" for c in ("AVX2", "AVX512")]
    for path in paths:
        path.write_text(json.dumps(result(path.stem)))
    assert bench_main(["compare", str(paths[0]), str(paths[0])]) == 0
    assert "note:" not in capsys.readouterr().out
    assert bench_main(["compare", *map(str, paths)]) == 0  # the environment is not a difference in itself
    assert "note: the runs differ in cpu_capability ('AVX2' against 'AVX512')" in capsys.readouterr().out
    older = tmp_path / "older.json"  # written before the field existed
    older.write_text(json.dumps({**result("AVX2"), "environment": {"threads": 2, "torch": "2.13.0"}}))
    assert bench_main(["compare", str(older), str(paths[1])]) == 0
    assert "note:" not in capsys.readouterr().out


def test_a_reader_that_went_away_is_not_a_traceback():
    # `python -m mtrec.bench compare a b | head -1`: the pipe closes before the output is written
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "mtrec.bench", "--help"], stdout=write_end, check=False,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 141
