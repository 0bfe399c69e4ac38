"""Classic baselines for the accuracy benchmark: a small grid per model tuned on validation, then
one test evaluation of the selected configuration on the benchmark's test users.

Selection metric: validation RMSE for rating models (`BiasBaseline`, `BiasedMF`), validation AUC
for the user like-ratio, validation NDCG@10 (full catalog, training items excluded) for ranking
models (content kNN's profile length among them). Popularity and mtrec's priors alone have nothing
to tune. Rating models and the like-ratio are skipped on implicit data. Each selected model's test
records (`mtrec.bench.intervals`) go into the result for the paired intervals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mtrec.bench import baselines as bl
from mtrec.bench import intervals
from mtrec.bench.resume import settings_key
from mtrec.data.splits import TEST, VALID, Split
from mtrec.tasks import ExampleOptions, build_specs


@dataclass(frozen=True)
class BaselineSpec:
    """One baseline of the table: its class, the grid tried, and how a configuration is chosen."""

    label: str
    cls: type
    grid: tuple[dict, ...]
    select_by: str  # "rmse" (lower is better), "ndcg@10" or "auc" (higher is better)
    rating_only: bool = False  # explicit data only


def default_specs(quick: bool, device: str = "cpu", prior: dict | None = None) -> list[BaselineSpec]:
    """The baselines and their grids: one or two points each when `quick`, a few otherwise.
    `prior`: `PriorAlone`'s settings (the compared runs' collab_dim, like_threshold, negatives)."""
    if quick:
        mf = ({"dim": 32, "lr": 0.005, "reg": 0.03},)
        bpr = ({"dim": 64, "lr": 0.01, "reg": 1e-4},)
        knn = ({"neighbours": 20}, {"neighbours": 100})
        # 3e-3 converges in ~45 epochs on ML-100K (~2 min on 2 cores, early-stopped) where the
        # paper's 1e-3 was still climbing at 30
        sasrec = ({"dropout": 0.2, "lr": 3e-3, "device": device},)
        bias = ({"reg_user": 15.0, "reg_item": 10.0},)
    else:
        mf = tuple({"dim": d, "lr": 0.005, "reg": r} for d in (32, 64) for r in (0.01, 0.05))
        bpr = tuple({"dim": 64, "lr": lr, "reg": r} for lr in (0.005, 0.02) for r in (1e-4, 1e-3))
        knn = tuple({"neighbours": k} for k in (20, 50, 200))
        sasrec = tuple({"dropout": p, "lr": lr, "device": device} for p in (0.2, 0.5) for lr in (1e-3, 3e-3))
        bias = (
            {"reg_user": 5.0, "reg_item": 5.0},
            {"reg_user": 15.0, "reg_item": 10.0},
            {"reg_user": 25.0, "reg_item": 25.0},
        )
    content = ({"recent": 0}, {"recent": 20}) if quick else tuple({"recent": n} for n in (0, 5, 20, 50))
    return [
        BaselineSpec("prior alone", bl.PriorAlone, (dict(prior or {}),), "ndcg@10"),
        BaselineSpec("popularity", bl.Popularity, ({},), "ndcg@10"),
        BaselineSpec("user+item bias", bl.BiasBaseline, bias, "rmse", rating_only=True),
        BaselineSpec("biased MF", bl.BiasedMF, mf, "rmse", rating_only=True),
        BaselineSpec("BPR-MF", bl.BPRMF, bpr, "ndcg@10"),
        BaselineSpec("item-kNN", bl.ItemKNN, knn, "ndcg@10"),
        BaselineSpec("SASRec", bl.SASRec, sasrec, "ndcg@10"),
        BaselineSpec("content kNN (TF-IDF)", bl.ContentKNN, content, "ndcg@10"),
        BaselineSpec("user like-ratio", bl.LikeRatio, ({},), "auc", rating_only=True),
    ]


def _fit(
    spec: BaselineSpec,
    hparams: dict,
    split: Split,
    seed: int,
    max_epochs: int,
    patience: int,
    max_seconds: float | None,
):
    """Fit one configuration; iterative models get the epoch limits and the time budget."""
    model = spec.cls(**hparams)
    if spec.cls in (bl.BiasedMF, bl.BPRMF, bl.SASRec):
        return model.fit(split, seed=seed, max_epochs=max_epochs, patience=patience, max_seconds=max_seconds)
    if spec.cls is bl.BiasBaseline:
        return model.fit(split, seed=seed, max_epochs=max(max_epochs, 10))
    return model.fit(split, seed=seed)


def tune(
    spec: BaselineSpec, split: Split, *, seed: int, max_epochs: int, patience: int, max_seconds: float | None
) -> tuple[object, list[dict]]:
    """Fit every grid point, keep the best on validation. Returns (selected model, grid report)."""
    report, best, best_score = [], None, None
    lower = spec.select_by == "rmse"
    for hparams in spec.grid:
        model = _fit(spec, hparams, split, seed, max_epochs, patience, max_seconds)
        valid = bl.evaluate_baseline(model, split, VALID)
        score = valid[spec.select_by]
        report.append({"hparams": hparams, "valid": valid, **_fit_summary(model.info)})
        if best is None or (score < best_score if lower else score > best_score):
            best, best_score = model, score
    return best, report


def _fit_summary(info: dict) -> dict:
    return {
        "epochs_run": info.get("epochs_run"),
        "best_epoch": info.get("best_epoch"),
        "stopped_early": bool(info.get("stopped_early")),
        "budget_stopped": bool(info.get("budget_stopped")),
        "epoch_capped": bool(info.get("epoch_capped")),
        "fit_seconds": info.get("fit_seconds"),
    }


LIKE_ROWS_VERSION = "2"  # explicit data: every baseline scored on the language model's like rows


def like_rows(
    split: Split, users: np.ndarray, opts: ExampleOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, labels) of the TEST preference rows the language model is scored on, for `users`.

    Built by `mtrec.tasks.build_specs` with the same options and seed, so on implicit data the
    sampled unobserved items are exactly the language model's."""
    specs = build_specs(split, TEST, ("like",), opts)
    row_users = split.dataset.user_idx[specs.interaction].astype(np.int64)
    keep = np.isin(row_users, users)
    return row_users[keep], specs.item[keep].astype(np.int64), specs.label[keep]


