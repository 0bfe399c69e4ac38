"""Collaborative factors for the heads: what the interaction matrix knows about each user and item.

A 135M backbone reading a user's history does not, in the compute a CPU affords, learn the
user-item affinities that matrix factorisation extracts from the interaction matrix (a linear probe
on its frozen states explains none of the rating residual after the biases). So, as CoLLM (Zhang et
al. 2023) and E4SRec (Li et al. 2023) do, mtrec gives the heads collaborative ID factors fitted on
the *training split*, and the backbone learns what the prompt adds on top:

- rating / like: ``z = b + o_i + o_u + <p_u, q_i>`` in the heads' own parametrisation (rating =
  ``lo + (hi - lo) sigmoid(z)``; like logit with its own offsets and a scale on the same dot product);
- recommendation: ``score_ui = bias_i + <r_u, t_i>``, fitted with full-catalog softmax (sampled
  columns above `FULL_SOFTMAX_ITEMS` items).

Each fit stops on held-out training interactions (every user's newest training interaction), then
refits on all of the training split for the chosen number of epochs: validation and test are never
seen. A user or item the run does not know (cold start) gets no factors, and the heads fall back to
the prompt alone. Fitting takes seconds on a CPU (MovieLens-100K: ~3 s per task).

The same module holds what every collaborative fit shares, the bench's baselines included: the
early-stopping loop, Platt calibration, and the sampler of unobserved items.

Rows of the tables are read with ``index_select``, never ``table[index]``: the backward of advanced
indexing (``index_put_`` with accumulate) sums in a thread-dependent order on a multi-threaded CPU,
so two same-seed fits would drift apart (the baselines and the heads do the same).

Large catalogs (more than `FULL_SOFTMAX_ITEMS` items: Ciao, Epinions) are fitted with row-sparse
updates: tables are read through sparse embedding lookups and moved by lazy Adam
(``torch.optim.SparseAdam``: only the rows a batch touches), so a step costs what the batch reads,
not the whole table (Epinions: 296k items; dense Adam spent most of each step on untouched rows).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mtrec.data.splits import Split

ArrayLike = np.ndarray | torch.Tensor

FULL_SOFTMAX_ITEMS = 20_000  # above this, each batch scores the targets and a shared random sample
MIN_STEPS_PER_EPOCH = 50
SAMPLED_NEGATIVES = 1024  # columns drawn per batch above FULL_SOFTMAX_ITEMS (4096 took ~1 min an Epinions epoch)
PROGRESS_STEPS = 500  # a fit epoch with more steps than this shows a progress bar


def rows(table: torch.Tensor, index: torch.Tensor, sparse: bool = False, flat: bool = False) -> torch.Tensor:
    """``table[index]`` along dim 0 with a deterministic backward: `index_select`, or with `sparse` a
    sparse embedding lookup (a row-sparse gradient, for `SparseAdam`). `flat`: a 1-D table held as
    [n, 1] for the sparse lookup (`as_rows`), read back 1-D."""
    if not sparse:
        return table.index_select(0, index)
    out = F.embedding(index, table, sparse=True)
    return out[..., 0] if flat else out


def as_rows(params: dict[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The 1-D tables `names` of `params` as [n, 1] (a sparse lookup needs a 2-D weight)."""
    return {k: (v[:, None].clone() if k in names else v) for k, v in params.items()}


