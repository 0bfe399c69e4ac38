"""Classic baselines, trained and scored on exactly the same `Split` as the language model.

| model          | rating (predict_ratings)   | ranking (score_all)                          |
|----------------|----------------------------|----------------------------------------------|
| `Popularity`   | global mean                | training interaction count of each item      |
| `BiasBaseline` | mu + b_u + b_i (ALS)       | predicted rating (= item bias order)          |
| `BiasedMF`     | mu + b_u + b_i + p_u.q_i   | predicted rating                             |
| `BPRMF`        | -                          | p_u.q_i, BPR loss, uniform negatives         |
| `ItemKNN`      | -                          | sum of top-k cosine similarities to history  |
| `SASRec`       | -                          | causal self-attention over the item sequence |
| `ContentKNN`   | -                          | TF-IDF cosine of item text to the history    |
| `LikeRatio`    | - (like: the user's share) | -                                            |
| `PriorAlone`   | mtrec's rating prior       | mtrec's ranking prior (no backbone)          |

Every model: ``fit(split, *, seed=0, max_epochs=..., patience=...) -> self`` (learns from the split's
TRAIN interactions only; iterative models early-stop on the VALID interactions and keep the best
epoch, and take ``max_seconds`` to cut training short), ``score_all(users, role="valid") ->
[len(users), num_items]``, an ``info`` dict (epochs run, best epoch, stopped_early, budget_stopped,
hyper-parameters, fit seconds, per-epoch history). Rating models also give
``predict_ratings(users, items)`` and ``like_proba(users, items)`` (P(rating >= like_threshold),
a logistic on the predicted rating fitted on training). `evaluate_baseline` scores any of them
with the metrics of `mtrec.metrics` and the ranking protocol of `mtrec.ranking`. The training
loop (early stopping), the Platt calibration, the negative sampler and SASRec's network are the
collaborative layer's (`mtrec.model.collaborative`, `mtrec.model.sequential`), shared with the
heads' priors: the baselines add only their models' losses.

The `role` of `score_all` says which targets are being ranked, hence which history a model may
read: for validation the user's TRAIN interactions, for test TRAIN + VALID (the validation item
precedes the test item; the language model's prompts show it too). Models that read a history at
scoring time (`ItemKNN`, `SASRec`) use it; models with fitted user factors ignore it (their users
are not re-fitted with the validation item).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from mtrec import metrics, ranking
from mtrec.data.splits import TEST, TRAIN, VALID, Split, ranking_role
from mtrec.model.collaborative import batches, early_stopping, pair_keys, platt, sample_unobserved
from mtrec.model.sequential import SequenceNet, history_inputs, train_epoch, training_windows


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
    ranks = True  # has score_all (a like-only model has not)

    def __init__(self, **hparams) -> None:
        self.hparams = hparams
        self.info: dict = {"hparams": dict(hparams)}
        self.split: Split | None = None

    def fit(self, split: Split, *, seed: int = 0, max_epochs: int | None = None, patience: int | None = None):
        raise NotImplementedError

    def score_all(self, users: Sequence[int] | np.ndarray, role: int | str = VALID) -> np.ndarray:
        """Scores of every catalog item for each user: float array [len(users), num_items].

        `role` (``"valid"``/``"test"``) picks the history the model may read (see the module docstring).
        """
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
        # Platt scaling on standardised training predictions (`mtrec.model.collaborative.platt`).
        u, i, r = _role_arrays(self.split, TRAIN)
        pred = self.predict_ratings(u, i)
        mean, std = pred.mean(), pred.std() or 1.0
        w = platt((pred - mean) / std, (r >= self.like_threshold).astype(np.float64))
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

    def score_all(self, users, role=VALID):
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

    def score_all(self, users, role=VALID):
        users = np.asarray(users, np.int64)
        return self.mu + self.b_u[users][:, None] + self.b_i[None, :]


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

    def fit(
        self,
        split: Split,
        *,
        seed: int = 0,
        max_epochs: int = 100,
        patience: int = 5,
        max_seconds: float | None = None,
    ):
        """Train on TRAIN ratings, early-stopping on VALID RMSE (time budget `max_seconds`). Returns self."""
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
            for b in batches(len(r), self.batch_size, gen):
                ub, ib = u[b], i[b]  # index_select: its backward is deterministic on a multi-threaded CPU
                pu, qi = self.P.index_select(0, ub), self.Q.index_select(0, ib)
                bu, bi = self.bu.index_select(0, ub), self.bi.index_select(0, ib)
                err = F.mse_loss(self.mu + bu + bi + (pu * qi).sum(1), r[b])
                penalty = (pu.square().sum(1) + qi.square().sum(1) + bu.square() + bi.square()).mean()
                opt.zero_grad(set_to_none=True)
                (err + self.reg * penalty).backward()
                opt.step()
                total += float(err.detach()) * len(b)
            return total / len(r)

        vu, vi, vr = _role_arrays(split, VALID)
        evaluate = (lambda: metrics.rmse(self.predict_ratings(vu, vi), vr)) if len(vr) else (lambda: None)
        info = early_stopping(
            params,
            run_epoch,
            evaluate,
            max_epochs=max_epochs,
            patience=patience,
            higher_is_better=False,
            max_seconds=max_seconds,
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
    def score_all(self, users, role=VALID):
        u = torch.as_tensor(np.asarray(users, np.int64))
        return (self.mu + self.bu[u][:, None] + self.bi[None, :] + self.P[u] @ self.Q.T).numpy()


# ---- ranking models ----------------------------------------------------------------------------
def _valid_ndcg(model: Baseline, split: Split, k: int) -> float | None:
    """Full-catalog validation NDCG@k (training items excluded), or None without validation targets."""
    users, items, _ = _role_arrays(split, VALID)
    if len(users) == 0:
        return None
    return metrics.ndcg(full_catalog_ranks(model, split, users, items, VALID), k)


def full_catalog_ranks(model: Baseline, split: Split, users: np.ndarray, items: np.ndarray, role: int | str,
                       batch_size: int | None = None, candidates=None) -> np.ndarray:
    """0-based rank of each (user, target item) under `mtrec.ranking`'s protocol (earlier-role items
    left out, repeats ranked, ties pessimistic), scored in blocks by `model.score_all`."""
    value = ranking_role(role)
    return ranking.rank_targets(lambda u: model.score_all(u, role=value), users, items,
                                ranking.Seen.before(split, value, dense=False), candidates, batch_size,
                                split.dataset.num_items)


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

    def fit(
        self,
        split: Split,
        *,
        seed: int = 0,
        max_epochs: int = 200,
        patience: int = 10,
        max_seconds: float | None = None,
    ):
        """Train on TRAIN pairs (repeats collapsed), early-stopping on VALID NDCG@k (time budget
        `max_seconds`). Returns self."""
        started = self._start(split, seed)
        ds = split.dataset
        gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
        u_np, i_np, _ = _role_arrays(split, TRAIN)
        keys = pair_keys(u_np, i_np, ds.num_items)  # implicit: a pair counts once
        u_np, i_np = keys // ds.num_items, keys % ds.num_items
        u, i = torch.as_tensor(u_np), torch.as_tensor(i_np)
        self.P = (0.1 * torch.randn(ds.num_users, self.dim, generator=gen)).requires_grad_()
        self.Q = (0.1 * torch.randn(ds.num_items, self.dim, generator=gen)).requires_grad_()
        opt = torch.optim.Adam([self.P, self.Q], lr=self.lr)

        def run_epoch() -> float:
            j = torch.as_tensor(sample_unobserved(u_np, keys, ds.num_items, rng))
            total = 0.0
            for b in batches(len(u), self.batch_size, gen):
                # index_select, not P[u]: the backward of advanced indexing (index_put_ with accumulate) is
                # not deterministic on a multi-threaded CPU
                pu, qi, qj = self.P.index_select(0, u[b]), self.Q.index_select(0, i[b]), self.Q.index_select(0, j[b])
                loss = -F.logsigmoid((pu * (qi - qj)).sum(1)).mean()
                penalty = (pu.square().sum(1) + qi.square().sum(1) + qj.square().sum(1)).mean()
                opt.zero_grad(set_to_none=True)
                (loss + self.reg * penalty).backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            return total / len(u)

        info = early_stopping(
            [self.P, self.Q],
            run_epoch,
            lambda: _valid_ndcg(self, split, self.k),
            max_epochs=max_epochs,
            patience=patience,
            higher_is_better=True,
            max_seconds=max_seconds,
        )
        self._done(started, **info)
        return self

    @torch.no_grad()
    def score_all(self, users, role=VALID):
        return (self.P[torch.as_tensor(np.asarray(users, np.int64))] @ self.Q.T).numpy()


class ItemKNN(Baseline):
    """Item-based top-N (Deshpande & Karypis 2004) on the binary training matrix X [users, items].

    sim(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|) (cosine of item columns); each item i keeps its
    `neighbours` most similar items (ties: lower item index); score(u, j) = sum over the user's
    history items i of sim_k(i, j). The history is the user's TRAIN items for validation and
    TRAIN + VALID items for test (`score_all`'s role); similarities come from TRAIN only.
    Similarities are computed in sparse row chunks and only co-occurring pairs are ever stored, so
    memory follows the co-occurrence count, not num_items^2 (Ciao has 105k items).

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
        self.X = _binary_matrix(split, split.role == TRAIN)
        self._history = {r: _binary_matrix(split, split.history_mask(r)) for r in (VALID, TEST)}
        norms = np.sqrt(np.asarray(self.X.sum(0)).ravel())
        xt = self.X.T.tocsr()
        k = min(self.neighbours, ds.num_items - 1)
        starts = range(0, ds.num_items, self.chunk)
        parts = [_top_k_similar(xt[a : a + self.chunk] @ self.X, norms, a, k) for a in starts]
        rows, cols, vals = (np.concatenate([part[n] for part in parts]) for n in range(3))
        self.S = sp.csr_matrix((vals, (rows, cols)), shape=(ds.num_items, ds.num_items))
        self._done(started, epochs_run=1, best_epoch=1, stopped_early=False)
        return self

    def score_all(self, users, role=VALID):
        history = self._history[ranking_role(role)]
        return (history[np.asarray(users, np.int64)] @ self.S).toarray()


def _binary_matrix(split: Split, keep: np.ndarray) -> sp.csr_matrix:
    """[num_users, num_items] 0/1 CSR matrix of the interactions where `keep` (repeats count once)."""
    ds = split.dataset
    idx = np.flatnonzero(keep)
    x = sp.csr_matrix(
        (np.ones(len(idx)), (ds.user_idx[idx], ds.item_idx[idx])), shape=(ds.num_users, ds.num_items)
    )
    x.data[:] = 1.0
    return x


def _top_k_similar(co: sp.spmatrix, norms: np.ndarray, start: int, k: int):
    """(rows, cols, sims) of each row's k most similar items, from a chunk of co-occurrence counts.

    `co` holds rows start.. of X^T X; sim = co / (norm_row * norm_col). Within a row the order is
    similarity descending, then item index ascending, so ties keep the lower index."""
    co = co.tocoo()
    r, c = co.row.astype(np.int64), co.col.astype(np.int64)
    sim = co.data / (norms[start + r] * norms[c])  # co > 0 implies both norms > 0
    keep = (start + r != c) & (sim > 0)  # an item is not its own neighbour
    r, c, sim = r[keep], c[keep], sim[keep]
    order = np.lexsort((c, -sim, r))
    r, c, sim = r[order], c[order], sim[order]
    rank = np.arange(len(r)) - np.searchsorted(r, r, side="left")  # position within the row
    top = rank < k
    return r[top] + start, c[top], sim[top]


# ---- sequential -------------------------------------------------------------------------------
class SASRec(Baseline):
    """Self-attentive sequential recommendation (Kang & McAuley 2018), trained with a full softmax.

    Training: each user's TRAIN sequence is cut from its end into windows of `max_len` + 1 items;
    at every position the model predicts the next item with a cross-entropy over the whole catalog
    (stronger than the paper's one-negative BCE; Klenitskiy & Vasilev 2023). Early stopping on
    full-catalog validation NDCG@k with training items excluded. Scoring reads the user's TRAIN
    items for validation and TRAIN + VALID items for test (the `role` of `score_all`).
    Deterministic on CPU for a given seed (the global torch RNG is forked, not disturbed).

    Args:
        max_len: items of history read; hidden: embedding width; blocks: attention blocks;
        heads: attention heads; dropout: dropout rate; lr: Adam learning rate; batch_size: windows
        per step; k: validation NDCG cut-off; device: torch device to train and score on;
        max_logits: logits computed at once in the loss (memory bound on big catalogs).
    """

    def __init__(
        self,
        max_len: int = 50,
        hidden: int = 64,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
        lr: float = 1e-3,
        batch_size: int = 128,
        k: int = 10,
        device: str = "cpu",
        max_logits: int = 1 << 23,
    ):
        super().__init__(
            max_len=max_len,
            hidden=hidden,
            blocks=blocks,
            heads=heads,
            dropout=dropout,
            lr=lr,
            batch_size=batch_size,
            k=k,
            device=device,
            max_logits=max_logits,
        )
        self.max_len, self.hidden, self.blocks, self.heads, self.dropout = (
            max_len,
            hidden,
            blocks,
            heads,
            dropout,
        )
        self.lr, self.batch_size, self.k, self.device, self.max_logits = lr, batch_size, k, device, max_logits

    def fit(
        self,
        split: Split,
        *,
        seed: int = 0,
        max_epochs: int = 200,
        patience: int = 10,
        max_seconds: float | None = None,
    ):
        """Train on TRAIN sequences, early-stopping on VALID NDCG@k (time budget `max_seconds`).

        Returns:
            self.
        """
        started = self._start(split, seed)
        ds = split.dataset
        windows = training_windows(split, self.max_len)
        devices = [torch.device(self.device)] if torch.device(self.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            self.net = SequenceNet(
                ds.num_items, self.max_len, self.hidden, self.blocks, self.heads, self.dropout
            )
            self.net.to(self.device)
            opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, betas=(0.9, 0.98))
            gen = torch.Generator().manual_seed(seed)
            deadline = None if max_seconds is None else time.perf_counter() + max_seconds
            info = early_stopping(
                list(self.net.parameters()),
                lambda: train_epoch(self.net, windows, opt, gen, self.batch_size, self.max_logits, self.device,
                                    deadline),
                lambda: _valid_ndcg(self, split, self.k),
                max_epochs=max_epochs,
                patience=patience,
                higher_is_better=True,
                max_seconds=max_seconds,
            )
        self.net.eval()
        self._done(started, windows=len(windows), **info)
        return self

    def history_inputs(self, users: np.ndarray, role: int | str) -> torch.Tensor:
        """[B, max_len] the newest `max_len` items each user had before the `role` targets, left-padded."""
        return history_inputs(self.split, users, role, self.max_len)

    @torch.no_grad()
    def score_all(self, users, role=VALID):
        self.net.eval()
        seq = self.history_inputs(users, role).to(self.device)
        return (self.net(seq)[:, -1] @ self.net.catalog().T).float().cpu().numpy()


# ---- content and user-level baselines ------------------------------------------------------------
_WORD = re.compile(r"\w+", re.UNICODE)


def item_words(item) -> list[str]:
    """The words of an item's title, text and categories (lower case; a category as ``cat:<name>``).
    An item without descriptive text (`Item.described` False: "<Category> product <id>") gives its
    categories only, so that no id acts as a word."""
    words = _WORD.findall(f"{item.title} {item.text}".lower()) if item.described else []
    return words + ["cat:" + c.lower() for c in item.categories]


def tfidf_matrix(items) -> sp.csr_matrix:
    """[items, vocabulary] TF-IDF rows, L2-normalised: tf = 1 + log(count), idf = log((1 + n) / (1 + df)) + 1
    (an item without words is a zero row)."""
    vocab: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for r, item in enumerate(items):
        words, counts = np.unique(item_words(item), return_counts=True)
        rows += [r] * len(words)
        cols += [vocab.setdefault(w, len(vocab)) for w in words]
        vals.append(1.0 + np.log(counts))
    vals = np.concatenate(vals) if vals else np.zeros(0)
    x = sp.csr_matrix((vals, (rows, cols)), shape=(len(items), max(len(vocab), 1)))
    df = np.bincount(np.asarray(cols, np.int64), minlength=x.shape[1])
    x = x @ sp.diags(np.log((1 + len(items)) / (1 + df)) + 1.0)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ x)


