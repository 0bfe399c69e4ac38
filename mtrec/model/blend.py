"""The blends after training, chosen on validation: the backbone's share of the ranking score
(`train.rank_blend`) and the weights of the like head's text term (`model.like_text`, `fit_like_text`).

The recommendation head's score of an item is the sum of its priors (popularity bias, collaborative
factors, the sequential prior times `sequence_weight`) and the backbone's term
``exp(log_scale) * cos(query, item)``. Training fits both weights by the softmax loss on training
rows; NDCG@10 on held-out users need not follow. On MovieLens-100K with the sequential prior, the
fastest CPU recipe's validation NDCG@10 fell from 0.120 at step 0 to 0.108 after training, while the
loss fell: the backbone's term at its trained scale (and the sequential prior at its trained, lower
weight) pushed the prior's good top ranks down (README, "Ranking blend").

After training (best weights loaded), this scores the validation recommendation rows of at least
`MIN_USERS` seeded users (more where the run validates on more; a choice on the 30 users a quick run
validates on is noise), ranked as its evaluation ranks them (among the held-out items on the
cold-items protocol), with the backbone's term times each multiplier of `TEXT` on top of the trained
priors (the sequential prior's weight at {trained, 1}) and on top of the priors as fitted (their
values before the first step, `fitted`; weight 1). It keeps the best setting only where it beats the
priors as fitted with no backbone term (the bench's "prior alone") by a paired bootstrap interval over
those rows that excludes 0 (`choose`); otherwise those priors. On 200 users the best of eight trained
settings beat ×0 by 0.002 NDCG@10 on both MovieLens-100K and Last.fm-2k: a choice among eight on
noise is itself noise; and training moves the priors themselves, which at ×0 cost the multi-task
model HR@10 against a single-task one on Last.fm (README, "Ranking blend"). The choice is written
into the priors, `log_scale` and `sequence_weight` (a multiplier 0 sets `log_scale` to `OFF`: the term
is below a float's resolution; `mtrec.update` restores the initial scale before training such a run
further). The second level of a stacked model, as the weights of a blend are chosen on held-out data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mtrec import metrics, ranking
from mtrec.kinds import KIND_IDS
from mtrec.model.collaborative import logistic_fit

TEXT = (0.0, 0.25, 0.5, 1.0)  # multipliers of the backbone's ranking term (1: as trained)
OFF = -30.0  # log_scale for "no backbone term": exp(-30) ~ 1e-13 times a cosine
MIN_USERS = 500  # validation users the choice reads at least (train.eval_users if more; 0: all)
MAX_ROWS = 500  # validation rows the choice reads at most (their full-catalog scores are held four times)
LEVEL = 0.95  # a setting other than the priors alone is kept only where its interval at this level excludes 0


@torch.no_grad()
def tune_rank_blend(model, heads, batcher, specs, split, role: int, accelerator=None, batch_size: int = 32,
                    k: int = 10, fitted: dict | None = None) -> dict | None:
    """Choose and set the backbone term's multiplier, the sequential prior's weight and the ranking
    priors, trained or as fitted (see above).

    Args:
        model: the trained model (evaluated as it is: the served priors).
        heads: its `TaskHeads` (the module whose `log_scale` and `sequence_weight` are set).
        specs: validation rows; their recommendation rows (a seeded `MAX_ROWS` of them at most) are read.
        fitted: the ranking priors' parameters as fitted, before training (`Setup.fitted_ranking`):
            the reference is then those with no backbone term and the sequential prior at weight 1,
            exactly the bench's "prior alone", and they are a setting of their own (with each
            multiplier of the backbone's term); without, the trained priors at ×0 and weight 1.

    Returns:
        {"priors": "trained" or "fitted", "text": multiplier, "sequence": weight or None,
        "trained_sequence", "ndcg@10": {setting: mean}, "rows": n, "best": the best setting,
        "against_prior": its interval against the priors alone (None where the priors alone are at
        least as good)}, or None where there is no recommendation row.
    """
    from mtrec.pipeline import evaluate_rows

    rows = np.flatnonzero(specs.kind == KIND_IDS["recommendation"])
    if len(rows) > MAX_ROWS:  # a seeded sample, not the first users by index
        rows = np.sort(np.random.default_rng(0).choice(rows, MAX_ROWS, replace=False))
    if not len(rows):
        return None
    rec = specs.take(rows)
    log_scale = heads.log_scale.detach().clone()
    trained_w = float(heads.sequence_weight) if heads.has_sequence else None

    def scores() -> dict:
        return evaluate_rows(model, batcher, rec, split, role, batch_size, accelerator, item_logits=True)

    params = dict(heads.named_parameters())
    trained = {n: params[n].detach().clone() for n in fitted or {}}
    try:
        full = scores()
        heads.log_scale.fill_(OFF)
        no_text = scores()["item_logits"]
        base, seq, alone = no_text, None, None
        if trained_w is not None and abs(trained_w) > 1e-3:
            heads.sequence_weight.zero_()
            base = scores()["item_logits"]
            seq = (no_text - base) / trained_w  # the sequential prior's scores at weight 1
        if fitted:
            for n, v in fitted.items():
                params[n].copy_(v)
            if trained_w is not None:
                heads.sequence_weight.fill_(1.0)
            alone = scores()["item_logits"]  # the priors as fitted, no backbone term: the bench's "prior alone"
    finally:
        heads.log_scale.copy_(log_scale)
        for n, v in trained.items():
            params[n].copy_(v)
        if trained_w is not None:
            heads.sequence_weight.fill_(trained_w)
    text = full["item_logits"] - no_text
    items, users = full["item"].long(), full["user"].long()
    seen = ranking.Seen.before(split, role, dense=False)
    # cold-items protocol: ranked among the held-out items, as its evaluation ranks them
    cold = None if split.heldout_items is None else torch.as_tensor(np.flatnonzero(split.heldout_items))

    def ndcg_rows(s: torch.Tensor) -> torch.Tensor:
        return metrics.ndcg_rows(ranking.ranks(s, items, users, seen, cold), k)

    # a setting: (priors, multiplier of the backbone's term, the sequential prior's weight)
    rows_ndcg = {}
    for w in [trained_w] if seq is None else [trained_w, 1.0]:
        for m in TEXT:
            rows_ndcg[("trained", m, w)] = ndcg_rows(base + m * text + (0.0 if seq is None else w * seq))
    fitted_w = None if trained_w is None else 1.0
    if alone is not None:
        for m in TEXT:
            rows_ndcg[("fitted", m, fitted_w)] = ndcg_rows(alone + m * text)
        prior = ("fitted", 0.0, fitted_w)
    else:
        prior = ("trained", 0.0, trained_w if seq is None else 1.0)
    (priors, m, w), best, interval = choose(rows_ndcg, prior)
    if priors == "fitted":
        for n, v in fitted.items():
            params[n].copy_(v)
    heads.log_scale.copy_(log_scale + math.log(m) if m > 0 else torch.full_like(log_scale, OFF))
    if w is not None:
        heads.sequence_weight.fill_(w)
    table = {setting_label(s): round(float(v.mean()), 5) for s, v in rows_ndcg.items()}
    return {"priors": priors, "text": m, "sequence": w, "trained_sequence": trained_w, f"ndcg@{k}": table,
            "rows": len(rows), "best": setting_label(best), "against_prior": interval}


def setting_label(setting: tuple) -> str:
    """"text x0.5, sequence 1" (the trained priors), "fitted priors, text x0" (the priors as fitted)."""
    priors, m, w = setting
    if priors == "fitted":
        return f"fitted priors, text x{m:g}"
    return f"text x{m:g}" + ("" if w is None else f", sequence {w:.3g}")


def choose(rows_ndcg: dict, prior: tuple, level: float = LEVEL) -> tuple[tuple, tuple, dict | None]:
    """The setting the blend keeps: the best by mean NDCG over the validation rows, where its paired
    bootstrap interval (`mtrec.metrics.paired_bootstrap`, rows resampled) against the priors alone
    (`prior`) lies above 0; otherwise the priors alone. The first best in order wins a tie.

    Args:
        rows_ndcg: {setting: [rows] NDCG@k of each validation row}; holds `prior`.

    Returns:
        (the setting kept, the best, the best's interval against the prior; None where the prior is
        at least as good).
    """
    best = max(rows_ndcg, key=lambda s: float(rows_ndcg[s].mean()))
    if float(rows_ndcg[best].mean()) <= float(rows_ndcg[prior].mean()):
        return prior, prior, None
    interval = metrics.paired_bootstrap(rows_ndcg[best].numpy(), rows_ndcg[prior].numpy(), level=level)
    return (best if interval["low"] > 0 else prior), best, interval


# nats per unit squared of a weight's distance from (1, 1, 0, 0) in `fit_like_text`: far below the
# curvature of any column that varies (on 400 rows a cosine column's is ~1), far above that of a
# near-constant one
LIKE_PENALTY = 1e-2


@torch.no_grad()
def fit_like_text(model, heads, batcher, specs, split, role: int, accelerator=None, batch_size: int = 32) -> dict | None:
    """Fit the like head's text term (`model.like_text`: ``a * p + c * h + s * t + b``) on the
    validation like rows of `specs` and set it: a logistic regression of the labels on the like prior
    ``p``, the like head's reading of the prompt ``h`` and the text similarity ``t``
    (`mtrec.model.collaborative.logistic_fit`; three forward passes give the three columns). The second
    level of a stacked model, as the rank blend; ``c`` says how much the fine-tuned head is worth.

    Returns:
        {"fitted": {"a", "c", "s", "b"}, "trained": {…}, "rows", "auc": {"no text", "trained", "fitted"},
        "log_loss": {…}}, or None where there is no like row.
    """
    from mtrec.pipeline import evaluate_rows

    rows = np.flatnonzero(specs.kind == KIND_IDS["like"])
    if not len(rows):
        return None
    like = specs.take(rows)
    params = {"a": heads.like_prior_scale, "c": heads.like_head_scale, "s": heads.like_text_scale,
              "b": heads.like_text_bias}
    trained = {k: float(p) for k, p in params.items()}

    def rows_at(*values: float) -> dict:
        for p, v in zip(params.values(), values):
            p.fill_(v)
        return evaluate_rows(model, batcher, like, split, role, batch_size, accelerator)

    try:
        out = rows_at(1.0, 0.0, 0.0, 0.0)
        p_, labels = out["like_logit"], out["like"]
        h = rows_at(0.0, 1.0, 0.0, 0.0)["like_logit"]
        t = rows_at(0.0, 0.0, 1.0, 0.0)["like_logit"]
    finally:
        for k, p in params.items():
            p.fill_(trained[k])
    columns = torch.stack([p_, h, t, torch.ones_like(p_)], 1)
    # the head's reading may be near-constant (little trained): the penalty keeps it and the bias at rest
    w = logistic_fit(columns, labels, penalty=LIKE_PENALTY, center=(1.0, 1.0, 0.0, 0.0))
    # diverged (the validation labels separable): keep the trained values
    fitted = dict(zip(params, (float(v) for v in w))) if np.isfinite(w).all() else dict(trained)
    for k, p in params.items():
        p.fill_(fitted[k])
    settings = {"no text": {**trained, "s": 0.0}, "trained": trained, "fitted": fitted}
    scores = {k: columns @ torch.tensor([v["a"], v["c"], v["s"], v["b"]]) for k, v in settings.items()}
    return {"fitted": {k: round(v, 4) for k, v in fitted.items()}, "trained": {k: round(v, 4) for k, v in trained.items()},
            "rows": len(rows),
            "auc": {k: round(metrics.auc(v.numpy(), labels.numpy()), 5) for k, v in scores.items()},
            "log_loss": {k: round(float(torch.nn.functional.binary_cross_entropy_with_logits(v, labels)), 5)
                         for k, v in scores.items()}}
