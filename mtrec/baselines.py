"""Classic baselines, trained and scored on exactly the same `Split` as the language model.

| model          | rating (predict_ratings)   | ranking (score_all)                          |
|----------------|----------------------------|----------------------------------------------|
| `Popularity`   | global mean                | training interaction count of each item      |
| `BiasBaseline` | mu + b_u + b_i (ALS)       | predicted rating (= item bias order)          |
| `BiasedMF`     | mu + b_u + b_i + p_u.q_i   | predicted rating                             |
| `BPRMF`        | -                          | p_u.q_i, BPR loss, uniform negatives         |
| `ItemKNN`      | -                          | sum of top-k cosine similarities to history  |

Every model: ``fit(split, *, seed=0, max_epochs=..., patience=...) -> self`` (learns from the split's
TRAIN interactions only; iterative models early-stop on the VALID interactions and keep the best
epoch), ``score_all(users) -> [len(users), num_items]``, an ``info`` dict (epochs run, best epoch,
stopped_early, hyper-parameters, fit seconds, per-epoch history). Rating models also give
``predict_ratings(users, items)`` and ``like_proba(users, items)`` (P(rating >= like_threshold),
a logistic on the predicted rating fitted on training). `evaluate_baseline` scores any of them
with the metrics and exclusion protocol of `mtrec.metrics`.

TODO: SASRec (sequential) belongs here too; it is not written yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from mtrec import metrics
from mtrec.data.splits import TRAIN, VALID, Split


def _role_arrays(split: Split, role: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, values) of the split's interactions with that role, as int64/float64 arrays."""
    idx = np.flatnonzero(split.role == role)
    ds = split.dataset
    return (
        ds.user_idx[idx].astype(np.int64),
        ds.item_idx[idx].astype(np.int64),
        ds.values[idx].astype(np.float64),
    )


class Baseline:
    """Common interface; subclasses set `rates` and implement `fit` and `score_all`."""

    rates = False  # has predict_ratings

    def __init__(self, **hparams) -> None:
        self.hparams = hparams
        self.info: dict = {"hparams": dict(hparams)}
        self.split: Split | None = None

    def fit(self, split: Split, *, seed: int = 0, max_epochs: int | None = None, patience: int | None = None):
        raise NotImplementedError

    def score_all(self, users: Sequence[int] | np.ndarray) -> np.ndarray:
        """Scores of every catalog item for each user: float array [len(users), num_items]."""
        raise NotImplementedError

    def _start(self, split: Split, seed: int) -> float:
        self.split = split
        self.info.update(seed=seed)
        return time.perf_counter()

    def _done(self, started: float, **info) -> None:
        self.info.update(info, fit_seconds=time.perf_counter() - started)