class ContentKNN(Baseline):
    """Content-based ranking (a TF-IDF vector-space model): score(u, j) = cos(profile_u, tfidf_j),
    the profile the sum of the TF-IDF rows (`tfidf_matrix`) of the user's `recent` newest history
    items (0: all of them). The history is TRAIN for validation and TRAIN + VALID for test, as for
    `ItemKNN`; nothing is learned from other users, so an item nobody has taken ranks like any other.

    Args:
        recent: newest history items in the profile (0 = the whole history).
    """

    def __init__(self, recent: int = 0):
        super().__init__(recent=recent)
        self.recent = recent

    def fit(self, split: Split, *, seed: int = 0, max_epochs: int | None = None, patience: int | None = None):
        """Build the item vectors and each role's history (deterministic; the other arguments are unused)."""
        started = self._start(split, seed)
        self.T = tfidf_matrix(split.dataset.items)
        self._history = {VALID: self._profiles(split, VALID), TEST: self._profiles(split, TEST)}
        self._done(started, epochs_run=1, best_epoch=1, stopped_early=False, vocabulary=self.T.shape[1])
        return self

    def _profiles(self, split: Split, role: int) -> sp.csr_matrix:
        """[users, items] 0/1: each user's `recent` newest history items for ranking `role`'s targets."""
        ds = split.dataset
        seq = split.seq[split.history_mask(role)[split.seq]]  # grouped by user, oldest first
        users = ds.user_idx[seq]
        if self.recent:
            left = np.searchsorted(users, users, side="right") - np.arange(len(seq))  # this and newer, per user
            seq, users = seq[left <= self.recent], users[left <= self.recent]
        x = sp.csr_matrix((np.ones(len(seq)), (users, ds.item_idx[seq])), shape=(ds.num_users, ds.num_items))
        x.data[:] = 1.0
        return x

    def score_all(self, users, role=VALID):
        profile = self._history[ranking_role(role)][np.asarray(users, np.int64)] @ self.T
        return (profile @ self.T.T).toarray()


