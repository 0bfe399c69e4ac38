"""Evaluation metrics for the three tasks, as pure vectorised functions on numpy arrays or torch tensors.

- rating: `rmse`, `mae`;
- preference: `auc` (ties count half), `log_loss` (clipped), `accuracy` (threshold 0.5);
- category affinity: `ndcg_at_k` over a [B, C] score matrix against multi-hot / graded relevance;
- full-catalog ranking: `target_ranks` (pessimistic about ties, seen items excluded) then `hit_rate`,
  `ndcg`, `mrr` (which items are excluded, and the blocks and candidates of a catalog ranking, are
  `mtrec.ranking`'s).
- extra, *not* the headline numbers: `sampled_ranks` ranks the target among n sampled negatives
  (sampled metrics overstate quality several-fold; report them only next to the full-catalog ones).

Every function accepts numpy or torch inputs; computation is in torch on the input's device, so GPU
tensors stay on the GPU. Scalar metrics return Python floats; `target_ranks` / `sampled_ranks` return
the input's kind (numpy in, numpy out; torch in, torch out).
"""

from __future__ import annotations

import math

import numpy as np
import torch


ArrayLike = np.ndarray | torch.Tensor


def _t(x: ArrayLike, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """A torch view of `x` (no copy for numpy arrays / tensors already of that dtype and device)."""
    t = torch.as_tensor(x, device=device)
    return t if dtype is None else t.to(dtype)


def _same_kind(result: torch.Tensor, like: ArrayLike) -> ArrayLike:
    return result if isinstance(like, torch.Tensor) else result.cpu().numpy()


# ---- rating ------------------------------------------------------------------------------------
def rmse(pred: ArrayLike, target: ArrayLike) -> float:
    """Root mean squared error: sqrt(mean((pred - target)^2)).

    Args:
        pred: predicted ratings, shape [n].
        target: true ratings, shape [n].

    Returns:
        The RMSE as a float (nan for n = 0).
    """
    p, y = _t(pred, torch.float64), _t(target, torch.float64)
    return float(torch.sqrt(torch.mean((p - y.to(p.device)) ** 2)))


def mae(pred: ArrayLike, target: ArrayLike) -> float:
    """Mean absolute error: mean(|pred - target|).

    Args:
        pred: predicted ratings, shape [n].
        target: true ratings, shape [n].

    Returns:
        The MAE as a float (nan for n = 0).
    """
    p, y = _t(pred, torch.float64), _t(target, torch.float64)
    return float(torch.mean(torch.abs(p - y.to(p.device))))


# ---- preference --------------------------------------------------------------------------------
def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of `x` ascending, tied values sharing the mean of their ranks (as scipy's rankdata)."""
    values, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)  # last 1-based rank of each distinct value
    mean_rank = ends - (counts.to(torch.float64) - 1) / 2
    return mean_rank[inverse]


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve, by the rank-sum (Mann-Whitney) formula; a tied pair counts half.

    AUC = (sum of the positives' average ranks - P(P+1)/2) / (P * N), with P positives, N negatives
    and scores ranked ascending; equal to P(score_pos > score_neg) + 0.5 P(score_pos = score_neg).

    Args:
        scores: any real scores (higher = more likely positive), shape [n].
        labels: 0/1 or bool, shape [n].

    Returns:
        AUC in [0, 1]; nan when only one class is present.
    """
    s = _t(scores, torch.float64)
    y = _t(labels, device=s.device).bool()
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = _average_ranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(probs: ArrayLike, labels: ArrayLike, eps: float = 1e-7) -> float:
    """Binary cross-entropy: -mean(y log p + (1 - y) log(1 - p)), with p clipped to [eps, 1 - eps].

    Clipping keeps one confident mistake from making the mean infinite.

    Args:
        probs: predicted P(label = 1), shape [n].
        labels: 0/1 or bool, shape [n].
        eps: clipping margin.

    Returns:
        The mean log-loss (natural log) as a float.
    """
    p = _t(probs, torch.float64).clamp(eps, 1 - eps)
    y = _t(labels, torch.float64, device=p.device)
    return float(-torch.mean(y * torch.log(p) + (1 - y) * torch.log1p(-p)))


def accuracy(probs: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> float:
    """Fraction of correct decisions, predicting 1 where prob > threshold (as torchmetrics/sklearn).

    Args:
        probs: predicted P(label = 1), shape [n].
        labels: 0/1 or bool, shape [n].
        threshold: decision threshold; a probability exactly at it predicts 0.

    Returns:
        Accuracy in [0, 1].
    """
    p = _t(probs, torch.float64)
    y = _t(labels, device=p.device).bool()
    return float(((p > threshold) == y).to(torch.float64).mean())


# ---- category affinity -------------------------------------------------------------------------
def ndcg_at_k(scores: ArrayLike, relevance: ArrayLike, k: int) -> float:
    """NDCG@k of each row's category ranking, averaged over rows with at least one relevant category.

    DCG@k = sum_{i<k} rel_(i) / log2(i + 2) with linear gain (rel_(i) = relevance of the i-th
    highest-scored column; multi-hot relevance makes it binary NDCG); IDCG@k is the same sum over
    relevance sorted descending; NDCG@k = DCG@k / IDCG@k. Tied scores are ordered pessimistically
    (less relevant first) so a constant scorer cannot look good by column order.

    Args:
        scores: [B, C] predicted affinity per category.
        relevance: [B, C] multi-hot (0/1) or graded (>= 0) relevance.
        k: cut-off.

    Returns:
        Mean NDCG@k over rows with any relevance > 0; nan when there are none.
    """
    s = _t(scores, torch.float64)
    rel = _t(relevance, torch.float64, device=s.device)
    k = min(k, s.shape[1])
    # Two stable sorts: by relevance ascending, then by score descending -> ties stay "worst first".
    by_rel = torch.argsort(rel, dim=1, stable=True)
    by_score = torch.argsort(s.gather(1, by_rel), dim=1, descending=True, stable=True)
    ranked_rel = rel.gather(1, by_rel.gather(1, by_score))[:, :k]
    discount = 1.0 / torch.log2(torch.arange(k, device=s.device, dtype=torch.float64) + 2)
    dcg = (ranked_rel * discount).sum(1)
    idcg = (torch.sort(rel, dim=1, descending=True).values[:, :k] * discount).sum(1)
    has_rel = idcg > 0
    if not bool(has_rel.any()):
        return math.nan
    return float((dcg[has_rel] / idcg[has_rel]).mean())


# ---- full-catalog ranking ----------------------------------------------------------------------
Exclusion = np.ndarray | torch.Tensor | tuple[ArrayLike, ArrayLike]


def _exclusion_tensor(exclude: Exclusion | None, shape: tuple[int, int], device) -> torch.Tensor | None:
    """`exclude` as a [B, N] bool tensor; (rows, cols) index pairs are scattered into one."""
    if exclude is None:
        return None
    if isinstance(exclude, tuple):
        rows, cols = (_t(a, torch.long, device=device) for a in exclude)
        mask = torch.zeros(shape, dtype=torch.bool, device=device)
        mask[rows, cols] = True
        return mask
    mask = _t(exclude, device=device).bool()
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"exclusion mask has shape {tuple(mask.shape)}, scores have {tuple(shape)}")
    return mask


def target_ranks(scores: ArrayLike, targets: ArrayLike, exclude: Exclusion | None = None) -> ArrayLike:
    """0-based rank of each row's target among the row's non-excluded items, ties counted against it.

    rank_b = #{j != t_b : not exclude[b, j] and scores[b, j] >= scores[b, t_b]}. Counting ties as
    beating the target is pessimistic on purpose: a model that scores everything equal gets the
    worst rank, not the best.

    Args:
        scores: [B, N] scores over the full catalog (higher = better). NaN is rejected.
        targets: [B] target item index per row.
        exclude: items not ranked (a user's already-seen items): a [B, N] bool mask or a (rows, cols)
            pair of index arrays (memory-light for big catalogs). A target may never be excluded.

    Returns:
        [B] int64 ranks, numpy or torch like `scores`.

    Raises:
        ValueError: a score is NaN, or a target is excluded.
    """
    s = _t(scores)
    t = _t(targets, torch.long, device=s.device)
    if bool(torch.isnan(s).any()):
        raise ValueError("scores contain NaN; ranks would be meaningless")
    rows = torch.arange(s.shape[0], device=s.device)
    target_score = s[rows, t]
    beats = s >= target_score[:, None]  # includes the target itself (score >= own score)
    mask = _exclusion_tensor(exclude, tuple(s.shape), s.device)
    if mask is not None:
        if bool(mask[rows, t].any()):
            bad = int(torch.nonzero(mask[rows, t])[0, 0])
            raise ValueError(f"row {bad}: the target item {int(t[bad])} is excluded from its own ranking")
        beats &= ~mask
    ranks = beats.sum(1) - 1
    return _same_kind(ranks, scores)


def sampled_ranks(
    scores: ArrayLike, targets: ArrayLike, n: int, exclude: Exclusion | None = None, seed: int = 0
) -> ArrayLike:
    """EXTRA (not a headline metric): rank of the target among `n` uniformly sampled negatives.

    Per row, n items are drawn without replacement from the non-excluded items other than the
    target (fewer when fewer exist); rank = #{sampled j : scores[b, j] >= scores[b, t_b]} (ties
    pessimistic, as `target_ranks`). Sampled metrics overstate full-catalog quality several-fold.

    Args:
        scores: [B, N] scores; targets: [B] target indices; n: negatives per row.
        exclude: as in `target_ranks`.
        seed: seeds the sampling (same seed, same device -> same negatives).

    Returns:
        [B] int64 ranks in [0, n], numpy or torch like `scores`.
    """
    s = _t(scores)
    t = _t(targets, torch.long, device=s.device)
    rows = torch.arange(s.shape[0], device=s.device)
    gen = torch.Generator(device=s.device).manual_seed(seed)
    # Uniform sampling without replacement: the n smallest of i.i.d. uniform keys.
    keys = torch.rand(s.shape, generator=gen, device=s.device)
    mask = _exclusion_tensor(exclude, tuple(s.shape), s.device)
    invalid = torch.zeros_like(keys, dtype=torch.bool) if mask is None else mask.clone()
    invalid[rows, t] = True
    keys[invalid] = math.inf
    picked_keys, picked = torch.topk(keys, min(n, s.shape[1]), dim=1, largest=False)
    picked_ok = torch.isfinite(picked_keys)
    beats = (s.gather(1, picked) >= s[rows, t][:, None]) & picked_ok
    return _same_kind(beats.sum(1), scores)


def _cut(ranks: ArrayLike, k: int | None) -> torch.Tensor:
    r = _t(ranks, torch.float64)
    return r if k is None else torch.where(r < k, r, math.inf)


def hit_rate(ranks: ArrayLike, k: int) -> float:
    """HR@k = mean(rank < k), ranks 0-based.

    Args:
        ranks: [B] 0-based target ranks; k: cut-off.

    Returns:
        Hit rate in [0, 1].
    """
    return float((_t(ranks) < k).to(torch.float64).mean())


def ndcg(ranks: ArrayLike, k: int) -> float:
    """NDCG@k for one relevant item per row = mean(1 / log2(rank + 2) if rank < k else 0).

    With a single relevant item IDCG = 1, so the gain at the target's position is the NDCG.

    Args:
        ranks: [B] 0-based target ranks; k: cut-off.

    Returns:
        Mean NDCG@k in [0, 1].
    """
    return float(ndcg_rows(ranks, k).mean())


def ndcg_rows(ranks: ArrayLike, k: int) -> torch.Tensor:
    """Each row's NDCG@k (see `ndcg`), for per-user comparisons such as `paired_bootstrap`."""
    return 1.0 / torch.log2(_cut(ranks, k) + 2)


def paired_bootstrap(a: ArrayLike, b: ArrayLike, resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """The mean of a - b over paired units (users), with a percentile bootstrap interval.

    Users are drawn with replacement `resamples` times (seeded); each draw's mean difference goes
    into the distribution whose central `level` share is the interval. A difference whose interval
    holds 0 is no measurable difference.

    Returns:
        {"diff", "low", "high", "n", "resamples", "level"}.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length 1-d arrays of values, got {a.shape} and {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.concatenate([d[rng.integers(0, len(d), size=(min(100, resamples - i), len(d)))].mean(1)
                            for i in range(0, resamples, 100)])
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"diff": float(d.mean()), "low": float(low), "high": float(high), "n": len(d), "resamples": resamples,
            "level": level}


def paired_bootstrap_groups(stat, a: ArrayLike, b: ArrayLike, labels: ArrayLike, groups: ArrayLike,
                            resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """`paired_bootstrap` for a statistic that is not a mean over users (AUC, RMSE): users (`groups`)
    are drawn with replacement, and `stat(scores, labels)` of every row of the drawn users is taken
    for `a` and for `b` on the same rows; the interval is of stat(a) - stat(b).

    Returns:
        {"diff", "low", "high", "n" (users), "resamples", "level"}.
    """
    a, b, labels, groups = (np.asarray(x) for x in (a, b, labels, groups))
    if not (a.shape == b.shape == labels.shape == groups.shape) or a.ndim != 1 or len(a) == 0:
        raise ValueError("paired_bootstrap_groups needs equal-length 1-d scores, labels and groups")
    users, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(users) + 1))
    rows_of = [order[bounds[g] : bounds[g + 1]] for g in range(len(users))]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        rows = np.concatenate([rows_of[g] for g in rng.integers(0, len(users), size=len(users))])
        diffs.append(stat(a[rows], labels[rows]) - stat(b[rows], labels[rows]))
    diffs = np.asarray(diffs, dtype=np.float64)
    diffs = diffs[np.isfinite(diffs)]  # a draw with one class only has no AUC
    low, high = np.quantile(diffs, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"diff": float(stat(a, labels) - stat(b, labels)), "low": float(low), "high": float(high),
            "n": len(users), "resamples": resamples, "level": level}


def mrr(ranks: ArrayLike, k: int | None = None) -> float:
    """MRR@k = mean(1 / (rank + 1) if rank < k else 0); k=None is the uncut MRR.

    Args:
        ranks: [B] 0-based target ranks; k: cut-off or None.

    Returns:
        Mean reciprocal rank in (0, 1].
    """
    return float((1.0 / (_cut(ranks, k) + 1)).mean())
