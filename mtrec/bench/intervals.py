"""Per-row records of a benchmark row, their metrics, and paired intervals between two rows.

A row's *records* are what it predicted for each evaluated target, keyed by user (and item), so
that two rows can be compared on exactly the targets they share:

- ``rank_user``, ``rank``: each recommendation target's 0-based full-catalog rank (in the
  cold-items protocol its rank among the held-out items, with the full-catalog one in ``rank_full``);
- ``like_user``, ``like_item``, ``like_score``, ``like_label`` (and ``like_proba`` where the model
  gives a probability): the preference rows;
- ``rating_user``, ``rating_item``, ``rating_pred``, ``rating_target``: the rating rows.

Baselines fill them from `mtrec.bench.baselines.baseline_records`, mtrec variants from
`mtrec.pipeline.evaluate_rows` (`from_eval_rows`). `compare` gives the paired 95% bootstrap
interval (`mtrec.metrics.paired_bootstrap`, users resampled) of one metric's difference between
two rows on their common users; a difference whose interval holds 0 is no measurable difference.
"""

from __future__ import annotations

import numpy as np

from mtrec import metrics
from mtrec.data.splits import Split
from mtrec.kinds import Kind

K = 10
# metric -> (records it needs, higher is better)
COMPARED = {f"ndcg@{K}": ("rank", True), f"hr@{K}": ("rank", True), "auc": ("like", True),
            "rmse": ("rating", False)}


def summarise(rec: dict[str, np.ndarray], like_threshold: float | None = None, k: int = K) -> dict[str, float]:
    """The metrics of a row's records: RMSE/MAE (rating), AUC and, with probabilities, log-loss and
    accuracy (like), HR/NDCG/MRR@k (ranking); only those whose records are there."""
    out: dict[str, float] = {}
    if len(rec.get("rating_pred", ())):
        out.update(rmse=metrics.rmse(rec["rating_pred"], rec["rating_target"]),
                   mae=metrics.mae(rec["rating_pred"], rec["rating_target"]))
    if len(rec.get("like_score", ())):
        out["auc"] = metrics.auc(rec["like_score"], rec["like_label"])
        if "like_proba" in rec:
            out.update(log_loss=metrics.log_loss(rec["like_proba"], rec["like_label"]),
                       accuracy=metrics.accuracy(rec["like_proba"], rec["like_label"]))
    if len(rec.get("rank", ())):
        out[f"hr@{k}"] = metrics.hit_rate(rec["rank"], k)
        out[f"ndcg@{k}"] = metrics.ndcg(rec["rank"], k)
        out[f"mrr@{k}"] = metrics.mrr(rec["rank"], k)
    if len(rec.get("rank_full", ())):
        out[f"full_hr@{k}"] = metrics.hit_rate(rec["rank_full"], k)
        out[f"full_ndcg@{k}"] = metrics.ndcg(rec["rank_full"], k)
    return out


def from_eval_rows(rows: dict, split: Split) -> dict[str, np.ndarray]:
    """Records from `mtrec.pipeline.evaluate_rows`' output (tensors in specs order)."""
    kind = rows["kind"].long().numpy()
    user = rows["user"].long().numpy()
    out: dict[str, np.ndarray] = {}
    rank = kind == int(Kind.RECOMMENDATION)
    out["rank_user"], out["rank"] = user[rank], rows["rank"].long().numpy()[rank]
    if "rank_cold" in rows:  # cold-items protocol: the rank among the held-out items comes first
        out["rank_full"], out["rank"] = out["rank"], rows["rank_cold"].long().numpy()[rank]
    like = kind == int(Kind.LIKE)
    out.update(like_user=user[like], like_item=rows["item"].long().numpy()[like],
               like_score=rows["like_logit"].double().numpy()[like], like_label=rows["like"].numpy()[like] > 0.5)
    out["like_proba"] = 1.0 / (1.0 + np.exp(-out["like_score"]))
    rating = kind == int(Kind.RATING)
    if split.dataset.explicit:
        out.update(rating_user=user[rating], rating_item=rows["item"].long().numpy()[rating],
                   rating_pred=rows["rating_pred"].double().numpy()[rating],
                   rating_target=rows["rating"].double().numpy()[rating])
    return out