class LikeRatio(Baseline):
    """One feature per user, for the preference task on explicit data: the share of the user's
    training ratings at or above `like_threshold` (the training share where a user has none).
    It ranks nothing (every item of a user ties) and predicts no rating; `like_scores` is its output.
    """

    ranks = False

    def __init__(self, like_threshold: float = 4.0):
        super().__init__(like_threshold=like_threshold)
        self.like_threshold = like_threshold

    def fit(self, split: Split, *, seed: int = 0, max_epochs: int | None = None, patience: int | None = None):
        started = self._start(split, seed)
        _require_explicit(split, "LikeRatio")
        users, _, ratings = _role_arrays(split, TRAIN)
        liked = np.bincount(users, weights=(ratings >= self.like_threshold), minlength=split.dataset.num_users)
        n = np.bincount(users, minlength=split.dataset.num_users)
        overall = float(liked.sum() / max(n.sum(), 1))
        self.ratio = np.where(n > 0, liked / np.maximum(n, 1), overall)
        self._done(started, epochs_run=1, best_epoch=1, stopped_early=False)
        return self

    def like_scores(self, users, items) -> np.ndarray:
        return self.ratio[np.asarray(users, np.int64)]

    def score_all(self, users, role=VALID):
        raise NotImplementedError("LikeRatio ranks nothing: every item of a user gets the same score")