class _RatingModel(Baseline):
    """Adds rating clipping and a like-probability calibrated on training."""

    rates = True

    def __init__(self, like_threshold: float = 4.0, **hparams) -> None:
        super().__init__(like_threshold=like_threshold, **hparams)
        self.like_threshold = like_threshold
        self._platt = (0.0, 1.0, np.zeros(2))

    def _raw_ratings(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_ratings(self, users, items) -> np.ndarray:
        """Predicted ratings for (user, item) pairs, clipped to the data set's rating scale if known.

        Args:
            users, items: [n] index arrays.

        Returns:
            float64 array [n].
        """
        pred = self._raw_ratings(np.asarray(users, np.int64), np.asarray(items, np.int64))
        scale = self.split.dataset.rating_scale
        return pred if scale is None else np.clip(pred, scale[0], scale[1])

    def like_proba(self, users, items) -> np.ndarray:
        """P(rating >= like_threshold) = sigmoid(a * z + b), z the standardised predicted rating.

        Args:
            users, items: [n] index arrays.

        Returns:
            float64 probabilities [n].
        """
        mean, std, w = self._platt
        z = (self.predict_ratings(users, items) - mean) / std
        return 1.0 / (1.0 + np.exp(-(w[0] * z + w[1])))

    def _calibrate(self) -> None:
        # Platt scaling on training predictions: a 2-parameter logistic fitted by Newton's method.
        # A small ridge keeps the Hessian invertible when predictions are constant (global mean).
        u, i, r = _role_arrays(self.split, TRAIN)
        pred = self.predict_ratings(u, i)
        mean, std = pred.mean(), pred.std() or 1.0
        x = np.stack([(pred - mean) / std, np.ones_like(pred)], 1)
        y = (r >= self.like_threshold).astype(np.float64)
        w = np.zeros(2)
        for _ in range(30):
            p = 1.0 / (1.0 + np.exp(-x @ w))
            hess = x.T @ (x * (p * (1 - p))[:, None]) + 1e-6 * np.eye(2)
            w -= np.linalg.solve(hess, x.T @ (p - y))
        self._platt = (mean, std, w)


def _require_explicit(split: Split, model: str) -> None:
    if not split.dataset.explicit:
        raise ValueError(f"{model} predicts ratings; {split.dataset.name} has implicit feedback only")


# ---- popularity and biases ---------------------------------------------------------------------
class Popularity(_RatingModel):
    """Ranking by training interaction count; rating = global training mean (explicit data)."""

    def fit(self, split: Split, *, seed: int = 0, max_epochs: int | None = None, patience: int | None = None):
        """Count training interactions per item. `max_epochs`/`patience` are unused (closed form)."""
        started = self._start(split, seed)
        _, items, values = _role_arrays(split, TRAIN)
        self.counts = np.bincount(items, minlength=split.dataset.num_items).astype(np.float64)
        self.mu = float(values.mean()) if len(values) else 0.0
        if split.dataset.explicit:
            self._calibrate()
        self._done(started, epochs_run=1, best_epoch=1, stopped_early=False)
        return self

    def _raw_ratings(self, users, items):
        _require_explicit(self.split, "Popularity")
        return np.full(len(users), self.mu)

    def score_all(self, users):
        return np.broadcast_to(self.counts, (len(users), len(self.counts))).copy()


class BiasBaseline(_RatingModel):
    """r_ui = mu + b_u + b_i, regularised, fitted by alternating closed-form sweeps (Koren 2010).

    Each sweep solves b_i = sum_u (r_ui - mu - b_u) / (reg_item + n_i), then
    b_u = sum_i (r_ui - mu - b_i) / (reg_user + n_u): exact coordinate minimisation of
    sum (r - mu - b_u - b_i)^2 + reg_user sum b_u^2 + reg_item sum b_i^2.

    Args:
        reg_user, reg_item: L2 strengths (defaults as Surprise's BaselineOnly ALS).
        tol: stop when no bias moves by more than this between sweeps.
        like_threshold: rating counted as "like" for `like_proba`.
    """

    def __init__(
        self, reg_user: float = 15.0, reg_item: float = 10.0, tol: float = 1e-4, like_threshold: float = 4.0
    ):
        super().__init__(like_threshold=like_threshold, reg_user=reg_user, reg_item=reg_item, tol=tol)
        self.reg_user, self.reg_item, self.tol = reg_user, reg_item, tol

    def fit(self, split: Split, *, seed: int = 0, max_epochs: int = 10, patience: int | None = None):
        """Up to `max_epochs` sweeps (deterministic; `seed`/`patience` unused). Returns self."""
        _require_explicit(split, "BiasBaseline")
        started = self._start(split, seed)
        ds = split.dataset
        u, i, r = _role_arrays(split, TRAIN)
        self.mu = float(r.mean())
        n_u = np.bincount(u, minlength=ds.num_users)
        n_i = np.bincount(i, minlength=ds.num_items)
        self.b_u, self.b_i = np.zeros(ds.num_users), np.zeros(ds.num_items)
        for sweep in range(1, max_epochs + 1):
            b_i = np.bincount(i, r - self.mu - self.b_u[u], ds.num_items) / (self.reg_item + n_i)
            b_u = np.bincount(u, r - self.mu - b_i[i], ds.num_users) / (self.reg_user + n_u)
            change = max(np.abs(b_i - self.b_i).max(), np.abs(b_u - self.b_u).max())
            self.b_u, self.b_i = b_u, b_i
            if change < self.tol:
                break
        self._calibrate()
        self._done(started, epochs_run=sweep, best_epoch=sweep, stopped_early=sweep < max_epochs)
        return self

    def _raw_ratings(self, users, items):
        return self.mu + self.b_u[users] + self.b_i[items]

    def score_all(self, users):
        users = np.asarray(users, np.int64)
        return self.mu + self.b_u[users][:, None] + self.b_i[None, :]


# ---- training loop shared by the torch models --------------------------------------------------
def _early_stopping(
    params: Sequence[torch.Tensor],
    run_epoch: Callable[[], float],
    evaluate: Callable[[], float | None],
    *,
    max_epochs: int,
    patience: int,
    higher_is_better: bool,
) -> dict:
    """Train epoch by epoch, keep the parameters of the best validation epoch, stop after `patience`
    epochs without improvement. Without validation data (`evaluate` -> None) all epochs run.

    Returns:
        info entries: epochs_run, best_epoch, stopped_early, best_valid, train_loss, valid history.
    """
    best, best_epoch, bad, epoch = None, 0, 0, 0
    losses, history = [], []
    best_state = [p.detach().clone() for p in params]
    for epoch in range(1, max_epochs + 1):
        losses.append(run_epoch())
        score = evaluate()
        if score is None:
            continue
        history.append(score)
        if best is None or (score > best if higher_is_better else score < best):
            best, best_epoch, bad = score, epoch, 0
            best_state = [p.detach().clone() for p in params]
        else:
            bad += 1
            if bad >= patience:
                break
    if best is not None:
        with torch.no_grad():  # roll back to the best epoch: the model we report is that one
            for p, saved in zip(params, best_state):
                p.copy_(saved)
    return dict(
        epochs_run=epoch, best_epoch=best_epoch or epoch, stopped_early=best is not None and bad >= patience,
        best_valid=best, train_loss=losses, valid=history,
    )


def _batches(n: int, batch_size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    return perm.split(batch_size)


class BiasedMF(_RatingModel):
    """r_ui = mu + b_u + b_i + p_u . q_i, trained with Adam on squared error + L2 (mini-batches).

    Early stopping on validation RMSE; the best epoch's parameters are kept.

    Args:
        dim: latent dimension; lr: Adam learning rate; reg: L2 weight on the batch's parameters;
        batch_size: ratings per step; like_threshold: as `BiasBaseline`.
    """

    def __init__(
        self,
        dim: int = 32,
        lr: float = 0.005,
        reg: float = 0.03,
        batch_size: int = 4096,
        like_threshold: float = 4.0,
    ):
        super().__init__(like_threshold=like_threshold, dim=dim, lr=lr, reg=reg, batch_size=batch_size)
        self.dim, self.lr, self.reg, self.batch_size = dim, lr, reg, batch_size

    def fit(self, split: Split, *, seed: int = 0, max_epochs: int = 100, patience: int = 5):
        """Train on TRAIN ratings, early-stopping on VALID RMSE. Returns self."""
        _require_explicit(split, "BiasedMF")
        started = self._start(split, seed)
        ds = split.dataset
        gen = torch.Generator().manual_seed(seed)
        u, i, r = (torch.as_tensor(a) for a in _role_arrays(split, TRAIN))
        r = r.float()
        self.mu = float(r.mean())
        self.P = (0.01 * torch.randn(ds.num_users, self.dim, generator=gen)).requires_grad_()
        self.Q = (0.01 * torch.randn(ds.num_items, self.dim, generator=gen)).requires_grad_()
        self.bu = torch.zeros(ds.num_users, requires_grad=True)
        self.bi = torch.zeros(ds.num_items, requires_grad=True)
        params = [self.P, self.Q, self.bu, self.bi]
        opt = torch.optim.Adam(params, lr=self.lr)

        def run_epoch() -> float:
            total = 0.0
            for b in _batches(len(r), self.batch_size, gen):
                pu, qi, bu, bi = self.P[u[b]], self.Q[i[b]], self.bu[u[b]], self.bi[i[b]]
                err = F.mse_loss(self.mu + bu + bi + (pu * qi).sum(1), r[b])
                penalty = (pu.square().sum(1) + qi.square().sum(1) + bu.square() + bi.square()).mean()
                opt.zero_grad(set_to_none=True)
                (err + self.reg * penalty).backward()
                opt.step()
                total += float(err.detach()) * len(b)
            return total / len(r)

        vu, vi, vr = _role_arrays(split, VALID)
        evaluate = (lambda: metrics.rmse(self.predict_ratings(vu, vi), vr)) if len(vr) else (lambda: None)
        info = _early_stopping(
            params, run_epoch, evaluate, max_epochs=max_epochs, patience=patience, higher_is_better=False
        )
        self._calibrate()
        self._done(started, **info)
        return self

    @torch.no_grad()
    def _raw_ratings(self, users, items):
        u, i = torch.as_tensor(users), torch.as_tensor(items)
        pred = self.mu + self.bu[u] + self.bi[i] + (self.P[u] * self.Q[i]).sum(1)
        return pred.double().numpy()

    @torch.no_grad()
    def score_all(self, users):
        u = torch.as_tensor(np.asarray(users, np.int64))
        return (self.mu + self.bu[u][:, None] + self.bi[None, :] + self.P[u] @ self.Q.T).numpy()


# ---- ranking models ----------------------------------------------------------------------------
def _sample_negatives(
    users: np.ndarray, positives: np.ndarray, num_items: int, rng: np.random.Generator
) -> np.ndarray:
    """One uniform item per user that is not among the user's training items (rejection sampling).

    `positives` are the sorted keys user * num_items + item of training pairs. Rejection rounds stop
    after 20 (a user who has seen almost every item keeps a rare positive "negative").
    """
    neg = rng.integers(0, num_items, len(users))
    for _ in range(20):
        keys = users * num_items + neg
        pos = np.searchsorted(positives, keys).clip(max=len(positives) - 1)
        clash = np.flatnonzero(positives[pos] == keys)
        if len(clash) == 0:
            break
        neg[clash] = rng.integers(0, num_items, len(clash))
    return neg


def _full_catalog_ranks(
    model: Baseline, split: Split, users: np.ndarray, items: np.ndarray, role: int, batch_size: int = 1024
) -> np.ndarray:
    """0-based full-catalog rank of each (user, target item), earlier-role items excluded, in batches."""
    parts = [np.zeros(0, np.int64)]
    for a in range(0, len(users), batch_size):
        u, i = users[a : a + batch_size], items[a : a + batch_size]
        parts.append(metrics.target_ranks(model.score_all(u), i, metrics.exclusion_mask(split, u, role)))
    return np.concatenate(parts)


def _valid_ndcg(model: Baseline, split: Split, k: int) -> float | None:
    """Full-catalog validation NDCG@k (training items excluded), or None without validation targets."""
    users, items, _ = _role_arrays(split, VALID)
    if len(users) == 0:
        return None
    return metrics.ndcg(_full_catalog_ranks(model, split, users, items, VALID), k)


class BPRMF(Baseline):
    """x_ui = p_u . q_i, trained with Bayesian personalised ranking (Rendle et al. 2009).

    Loss per training pair (u, i) with one uniform negative j the user has not interacted with in
    training: -log sigmoid(x_ui - x_uj) + reg * (|p_u|^2 + |q_i|^2 + |q_j|^2). Negatives are redrawn
    every epoch. Early stopping on full-catalog validation NDCG@k.

    Args:
        dim: latent dimension; lr: Adam learning rate; reg: L2 weight; batch_size: pairs per step;
        k: cut-off of the validation NDCG used for early stopping.
    """

    def __init__(
        self, dim: int = 64, lr: float = 0.005, reg: float = 1e-4, batch_size: int = 4096, k: int = 10
    ):
        super().__init__(dim=dim, lr=lr, reg=reg, batch_size=batch_size, k=k)
        self.dim, self.lr, self.reg, self.batch_size, self.k = dim, lr, reg, batch_size, k

    def fit(self, split: Split, *, seed: int = 0, max_epochs: int = 200, patience: int = 10):
        """Train on TRAIN pairs (repeats collapsed), early-stopping on VALID NDCG@k. Returns self."""
        started = self._start(split, seed)
        ds = split.dataset
        gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
        u_np, i_np, _ = _role_arrays(split, TRAIN)
        keys = np.unique(u_np * ds.num_items + i_np)  # implicit: a pair counts once
        u_np, i_np = keys // ds.num_items, keys % ds.num_items
        u, i = torch.as_tensor(u_np), torch.as_tensor(i_np)
        self.P = (0.1 * torch.randn(ds.num_users, self.dim, generator=gen)).requires_grad_()
        self.Q = (0.1 * torch.randn(ds.num_items, self.dim, generator=gen)).requires_grad_()
        opt = torch.optim.Adam([self.P, self.Q], lr=self.lr)

        def run_epoch() -> float:
            j = torch.as_tensor(_sample_negatives(u_np, keys, ds.num_items, rng))
            total = 0.0
            for b in _batches(len(u), self.batch_size, gen):
                pu, qi, qj = self.P[u[b]], self.Q[i[b]], self.Q[j[b]]
                loss = -F.logsigmoid((pu * (qi - qj)).sum(1)).mean()
                penalty = (pu.square().sum(1) + qi.square().sum(1) + qj.square().sum(1)).mean()
                opt.zero_grad(set_to_none=True)
                (loss + self.reg * penalty).backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            return total / len(u)

        info = _early_stopping(
            [self.P, self.Q], run_epoch, lambda: _valid_ndcg(self, split, self.k),
            max_epochs=max_epochs, patience=patience, higher_is_better=True,
        )
        self._done(started, **info)
        return self

    @torch.no_grad()
    def score_all(self, users):
        return (self.P[torch.as_tensor(np.asarray(users, np.int64))] @ self.Q.T).numpy()


class ItemKNN(Baseline):
    """Item-based top-N (Deshpande & Karypis 2004) on the binary training matrix X [users, items].

    sim(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|) (cosine of item columns); each item i keeps its
    `neighbours` most similar items (ties: lower item index); score(u, j) = sum over the user's
    training items i of sim_k(i, j). Similarities are computed in row chunks, so memory stays
    O(chunk * num_items) even for large catalogs.

    Args:
        neighbours: k, the similar items kept per item.
        chunk: rows of the similarity matrix computed at once.
    """

    def __init__(self, neighbours: int = 50, chunk: int = 1024):
        super().__init__(neighbours=neighbours, chunk=chunk)
        self.neighbours, self.chunk = neighbours, chunk

    def fit(self, split: Split, *, seed: int = 0, max_epochs: int | None = None, patience: int | None = None):
        """Build the top-k similarity matrix (deterministic; `seed`, `max_epochs`, `patience` unused)."""
        started = self._start(split, seed)
        ds = split.dataset
        u, i, _ = _role_arrays(split, TRAIN)
        x = sp.csr_matrix((np.ones(len(u)), (u, i)), shape=(ds.num_users, ds.num_items))
        x.data[:] = 1.0  # repeats collapse to one
        self.X = x
        norms = np.sqrt(np.asarray(x.sum(0)).ravel())
        xt = x.T.tocsr()
        rows, cols, vals = [], [], []
        k = min(self.neighbours, ds.num_items - 1)
        for start in range(0, ds.num_items, self.chunk):
            co = (xt[start : start + self.chunk] @ x).toarray()
            denom = norms[start : start + len(co), None] * norms[None, :]
            sim = np.divide(co, denom, out=np.zeros_like(co), where=denom > 0)
            sim[np.arange(len(co)), start + np.arange(len(co))] = 0.0  # an item is not its own neighbour
            top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
            top_sim = np.take_along_axis(sim, top, 1)
            keep = top_sim > 0
            rows.append(np.nonzero(keep)[0] + start)
            cols.append(top[keep])
            vals.append(top_sim[keep])
        self.S = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(ds.num_items, ds.num_items),
        )
        self._done(started, epochs_run=1, best_epoch=1, stopped_early=False)
        return self

    def score_all(self, users):
        return (self.X[np.asarray(users, np.int64)] @ self.S).toarray()


# ---- evaluation --------------------------------------------------------------------------------
def evaluate_baseline(
    model: Baseline, split: Split, role: int | str, k: int = 10, batch_size: int = 1024
) -> dict[str, float]:
    """Metrics of a fitted baseline on the split's VALID or TEST interactions.

    Rating models on explicit data: RMSE/MAE of `predict_ratings`, and preference metrics for the
    label rating >= like_threshold: AUC of the predicted rating, log-loss and accuracy of
    `like_proba`. Every model: full-catalog HR@k, NDCG@k, MRR@k of each target, excluding the user's
    earlier-role items (`metrics.exclusion_mask`), ties pessimistic.

    Args:
        model: a fitted baseline.
        split: the split it was fitted on.
        role: ``"valid"``/``VALID`` or ``"test"``/``TEST``.
        k: ranking cut-off.
        batch_size: users scored at once.

    Returns:
        Metric name -> value, plus ``n`` (interactions evaluated).
    """
    value = metrics.ranking_role(role)
    users, items, ratings = _role_arrays(split, value)
    out: dict[str, float] = {"n": len(users)}
    if model.rates and split.dataset.explicit:
        pred = model.predict_ratings(users, items)
        out.update(rmse=metrics.rmse(pred, ratings), mae=metrics.mae(pred, ratings))
        like = ratings >= model.like_threshold
        proba = model.like_proba(users, items)
        out.update(
            auc=metrics.auc(pred, like),
            log_loss=metrics.log_loss(proba, like),
            accuracy=metrics.accuracy(proba, like),
        )
    ranks = _full_catalog_ranks(model, split, users, items, value, batch_size)
    out[f"hr@{k}"] = metrics.hit_rate(ranks, k)
    out[f"ndcg@{k}"] = metrics.ndcg(ranks, k)
    out[f"mrr@{k}"] = metrics.mrr(ranks, k)
    return out
