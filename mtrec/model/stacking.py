"""Stacked priors (`model.stack_tail: k`): train the backbone and heads where the priors are out-of-sample.

The heads start from priors fitted on the training split (`mtrec.model.collaborative`, the sequential
prior). Trained on that same split, they see the priors *in-sample*: on MovieLens-100K the like prior
with factors scores AUC 0.945 on its training rows against 0.757 on validation (`bench prior`), so
every gradient says "trust the prior" and none says "read the prompt". Stacking (Wolpert 1992), with
each user's newest interactions as the second level's data:

1. the priors are fitted without each user's newest `k` training interactions (the *tail*; users
   keep at least `MIN_LEFT` others, else they have no tail);
2. the model trains on rows of tail interactions only, where the priors are out-of-sample as they
   will be on validation and test (and, like validation, the tail is what came next);
3. the priors are also fitted on all of the training split (the fits a run without stacking uses,
   same cache), and the model is *served* with those: each prior parameter reads
   ``trained + (full - stacked)``. Training moves the additive priors (biases, offsets, the factor
   scale) by what the tail rows teach (a recency correction that carries over); the factor tables are
   frozen while stacking (two fits' factors are not in the same coordinates, so a change learnt on one
   would mean nothing on the other) and so are served as the full fit's; the sequential prior's
   network is frozen anyway.

The recommendation head's priors (popularity bias, its factors, the sequential prior) are stacked only
with `model.stack_ranking`: without it they hold the fits on all of the training split in training as
in serving, as in a run without stacking, so the ranking head trains against the very prior it is
served with. On MovieLens-100K the two differ by no measurable amount (README, "Stacked priors":
NDCG@10 +0.0025 [−0.0035, +0.0086] unstacked minus stacked).

The model at rest (built, evaluated, checkpointed, saved) holds the served values; the training loop
shifts to the stacked values for its steps only (`StackedPriors.training`). Adding and removing the
shift is exact up to float rounding (one ulp of the prior, well below any effect on a score).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import numpy as np
import torch

from mtrec.data.splits import TRAIN, VALID, Split

MIN_LEFT = 5  # training interactions a user keeps for the priors' fits when their newest k are the tail
# head parameters that hold priors (fitted on the training data); `mtrec.update` refits the same ones
PRIORS = ("item_bias", "item_rating_offset", "item_like_offset", "user_rating_offset", "user_like_offset",
          "user_factors", "item_factors", "rec_user_factors", "rec_item_factors", "like_factor_scale",
          "rating.bias", "like.bias")
# the sequential prior's network (model.ranking_prior) and a seed ensemble's others (model.sequence_seeds)
PRIOR_MODULES = ("sequence.", "sequence_members.")
FACTOR_TABLES = ("user_factors", "item_factors", "rec_user_factors", "rec_item_factors")  # frozen while stacking
# the recommendation head's priors (with the sequential prior's network): stacked only with model.stack_ranking
RANKING_PRIORS = ("item_bias", "rec_user_factors", "rec_item_factors")


def tail_mask(split: Split, k: int) -> np.ndarray:
    """[interactions] bool: each user's newest `k` training interactions (users keeping at least
    `MIN_LEFT` others; the rest have no tail)."""
    from mtrec.model.collaborative import newest_per_user

    train = split.train
    mask = np.zeros(len(split.role), bool)
    mask[train[newest_per_user(split, train, min_left=MIN_LEFT, k=k)]] = True
    return mask


def prior_split(split: Split, tail: np.ndarray) -> Split:
    """`split` with the `tail` interactions out of TRAIN (marked VALID): what the stacked priors are
    fitted on. Order and positions unchanged, so the fits' own hold-out is each user's newest
    interaction before the tail."""
    role = split.role.copy()
    role[tail & (role == TRAIN)] = VALID
    return dataclasses.replace(split, role=role)


def is_prior(name: str) -> bool:
    """Does the heads parameter `name` hold a prior (`PRIORS`, or the sequential prior's network)?"""
    return name in PRIORS or name.startswith(PRIOR_MODULES)


def is_ranking_prior(name: str) -> bool:
    """Is `name` one of the recommendation head's priors (`RANKING_PRIORS`, the sequential prior)?"""
    return name in RANKING_PRIORS or name.startswith(PRIOR_MODULES)


class StackedPriors:
    """Both values of every prior parameter of a heads module, and the switch between them.

    Args:
        heads: the trained heads module (in the wrapped model), holding the *stacked* priors.
        full: a heads module of the same shapes holding the priors fitted on all of the training split.
        ranking: stack the recommendation head's priors too (`model.stack_ranking`); without, they
            hold the full fits in training as in serving (and train from there, unshifted).

    The factor tables are frozen here; frozen priors (those and the sequential prior's network) keep
    both values and are copied, the trained ones are moved by the shift ``full - stacked``. Built,
    `heads` serves: it holds the full fits exactly (the model at rest serves; the training loop
    switches for its steps).
    """

    def __init__(self, heads: torch.nn.Module, full: torch.nn.Module, ranking: bool = True) -> None:
        mine, theirs = dict(heads.named_parameters()), dict(full.named_parameters())
        self.params = {n: p for n, p in mine.items() if is_prior(n) and (ranking or not is_ranking_prior(n))}
        with torch.no_grad():
            for n, p in mine.items():
                if is_prior(n) and n not in self.params:  # not stacked: the full fit, always
                    p.copy_(theirs[n])
        self.shift, self.both = {}, {}
        for n, p in self.params.items():
            if n in FACTOR_TABLES:
                p.requires_grad_(False)
            other = theirs[n].detach().to(p.dtype)
            if p.requires_grad:
                self.shift[n] = other - p.detach()
            else:
                self.both[n] = (p.detach().clone(), other.clone())
            with torch.no_grad():
                p.copy_(other)

    @torch.no_grad()
    def _set(self, served: bool) -> None:
        for n, p in self.params.items():
            if n in self.both:
                p.copy_(self.both[n][served])
            else:
                p.add_(self.shift[n].to(p.device), alpha=1 if served else -1)

    @contextmanager
    def _switched(self, inside: bool):
        self._set(inside)
        try:
            yield
        finally:
            self._set(not inside)

    def training(self):
        """The stacked values for the body (the training steps), the served ones again after."""
        return self._switched(False)

    def serving(self):
        """Inside `training`: the served values for the body (an evaluation, a checkpoint)."""
        return self._switched(True)