class PriorAlone(Baseline):
    """mtrec's heads without the language model: every prior the heads start from (popularity bias,
    per-user and per-item offsets, collaborative factors), fitted on the training split exactly as
    training fits them (`mtrec.model.build.build_heads`, the same cached fits for the same seed), and
    combined exactly as `TaskHeads.forward` combines them, with a zero backbone state. There is no
    forward pass, and the query against the item table contributes nothing (unlike step 0 of a run).

    With a sequential prior (`ranking_prior` sequence or both) the ranking scores add the fitted
    sequence network's, reading each user's history as the runs' prompts do (TRAIN items for
    validation, TRAIN + VALID for test). With ``sequence_init="text"`` that network's item table
    starts, as the runs' does, from their backbone's encodings of the item texts (`encoder`: the
    runs' `mtrec.bench.prior.encoder_settings`, so the encodings are bit-identical to theirs; a
    random-init backbone's with ``model.random_init``): the backbone encodes the catalog once before
    the fit and is not used after. With `sequence_seeds` > 1, the runs' seed ensemble of that network.

    Args:
        collab_dim, like_threshold, negatives, ranking_prior, sequence_len, sequence_init, sequence_seeds:
            as `model.collab_dim`, `data.like_threshold`, `data.negatives_per_positive`,
            `model.ranking_prior`, `model.sequence_len`, `model.sequence_init` and
            `model.sequence_seeds` of the compared runs.
        encoder: with the text start, the runs' encoder settings (``{"model.backbone": ..., ...}``).
    """

    def __init__(self, collab_dim: int = 32, like_threshold: float = 4.0, negatives: int = 1,
                 ranking_prior: str = "factors", sequence_len: int = 50, sequence_init: str = "random",
                 encoder: dict | None = None, sequence_seeds: int = 1):
        if sequence_seeds < 1 or (sequence_seeds > 1 and ranking_prior == "factors"):
            raise ValueError(f"PriorAlone: sequence_seeds={sequence_seeds} needs >= 1, and more than one needs a "
                             "sequential prior (ranking_prior sequence or both)")
        if sequence_init == "text" and (ranking_prior == "factors" or not (encoder or {}).get("model.backbone")):
            raise ValueError("PriorAlone: sequence_init='text' needs a sequential prior (ranking_prior sequence "
                             "or both) and the runs' encoder settings (encoder['model.backbone'] at least)")
        kw = {} if ranking_prior == "factors" else dict(ranking_prior=ranking_prior, sequence_len=sequence_len)
        if sequence_init == "text":  # stored rows of randomly started priors keep their settings
            kw |= dict(sequence_init=sequence_init, encoder=encoder)
        if sequence_seeds > 1:  # stored rows of one network keep their settings
            kw |= dict(sequence_seeds=sequence_seeds)
        super().__init__(collab_dim=collab_dim, like_threshold=like_threshold, negatives=negatives, **kw)
        self.collab_dim, self.like_threshold, self.negatives = collab_dim, like_threshold, negatives
        self.ranking_prior, self.sequence_len = ranking_prior, sequence_len
        self.sequence_init, self.encoder, self.sequence_seeds = sequence_init, dict(encoder or {}), sequence_seeds

    def fit(self, split: Split, *, seed: int = 0, max_epochs: int | None = None, patience: int | None = None):
        from mtrec.model.build import build_heads

        started = self._start(split, seed)
        ds = split.dataset
        self.rates = ds.explicit
        text = None
        if self.sequence_init == "text":
            from mtrec.bench.prior import item_encodings

            enc = self.encoder
            text = item_encodings(ds, enc["model.backbone"], bool(enc.get("model.random_init")), seed, enc)
        self.heads = build_heads(ds, torch.zeros(ds.num_items, 1), split.train, 1, self.like_threshold,
                                 collab_dim=self.collab_dim, split=split, seed=seed,
                                 negatives_per_positive=self.negatives, ranking_prior=self.ranking_prior,
                                 sequence_len=self.sequence_len, sequence_text=text,
                                 sequence_seeds=self.sequence_seeds).eval()
        self._done(started, epochs_run=1, best_epoch=1, stopped_early=False)
        return self

    @torch.no_grad()
    def _heads(self, users, items=None, role=None) -> dict:
        extra = {}
        if role is not None and self.heads.has_sequence:
            extra["history"] = history_inputs(self.split, users, role, self.sequence_len)
        users = torch.as_tensor(np.asarray(users, np.int64))
        items = None if items is None else torch.as_tensor(np.asarray(items, np.int64))
        return self.heads(torch.zeros(len(users), 1), None, items, users, **extra)

    def predict_ratings(self, users, items) -> np.ndarray:
        return self._heads(users, items)["rating"].double().numpy()

    def like_scores(self, users, items) -> np.ndarray:
        return self._heads(users, items)["like_logit"].double().numpy()

    def like_proba(self, users, items) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.like_scores(users, items)))

    def score_all(self, users, role=VALID):
        return self._heads(users, role=role)["item_logits"].numpy()