def restrict(rec: dict[str, np.ndarray], users: np.ndarray) -> dict[str, np.ndarray]:
    """The records of `users` only."""
    out = {}
    for part in ("rank", "like", "rating"):
        keep = np.isin(rec.get(f"{part}_user", np.zeros(0, np.int64)), users)
        out |= {n: v[keep] for n, v in rec.items() if n.startswith(part)}
    return out


def _keyed(rec: dict[str, np.ndarray], part: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Row keys (user, item; for ranking the user alone, with repeats numbered) and the part's arrays."""
    user = np.asarray(rec[f"{part}_user"], np.int64)
    if part == "rank":
        order = np.argsort(user, kind="stable")
        nth = np.empty(len(user), np.int64)
        nth[order] = np.arange(len(user)) - np.searchsorted(user[order], user[order])
        keys = user * (1 << 20) + nth
    else:
        keys = user * (1 << 31) + np.asarray(rec[f"{part}_item"], np.int64)
    return keys, {n: np.asarray(v) for n, v in rec.items() if n.startswith(part)}


def _paired(a: dict, b: dict, part: str):
    """The rows both records hold (matched by key), as (a's arrays, b's arrays), or None."""
    if not len(a.get(f"{part}_user", ())) or not len(b.get(f"{part}_user", ())):
        return None
    ka, va = _keyed(a, part)
    kb, vb = _keyed(b, part)
    common, ia, ib = np.intersect1d(ka, kb, assume_unique=False, return_indices=True)
    if not len(common):
        return None
    return {n: v[ia] for n, v in va.items()}, {n: v[ib] for n, v in vb.items()}


def _rmse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - target) ** 2)))


def compare(a: dict, b: dict, metric: str, resamples: int = 1000, seed: int = 0) -> dict | None:
    """Paired bootstrap interval of `metric`(a) - `metric`(b) on the targets both rows were scored on
    (None when they share none): NDCG/HR as a mean over users, AUC and RMSE with users resampled as
    groups (`mtrec.metrics.paired_bootstrap_groups`). Adds ``better`` (a, b or None: no measurable
    difference) from the interval and the metric's direction."""
    part, higher = COMPARED[metric]
    pair = _paired(a, b, part)
    if pair is None:
        return None
    pa, pb = pair
    if part == "rank":
        cut = int(metric.split("@")[1])
        f = metrics.ndcg_rows if metric.startswith("ndcg") else (lambda r, k: (np.asarray(r) < k).astype(np.float64))
        out = metrics.paired_bootstrap(np.asarray(f(pa["rank"], cut)), np.asarray(f(pb["rank"], cut)), resamples, seed)
    elif part == "like":
        if len(np.unique(pa["like_label"])) < 2:
            return None
        out = metrics.paired_bootstrap_groups(metrics.auc, pa["like_score"], pb["like_score"], pa["like_label"],
                                              pa["like_user"], resamples, seed)
    else:
        out = metrics.paired_bootstrap_groups(_rmse, pa["rating_pred"], pb["rating_pred"], pa["rating_target"],
                                              pa["rating_user"], resamples, seed)
    out["better"] = better(out["low"], out["high"], higher)
    return out


def better(low: float, high: float, higher: bool = True) -> str | None:
    """Which side of a difference a - b an interval [low, high] favours: "a", "b", or None (the
    interval holds 0: no measurable difference). `higher`: whether higher values are better."""
    sign = 1 if higher else -1
    if sign * low > 0 and sign * high > 0:
        return "a"
    return "b" if sign * low < 0 and sign * high < 0 else None


def reading(c: dict, a: str, b: str, metric: str) -> str:
    """One line in words: who is better on what, or no measurable difference."""
    span = f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}], {c['n']} users"
    if c["better"] is None:
        return f"{metric}: no measurable difference between {a} and {b} ({span})"
    win, lose = (a, b) if c["better"] == "a" else (b, a)
    return f"{metric}: {win} better than {lose} ({a} - {b} = {span})"


def to_json(rec: dict[str, np.ndarray]) -> dict[str, list]:
    return {n: np.asarray(v).tolist() for n, v in rec.items()}


def from_json(rec: dict[str, list]) -> dict[str, np.ndarray]:
    return {n: np.asarray(v) for n, v in rec.items()}