def run_baselines(
    split: Split,
    test_users: np.ndarray,
    opts: ExampleOptions,
    *,
    quick: bool,
    seed: int,
    max_epochs: int,
    patience: int,
    max_seconds: float | None,
    device: str = "cpu",
    prior: dict | None = None,
    store=None,
) -> dict:
    """Tune, fit and test every baseline that applies to the data set.

    Returns:
        label -> {selected hparams, grid report, test metrics, test records (`mtrec.bench.intervals`),
        info of the selected fit, seconds}, with ``skipped`` (and why) for explicit-only models on
        implicit data.
    """
    out = {}
    # the language model's own preference rows, for every baseline: rating models score them by
    # predicted rating, ranking-only models (content kNN, SASRec, ...) by their ranking score
    lm_like_rows = like_rows(split, test_users, opts)
    for spec in default_specs(quick, device, prior):
        version = row_version(spec, split.dataset.explicit, prior)
        if spec.rating_only and not split.dataset.explicit:
            out[spec.label] = {"skipped": "needs ratings; the data set has implicit feedback only"}
            continue
        def compute(spec=spec) -> dict:
            started = time.perf_counter()
            print(f"[baselines] {spec.label}: {len(spec.grid)} configuration(s)", flush=True)
            model, grid = tune(
                spec, split, seed=seed, max_epochs=max_epochs, patience=patience, max_seconds=max_seconds
            )
            records = bl.baseline_records(model, split, TEST, users=test_users, like_rows=lm_like_rows)
            return {
                "class": spec.cls.__name__,
                "selected": model.info["hparams"],
                "select_by": spec.select_by,
                "grid": grid,
                "test": bl.records_summary(records, split, TEST, test_users),
                "records": intervals.to_json(records),
                "info": {k: v for k, v in model.info.items() if k != "hparams"},
                "max_epochs": max_epochs,
                "tuning_seconds": time.perf_counter() - started,
            }

        out[spec.label] = compute() if store is None else store.row(spec.label, compute, version)
    return out


def row_version(spec: BaselineSpec, explicit: bool, prior: dict | None = None) -> str:
    """What a stored row of `spec` must have been computed under beyond the baselines' key
    (`mtrec.bench.accuracy.baseline_key`): on explicit data, the like rows (rows stored before
    ranking-only baselines got them lack them); for the prior alone, the priors' settings, which no
    other baseline reads (so a change of mtrec's priors refits that row alone)."""
    version = LIKE_ROWS_VERSION if explicit else ""
    if spec.cls is bl.PriorAlone:
        version += f"|prior:{settings_key(prior or {})}"
    return version


def repeat_check(result: dict, split: Split, test_users: np.ndarray, *, seed: int, patience: int) -> dict:
    """Refit the selected BPR-MF (cheap, and random in init and negatives) with the same seed and
    require identical test numbers. Raises AssertionError when they differ.

    The refit runs exactly as many epochs as the first fit (no time budget), so a first fit cut
    short by the clock is repeated to the same epoch."""
    entry = result["BPR-MF"]
    epochs = entry["info"]["epochs_run"]
    model = bl.BPRMF(**entry["selected"]).fit(split, seed=seed, max_epochs=epochs, patience=patience)
    again = bl.evaluate_baseline(model, split, TEST, users=test_users)
    first = {k: v for k, v in entry["test"].items() if k in again}
    if again != first:
        raise AssertionError(f"repeat check failed: BPR-MF with seed {seed} gave {again}, first run {first}")
    return {"model": "BPR-MF", "hparams": entry["selected"], "epochs": epochs, "equal": True, "test": again}