def user_set_sha256(users) -> str:
    """A fingerprint of a set of user indices (order and repeats ignored): rows compared side by side
    must have been scored on the same users, not merely as many."""
    import hashlib

    return hashlib.sha256(np.unique(np.asarray(users, np.int64)).tobytes()).hexdigest()[:16]


# ---- evaluation --------------------------------------------------------------------------------
def baseline_records(
    model: Baseline,
    split: Split,
    role: int | str,
    batch_size: int | None = None,
    users: np.ndarray | None = None,
    like_rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """What a fitted baseline predicts for each VALID or TEST target (`mtrec.bench.intervals`' records).

    Rating models on explicit data: `predict_ratings` of every target. Preference rows (`like_rows`,
    default: the role's interactions labelled rating >= like_threshold, on explicit data) scored by
    the model's `like_scores` where it has them, else by the predicted rating, else (ranking models)
    by the ranking score, with `like_proba` beside where the model gives one. Every ranking model:
    the full-catalog rank of each target, the user's earlier-role items excluded (`mtrec.ranking`),
    ties pessimistic. `users` limits everything to those users' targets."""
    value = ranking_role(role)
    users_, items, ratings = _role_arrays(split, value)
    if users is not None:
        keep = np.isin(users_, np.asarray(users, np.int64))
        users_, items, ratings = users_[keep], items[keep], ratings[keep]
    out: dict[str, np.ndarray] = {}
    explicit = split.dataset.explicit
    if model.rates and explicit:
        out.update(rating_user=users_, rating_item=items, rating_pred=model.predict_ratings(users_, items),
                   rating_target=ratings)
    if like_rows is None and explicit and hasattr(model, "like_threshold"):
        like_rows = (users_, items, ratings >= model.like_threshold)
    if like_rows is not None and (hasattr(model, "like_scores") or model.rates or model.ranks):
        lu, li, label = (np.asarray(x) for x in like_rows)
        if users is not None:
            keep = np.isin(lu, np.asarray(users, np.int64))
            lu, li, label = lu[keep], li[keep], label[keep]
        if hasattr(model, "like_scores"):
            score = model.like_scores(lu, li)
        elif model.rates and explicit:
            score = model.predict_ratings(lu, li)
        else:
            score = _scores_of(model, split, lu, li, value)
        out.update(like_user=lu, like_item=li, like_score=np.asarray(score, np.float64), like_label=label > 0.5)
        if hasattr(model, "like_proba") and (explicit or not model.rates):  # a rating model's needs ratings
            out["like_proba"] = model.like_proba(lu, li)
    if model.ranks:
        out["rank_user"] = users_
        out["rank"] = full_catalog_ranks(model, split, users_, items, value, batch_size)
        if split.heldout_items is not None:  # cold-items protocol: first the rank among the held-out items
            out["rank_full"] = out["rank"]
            out["rank"] = full_catalog_ranks(model, split, users_, items, value, batch_size,
                                             np.flatnonzero(split.heldout_items))
    return out


def _scores_of(model: Baseline, split: Split, users: np.ndarray, items: np.ndarray, role: int) -> np.ndarray:
    """A ranking model's score of each (user, item) pair, from `score_all` in blocks."""
    step = ranking.block_size(split.dataset.num_items)
    parts = [np.zeros(0)]
    for a in range(0, len(users), step):
        u, i = users[a : a + step], items[a : a + step]
        parts.append(np.asarray(model.score_all(u, role=role))[np.arange(len(u)), i])
    return np.concatenate(parts)


def evaluate_baseline(
    model: Baseline,
    split: Split,
    role: int | str,
    k: int = 10,
    batch_size: int | None = None,
    users: np.ndarray | None = None,
    like_rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """Metrics of a fitted baseline on the split's VALID or TEST interactions (`baseline_records`,
    summarised by `mtrec.bench.intervals.summarise`): RMSE/MAE, preference AUC (log-loss and
    accuracy where the model gives probabilities), full-catalog HR@k, NDCG@k, MRR@k.

    Args:
        model: a fitted baseline.
        split: the split it was fitted on.
        role: ``"valid"``/``VALID`` or ``"test"``/``TEST``.
        k: ranking cut-off.
        batch_size: users scored at once (default: sized to the catalog, see `mtrec.ranking.block_size`).
        users: evaluate only these users' targets (a benchmark's seeded subset); None = every user.
        like_rows: (users, items, labels) preference rows (implicit data: observed and sampled items).

    Returns:
        Metric name -> value, plus ``n`` (interactions evaluated) and ``users_sha256``.
    """
    return records_summary(baseline_records(model, split, role, batch_size, users, like_rows), split, role, users, k)


def records_summary(rec: dict[str, np.ndarray], split: Split, role: int | str, users: np.ndarray | None = None,
                    k: int = 10) -> dict[str, float]:
    """`evaluate_baseline`'s dict from a row's records: ``n``, ``users_sha256`` and the metrics."""
    from mtrec.bench.intervals import summarise

    users_, _, _ = _role_arrays(split, ranking_role(role))
    if users is not None:
        users_ = users_[np.isin(users_, np.asarray(users, np.int64))]
    return {"n": len(users_), "users_sha256": user_set_sha256(users_), **summarise(rec, k=k)}