def as_flat(params: dict[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Undo `as_rows`."""
    return {k: (v[:, 0].contiguous() if k in names else v) for k, v in params.items()}


def newest_per_user(split: Split, train_idx: np.ndarray, min_left: int = 2, k: int = 1) -> np.ndarray:
    """Bool mask over `train_idx`: each user's newest `k` training interactions, for users who keep
    at least `min_left` others (k = 1: the early-stopping hold-out of the fits; larger k: the stacking
    tail of `mtrec.model.stacking`)."""
    users = split.dataset.user_idx[train_idx]
    pos = split.position[train_idx]
    order = np.lexsort((-pos, users))  # each user's newest first
    su = users[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = su[1:] != su[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    counts = np.bincount(users, minlength=split.dataset.num_users)
    mask = np.zeros(len(train_idx), dtype=bool)
    mask[order[np.arange(len(order)) - start < k]] = True
    return mask & (counts[users] - k >= min_left)


# ---- shared by every collaborative fit: the heads' priors and the bench's baselines -------------
def batches(n: int, size: int, gen: torch.Generator, min_steps: int = 0) -> tuple[torch.Tensor, ...]:
    """A seeded random permutation of range(n) cut into batches of `size`; with `min_steps`, small
    data gets smaller batches (at least 16 rows) rather than fewer than `min_steps` steps an epoch."""
    if min_steps:
        size = max(16, min(size, n // min_steps))
    return torch.randperm(n, generator=gen).split(size)


def early_stopping(
    params: Sequence[torch.Tensor],
    run_epoch: Callable[[], float | None],
    evaluate: Callable[[], float | None],
    *,
    max_epochs: int,
    patience: int,
    higher_is_better: bool = False,
    min_delta: float = 0.0,
    score_start: bool = False,
    restore_best: bool = True,
    max_seconds: float | None = None,
    on_best: Callable[[], None] | None = None,
) -> dict:
    """Train epoch by epoch, scoring each by `evaluate` (None: no held-out data, every epoch runs);
    stop after `patience` epochs without an improvement of more than `min_delta`.

    With `score_start` the starting values are scored too (epoch 0: a fit may keep them). With
    `restore_best` the parameters of the best epoch are copied back at the end (the baselines report
    that model); without it they are left as trained (the priors refit from scratch for the best
    epoch count). `on_best()` runs at each new best. With `max_seconds`, no new epoch starts once
    that much time has passed (``budget_stopped``). A run that used all `max_epochs` without early
    stopping is ``epoch_capped`` (reproducible, unlike the clock).

    Returns:
        info entries: epochs_run, best_epoch, stopped_early, budget_stopped, epoch_capped,
        best_valid, train_loss, valid history.
    """
    best, best_epoch, bad, epoch = None, 0, 0, 0
    losses, history = [], []
    best_state = [p.detach().clone() for p in params] if restore_best else []
    started, budget_stopped = time.perf_counter(), False

    def better(score: float) -> bool:
        if best is None:
            return True
        return score > best + min_delta if higher_is_better else score < best - min_delta

    def consider(at: int) -> bool:
        """Score epoch `at`; True when patience has run out."""
        nonlocal best, best_epoch, bad, best_state
        with torch.no_grad():
            score = evaluate()
        if score is None:
            return False
        history.append(score)
        if better(score):
            best, best_epoch, bad = score, at, 0
            if restore_best:
                best_state = [p.detach().clone() for p in params]
            if on_best is not None:
                on_best()
            return False
        bad += 1
        return bad >= patience

    if score_start:
        consider(0)
    for epoch in range(1, max_epochs + 1):
        losses.append(run_epoch())
        if consider(epoch):
            break
        if max_seconds is not None and time.perf_counter() - started > max_seconds and epoch < max_epochs:
            budget_stopped = True
            break
    if best is not None and restore_best:
        with torch.no_grad():  # roll back to the best epoch: the model we report is that one
            for p, saved in zip(params, best_state):
                p.copy_(saved)
    return {
        "epochs_run": epoch,
        "best_epoch": best_epoch if score_start else (best_epoch or epoch),
        "stopped_early": best is not None and bad >= patience,
        "budget_stopped": budget_stopped,
        "epoch_capped": best is not None and bad < patience and not budget_stopped and epoch == max_epochs,
        "best_valid": best,
        "train_loss": losses,
        "valid": history,
    }


def logistic_fit(columns: ArrayLike, y: ArrayLike, iters: int = 30, ridge: float = 1e-6, penalty: float = 0.0,
                 center: ArrayLike | None = None) -> np.ndarray:
    """[k] weights ``w`` minimising the summed log-loss of ``sigmoid(columns @ w)`` against labels `y`
    (`columns` [n, k]) plus ``penalty / 2 * |w - center|^2``: Newton's method from 0 on a convex
    problem, in float64. The `ridge` on the Hessian only keeps it invertible when a column is constant
    or 0 (it does not move the optimum; a column that is 0 everywhere keeps weight 0); the `penalty`
    pins directions the data do not determine (two columns that differ by a near-constant) at
    `center`. Non-finite where it diverges (separable labels, no penalty)."""
    x = columns.detach().double().cpu().numpy() if torch.is_tensor(columns) else np.asarray(columns, np.float64)
    t = y.detach().double().cpu().numpy() if torch.is_tensor(y) else np.asarray(y, np.float64)
    w = np.zeros(x.shape[1])
    c = np.zeros(x.shape[1]) if center is None else np.asarray(center, np.float64)
    with np.errstate(over="ignore"):
        for _ in range(iters):
            p = 1.0 / (1.0 + np.exp(-x @ w))
            hess = x.T @ (x * (p * (1 - p))[:, None]) + ridge * np.eye(x.shape[1])
            grad = x.T @ (p - t)
            if penalty:
                hess, grad = hess + penalty * np.eye(x.shape[1]), grad + penalty * (w - c)
            w -= np.linalg.solve(hess, grad)
    return w


def platt(z: ArrayLike, y: ArrayLike, iters: int = 30, ridge: float = 1e-6) -> tuple[float, float]:
    """(a, c) minimising the log-loss of ``sigmoid(a z + c)`` against labels `y` (`logistic_fit` of
    ``[z, 1]``). (1, 0) if it does not converge to finite values."""
    z = z.detach().double().cpu().numpy() if torch.is_tensor(z) else np.asarray(z, np.float64)
    a, c = (float(v) for v in logistic_fit(np.stack([z, np.ones_like(z)], 1), y, iters, ridge))
    return (a, c) if np.isfinite(a) and np.isfinite(c) else (1.0, 0.0)


def pair_keys(users: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """Sorted unique keys ``user * num_items + item`` of (user, item) pairs (the `seen` of the sampler)."""
    return np.unique(np.asarray(users, np.int64) * num_items + np.asarray(items, np.int64))


def sample_unobserved(users: np.ndarray, seen: np.ndarray, num_items: int, rng: np.random.Generator,
                      fallback_after: int = 20, pool: np.ndarray | None = None) -> np.ndarray:
    """One uniform item per entry of `users` that is not among that user's `seen` pairs
    (`pair_keys`), or -1 for a user who has seen every item (nothing left to draw). With `pool`
    (sorted item indices), the items are drawn from it alone (the cold-items protocol: warm items
    for training rows, held-out ones for evaluation); without it the draws are as they always were.

    The caller says what counts as seen: the baselines and the priors pass the training pairs (a
    model may not know later interactions); the preference examples pass every split's pairs, so
    that no future positive is labelled a negative (that shows the model nothing about those items).
    Rejection sampling, vectorised; entries still clashing after `fallback_after` rounds draw
    uniformly from their user's unseen items directly.
    """
    users = np.asarray(users, np.int64)
    if pool is None:
        draw, size, counted = (lambda n: rng.integers(0, num_items, n)), num_items, seen
    else:
        pool = np.asarray(pool, np.int64)
        draw, size = (lambda n: pool[rng.integers(0, len(pool), n)]), len(pool)
        counted = seen[np.isin(seen % num_items, pool)]
    neg = draw(len(users))
    if len(users) == 0 or len(seen) == 0:
        return neg.astype(np.int64)
    counts = np.bincount(counted // num_items, minlength=int(users.max()) + 1)
    full = counts[users] >= size
    neg[full] = -1
    for _ in range(fallback_after):
        keys = users * num_items + neg
        pos = np.searchsorted(seen, keys).clip(max=len(seen) - 1)
        clash = np.flatnonzero((seen[pos] == keys) & ~full)
        if len(clash) == 0:
            return neg.astype(np.int64)
        neg[clash] = draw(len(clash))
    keys = users * num_items + neg
    pos = np.searchsorted(seen, keys).clip(max=len(seen) - 1)
    for j in np.flatnonzero((seen[pos] == keys) & ~full):
        u = users[j]
        mine = seen[np.searchsorted(seen, u * num_items) : np.searchsorted(seen, (u + 1) * num_items)] % num_items
        neg[j] = rng.choice(np.setdiff1d(np.arange(num_items) if pool is None else pool, mine))
    return neg.astype(np.int64)


def _trainer(make_params, loss_fn, n_train: int, batch: int, lr: float, seed: int, sparse: tuple[str, ...] = (),
             desc: str = "fit"):
    """The parameters (from `make_params(gen)`) and a function running one mini-batch Adam epoch of
    `loss_fn(params, rows)` over them; the tables named in `sparse` (read by `rows(..., sparse=True)`)
    move by `SparseAdam`, the rest by Adam. An epoch of more than `PROGRESS_STEPS` steps shows a
    progress bar (`desc`, epoch number)."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    params = make_params(gen)
    dense = [v for k, v in params.items() if k not in sparse]
    opts = [torch.optim.Adam(dense, lr=lr)] if dense else []
    if sparse:
        opts.append(torch.optim.SparseAdam([params[k] for k in sparse], lr=lr))

    epoch = [0]

    def run_epoch() -> None:
        epoch[0] += 1
        steps = batches(n_train, batch, gen, MIN_STEPS_PER_EPOCH)
        for batch_rows in tqdm(steps, desc=f"{desc}, epoch {epoch[0]}", leave=False, disable=len(steps) < PROGRESS_STEPS):
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            loss_fn(params, batch_rows).backward()
            for opt in opts:
                opt.step()

    return params, run_epoch


def _fit(make_params, loss_fn, holdout_fn, n_train: int, epochs: int, patience: int, batch: int, lr: float,
         seed: int, on_best=None, sparse: tuple[str, ...] = (), desc: str = "fit") -> tuple[int, float]:
    """Train up to `epochs` epochs, scoring the starting values and each epoch by `holdout_fn(params)`
    (lower is better), until `patience` epochs without improvement; `on_best(params)` sees each new
    best. Returns (best epoch, 0 = the starting values; its score)."""
    params, run_epoch = _trainer(make_params, loss_fn, n_train, batch, lr, seed, sparse, desc)
    info = early_stopping(list(params.values()), run_epoch, lambda: holdout_fn(params), max_epochs=epochs,
                          patience=patience, min_delta=1e-6, score_start=True, restore_best=False,
                          on_best=None if on_best is None else (lambda: on_best(params)))
    return info["best_epoch"], info["best_valid"]


def _refit(make_params, loss_fn, n_train: int, epochs: int, batch: int, lr: float, seed: int,
           sparse: tuple[str, ...] = (), desc: str = "refit") -> dict:
    """The parameters after exactly `epochs` epochs (0: the starting values)."""
    params, run_epoch = _trainer(make_params, loss_fn, n_train, batch, lr, seed, sparse, f"{desc} of {epochs}")
    for _ in range(epochs):
        run_epoch()
    return {k: v.detach().clone() for k, v in params.items()}


def _logit(p: float) -> float:
    p = min(max(p, 1e-3), 1 - 1e-3)
    return float(np.log(p / (1 - p)))


def fit_rating(split: Split, train_idx: np.ndarray, holdout: np.ndarray, dim: int, like_threshold: float,
               reg: float = 0.05, epochs: int = 60, patience: int = 4, batch: int = 1024, lr: float = 0.01,
               seed: int = 0) -> dict:
    """Rating and like parameters in the heads' parametrisation, fitted on training ratings
    (squared error on the rating scale + binary cross-entropy on like), L2 `reg` on the touched
    rows. Early stopping on hold-out rating RMSE."""
    ds = split.dataset
    lo, hi = ds.rating_scale
    u_all = torch.as_tensor(ds.user_idx[train_idx], dtype=torch.long)
    i_all = torch.as_tensor(ds.item_idx[train_idx], dtype=torch.long)
    r_all = torch.as_tensor(ds.values[train_idx], dtype=torch.float32)
    like_all = (r_all >= like_threshold).float()
    mean = float(r_all.mean())
    b0, lb0 = _logit((mean - lo) / (hi - lo)), _logit(float(like_all.mean()))
    sp = ds.num_items > FULL_SOFTMAX_ITEMS  # large catalogs: row-sparse lookups and lazy Adam
    flat1 = ("io", "uo", "lio", "luo") if sp else ()

    def make_params(gen):
        p = {"b": torch.tensor(b0), "lb": torch.tensor(lb0), "io": torch.zeros(ds.num_items),
             "uo": torch.zeros(ds.num_users), "lio": torch.zeros(ds.num_items), "luo": torch.zeros(ds.num_users),
             "P": 0.1 * torch.randn(ds.num_users, dim, generator=gen),
             "Q": 0.1 * torch.randn(ds.num_items, dim, generator=gen), "a": torch.tensor(1.0)}
        return {k: v.requires_grad_() for k, v in as_rows(p, flat1).items()}

    def predict(p, u, i, sparse=sp):
        take = (lambda name, idx: rows(p[name], idx, sparse, flat=name in flat1)) if sparse else (
            lambda name, idx: (p[name][:, 0] if name in flat1 else p[name]).index_select(0, idx))
        dot = (take("P", u) * take("Q", i)).sum(-1)
        z = p["b"] + take("io", i) + take("uo", u) + dot
        like = p["lb"] + take("lio", i) + take("luo", u) + p["a"] * dot
        return lo + (hi - lo) * torch.sigmoid(z), like, take

    def loss_on(sel):
        def loss_fn(p, batch_rows):
            picked = sel[batch_rows]
            u, i = u_all[picked], i_all[picked]
            rating, like_z, take = predict(p, u, i)
            penalty = (take("P", u).square().sum(-1) + take("Q", i).square().sum(-1)
                       + take("uo", u).square() + take("io", i).square()).mean()
            return (F.mse_loss(rating, r_all[picked]) + F.binary_cross_entropy_with_logits(like_z, like_all[picked])
                    + reg * penalty)
        return loss_fn

    fit_rows = torch.as_tensor(np.flatnonzero(~holdout))
    hold_rows = torch.as_tensor(np.flatnonzero(holdout))

    def holdout_rmse(p):
        with torch.no_grad():
            rating, _, _ = predict(p, u_all[hold_rows], i_all[hold_rows], sparse=False)
            return float((rating - r_all[hold_rows]).square().mean().sqrt())

    sparse = ("io", "uo", "lio", "luo", "P", "Q") if sp else ()
    best_epoch, best = _fit(make_params, loss_on(fit_rows), holdout_rmse, len(fit_rows), epochs, patience, batch,
                            lr, seed, sparse=sparse, desc="rating prior fit")
    all_rows = torch.arange(len(train_idx))
    p = as_flat(_refit(make_params, loss_on(all_rows), len(all_rows), best_epoch, batch, lr, seed, sparse,
                       "rating prior refit"), flat1)
    p["report"] = {"epochs": best_epoch, "holdout_rmse": round(best, 4), "holdout_rows": len(hold_rows)}
    return p


def fit_ranking(split: Split, train_idx: np.ndarray, holdout: np.ndarray, dim: int, item_bias0: torch.Tensor,
                reg: float = 1e-4, epochs: int = 40, patience: int = 3, batch: int = 512, lr: float = 0.005,
                negatives: int = SAMPLED_NEGATIVES, seed: int = 0, like_negatives: int = 0) -> dict:
    """Recommendation parameters: per-item bias and user/item factors, fitted by softmax
    cross-entropy of each training interaction's item over the catalog (`fit_softmax`). Early
    stopping on hold-out cross-entropy.

    With `like_negatives` k > 0 (implicit data) it also returns ``like_calibration`` = (scale,
    offset): the logistic fit of "held-out item against k uniformly drawn unobserved ones" on the
    softmax log-odds ``log p(i | u) + log(N / k)`` of the early-stopped fit, which never saw the
    hold-out (the refit on every row would look surer of it than it will be of validation items). The
    raw log-odds are over-confident (Last.fm-2k: scale 0.61)."""
    ds = split.dataset
    u_all = torch.as_tensor(ds.user_idx[train_idx], dtype=torch.long)
    i_all = torch.as_tensor(ds.item_idx[train_idx], dtype=torch.long)
    kept: dict = {}
    keep = (lambda p: kept.update({k: v.detach().clone() for k, v in p.items()})) if like_negatives else None
    p = fit_softmax(u_all, i_all, ds.num_users, ds.num_items, holdout, dim, item_bias0, reg, epochs, patience,
                    batch, lr, negatives, seed, on_best=keep)
    hold_rows = torch.as_tensor(np.flatnonzero(holdout))
    if like_negatives and len(hold_rows):
        u, i = u_all[hold_rows], i_all[hold_rows]
        seen = pair_keys(u_all.numpy(), i_all.numpy(), ds.num_items)
        neg = sample_unobserved(np.repeat(u.numpy().astype(np.int64), like_negatives), seen, ds.num_items,
                                np.random.default_rng(seed))
        neg = torch.as_tensor(neg, dtype=torch.long).view(len(u), like_negatives)
        z = softmax_log_odds(kept, u, torch.cat([i[:, None], neg], 1), like_negatives)
        y = torch.zeros_like(z)
        y[:, 0] = 1.0
        scale, offset = platt(z.flatten(), y.flatten())
        p["like_calibration"] = (scale, offset)
        p["report"]["like_calibration"] = {
            "scale": round(scale, 4), "offset": round(offset, 4),
            "holdout_log_loss": [round(float(F.binary_cross_entropy_with_logits(zz, y)), 4)
                                 for zz in (z, scale * z + offset)]}
    return p


def fit_softmax(u_all: torch.Tensor, i_all: torch.Tensor, num_users: int, num_items: int, holdout: np.ndarray,
                dim: int, bias0: torch.Tensor, reg: float = 1e-4, epochs: int = 40, patience: int = 3,
                batch: int = 512, lr: float = 0.005, negatives: int = SAMPLED_NEGATIVES, seed: int = 0, on_best=None,
                desc: str = "ranking prior") -> dict:
    """``score(u, i) = bias_i + <R_u, T_i>`` fitted by softmax cross-entropy of each (u, i) pair's i
    over all `num_items` columns (sampled columns above `FULL_SOFTMAX_ITEMS`), early stopping on the
    pairs flagged in `holdout`, then refitted on every pair for the best number of epochs. The one
    fit of the recommendation prior (users x items) and of the friend prior (users x users)."""
    sampled = num_items > FULL_SOFTMAX_ITEMS
    sp = sampled  # large catalogs: row-sparse lookups and lazy Adam (module docstring)
    flat1 = ("bias",) if sp else ()

    def make_params(gen):
        p = {"bias": bias0.clone().float(), "R": 0.01 * torch.randn(num_users, dim, generator=gen),
             "T": 0.01 * torch.randn(num_items, dim, generator=gen)}
        return {k: v.requires_grad_() for k, v in as_rows(p, flat1).items()}

    def ce(p, u, i, gen=None):
        if sampled and gen is not None:
            cols = torch.unique(torch.cat([i, torch.randint(0, num_items, (negatives,), generator=gen)]))
            cols_t, cols_b = rows(p["T"], cols, sp), rows(p["bias"], cols, sp, flat=sp)
            logits = rows(p["R"], u, sp) @ cols_t.T + cols_b
            return F.cross_entropy(logits, torch.searchsorted(cols, i))
        bias = p["bias"][:, 0] if sp else p["bias"]
        return F.cross_entropy(p["R"].index_select(0, u) @ p["T"].T + bias, i)

    def loss_on(sel, seed_):
        gen = torch.Generator().manual_seed(seed_ + 1)
        def loss_fn(p, batch_rows):
            picked = sel[batch_rows]
            u, i = u_all[picked], i_all[picked]
            penalty = rows(p["R"], u, sp).square().sum(-1).mean() + rows(p["T"], i, sp).square().sum(-1).mean()
            return ce(p, u, i, gen) + reg * penalty
        return loss_fn

    fit_rows = torch.as_tensor(np.flatnonzero(~holdout))
    hold_rows = torch.as_tensor(np.flatnonzero(holdout))
    def holdout_ce(p):
        """Full-catalog cross-entropy of the held-out pairs; on a sampled catalog, against the same
        seeded sample of columns at every epoch (scoring 22k users x 296k items each epoch took
        longer than the epoch)."""
        gen = torch.Generator().manual_seed(seed + 2) if sampled else None
        with torch.no_grad():
            total = 0.0
            for start in range(0, len(hold_rows), 1024):
                part = hold_rows[start : start + 1024]
                total += float(ce(p, u_all[part], i_all[part], gen)) * len(part)
            return total / max(len(hold_rows), 1)

    sparse = ("bias", "R", "T") if sp else ()
    seen_best = None if on_best is None else (lambda q: on_best(as_flat(q, flat1)))
    best_epoch, best = _fit(make_params, loss_on(fit_rows, seed), holdout_ce, len(fit_rows), epochs, patience,
                            batch, lr, seed, on_best=seen_best, sparse=sparse, desc=f"{desc} fit")
    all_rows = torch.arange(len(u_all))
    p = as_flat(_refit(make_params, loss_on(all_rows, seed), len(all_rows), best_epoch, batch, lr, seed, sparse,
                       f"{desc} refit"), flat1)
    p["report"] = {"epochs": best_epoch, "holdout_ce": round(best, 4), "holdout_rows": len(hold_rows),
                   "sampled_softmax": sampled}
    return p


def fit_friends(src: np.ndarray, dst: np.ndarray, num_users: int, dim: int, seed: int = 0, **kw) -> dict:
    """The friend prior (and the bench's user-embedding factor model): ``score(u, v) = bias_v +
    <R_u, T_v>`` over every user v, by `fit_softmax` on the graph's directed edges u -> v (the
    friend hold-out already removed). The bias starts at centred log(1 + in-degree). Early stopping
    holds out one seeded edge per user with at least 3. Returns ``bias``, ``R``, ``T``, ``report``."""
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    bias0 = torch.from_numpy(np.log1p(np.bincount(dst, minlength=num_users))).float()
    bias0 = bias0 - bias0.mean()
    rng = np.random.default_rng([seed, 17])
    holdout = np.zeros(len(src), bool)
    order = np.lexsort((rng.random(len(src)), src))
    first = np.ones(len(order), bool)
    first[1:] = src[order][1:] != src[order][:-1]
    degree = np.bincount(src, minlength=num_users)
    holdout[order[first]] = degree[src[order[first]]] >= 3
    kw.setdefault("desc", "friend prior")
    return fit_softmax(torch.as_tensor(src), torch.as_tensor(dst), num_users, num_users, holdout, dim, bias0,
                       seed=seed, **kw)


def softmax_log_odds(p: dict, users: torch.Tensor, items: torch.Tensor, k: int) -> torch.Tensor:
    """``log softmax(bias + <r_u, t>)_i + log(N / k)`` at [B, m] `items` (the catalog's softmax per row)."""
    n = p["T"].shape[0]
    out = []
    with torch.no_grad():
        for a in range(0, len(users), 256):
            logits = p["R"].index_select(0, users[a : a + 256]) @ p["T"].T + p["bias"]
            out.append(logits.gather(1, items[a : a + 256]) - torch.logsumexp(logits, 1, keepdim=True))
    return torch.cat(out) + float(np.log(n / max(k, 1)))


