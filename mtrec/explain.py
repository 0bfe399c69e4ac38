"""Faithful explanations of a recommendation score, by occlusion of what the prompt showed.

An item's recommendation score for a user is ``item_logits[item]`` of the user's recommendation
prompt (`mtrec.model.multitask.TaskHeads`):

    score = scale * cos(W h, table[item])       the language model's part: read from the prompt
          + item_bias[item] + <r_u, t_item>     the priors' part: collaborative bias and factors

The priors' part does not depend on the prompt, so no edit of the prompt can move it; it is
reported as it is. The language model's part is attributed by **occlusion**: the prompt is
re-rendered with each entry it *shows* (own history entries, and friends' items where the prompt
has them; what the token budget cut is not shown and gets no credit) left out, every variant is
scored in the same batches (chunked by `batch_size`), and each entry's change is

    change = score(full prompt) - score(prompt without that entry)

positive when the entry raised the score. Each positive change's share is its part of the sum of
the positive changes. The changes are measured, not approximated: leaving that entry out of the
prompt by hand and scoring it gives the same number. They need not add up to the language model's
part (the backbone is not additive).

The occluded prompts do not depend on the item explained, so explaining several items of one user
costs what one explanation costs: ``1 + shown entries`` prompts (the items are extra columns of the
same passes). On MovieLens-100K (14 history entries shown at the median) that is 15 prompts per user.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

HISTORY, FRIEND = "history", "friend"


@dataclasses.dataclass(frozen=True)
class Contribution:
    """One shown entry's part in a score: the score with it minus the score without it."""

    item: str  # the entry's item id
    title: str
    source: str  # "history" (the user's own) or "friend" (a friend's item)
    change: float  # score(full prompt) - score(prompt without this entry)
    share: float  # change / the sum of positive changes; 0 when the change is not positive
    friend: str | None = None  # the friend's user id (source "friend")
    position: int = 0  # the entry's place in its list in the prompt, 0 = newest

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Why `item` scores `score` for `user` (None: a new user)."""

    user: str | None
    item: str
    title: str
    score: float  # the recommendation score, as `Recommender.recommend` gives it
    prior_part: float  # collaborative bias and factors: untouched by the prompt
    lm_part: float  # score - prior_part: what the backbone read from the prompt
    contributions: tuple[Contribution, ...]  # the top k by change, largest first
    shown: int  # entries the prompt shows (history + friends' items), each occluded once
    history_shown: int
    social_shown: int
    positive_total: float  # the sum of the positive changes (shares are of this)
    sentence: str  # one readable sentence (prompts/explanation.yaml: sentence)
    because: str  # a short "because ..." line (prompts/explanation.yaml: because)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["contributions"] = [c.to_dict() for c in self.contributions]
        return out


@dataclasses.dataclass(frozen=True)
class ShownPrompt:
    """A user's recommendation prompt and the entries it shows after the token budget cut.

    `example` is the original example (as `Recommender.recommend` renders it); `shown` holds only
    the shown entries, so any of its variants renders without a further cut.
    """

    example: object
    shown: object
    history_items: tuple[int, ...]  # item index per shown history entry, newest first
    social_items: tuple[int, ...]  # item index per shown friend's item
    social_friends: tuple[str, ...]  # the friend's user id per shown friend's item

    @property
    def entries(self) -> list[tuple[str, int, int, str | None]]:
        """(source, position, item index, friend id) of every shown entry: history, then friends."""
        return ([(HISTORY, n, j, None) for n, j in enumerate(self.history_items)]
                + [(FRIEND, n, j, f) for n, (j, f) in enumerate(zip(self.social_items, self.social_friends))])

    def without(self, history: Sequence[int] = (), social: Sequence[int] = ()):
        """The shown prompt's example with the history (and friends') entries at these positions left out
        (from the sequential prior's input too: both list the history newest first)."""
        h, s = set(history), set(social)
        return dataclasses.replace(
            self.shown,
            history=tuple(e for n, e in enumerate(self.shown.history) if n not in h),
            social=tuple(e for n, e in enumerate(self.shown.social) if n not in s),
            history_items=tuple(j for n, j in enumerate(self.shown.history_items) if n not in h),
        )

    def variants(self) -> list:
        """One example per entry of `entries`, with that entry left out."""
        return ([self.without(history=[n]) for n in range(len(self.history_items))]
                + [self.without(social=[n]) for n in range(len(self.social_items))])


def shown_prompt(rec, who) -> ShownPrompt:
    """`who`'s recommendation prompt (a known user id or a `NewUser`) and what it shows."""
    from mtrec.inference import NewUser

    ds = rec.dataset
    if isinstance(who, NewUser):
        entries, named = rec.cold_history(who.history)
        example = rec._cold_example("recommendation", entries, named)
        history, social, friends = list(named[: len(entries)]), [], []
    else:
        u = rec.user_index(who)
        example = rec.factory.make_now("recommendation", u)
        seq, soc = rec.factory.now_interactions(u)
        history = ds.item_idx[seq].tolist()
        social = ds.item_idx[soc].tolist()
        friends = [ds.users[int(f)].id for f in ds.user_idx[soc]]
    rendered = rec.renderer.render(example, rec._template(example))
    h, s = rendered.history_shown, rendered.social_shown
    shown = dataclasses.replace(example, history=example.history[:h], social=example.social[:s])
    return ShownPrompt(example, shown, tuple(history[:h]), tuple(social[:s]), tuple(friends[:s]))


def score_columns(rec, examples: list, columns: Sequence[int], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """([len(examples), len(columns)] scores of the item `columns`, the same shape of their priors'
    part), float64, one forward pass per `batch_size` prompts."""
    subset = torch.as_tensor(list(columns), dtype=torch.long, device=rec.device)
    scores, priors = [np.zeros((0, len(columns)))], [np.zeros((0, len(columns)))]
    for _, out in rec._batches(examples, batch_size, subset=subset, with_prior=True):
        scores.append(out["item_logits"].double().cpu().numpy())
        priors.append(out["item_prior"].double().cpu().numpy())
    return np.concatenate(scores), np.concatenate(priors)


def explain_pairs(rec, users, items, k: int | Sequence[int] = 3, batch_size: int = 32) -> list[Explanation]:
    """One `Explanation` per (user, item) pair (see the module docstring); `Recommender.explain_pairs`.

    Raises:
        ValueError: k < 1, or unequal numbers of users and items.
        UnknownIdError: an unknown user or item id.
    """
    from mtrec.inference import _pairs

    us, its = _pairs(users, items)
    ks = [k] * len(us) if isinstance(k, (int, np.integer)) else [int(x) for x in k]
    if len(ks) != len(us):
        raise ValueError(f"{len(ks)} values of k for {len(us)} pairs")
    for x in ks:
        if x < 1:
            raise ValueError(f"k must be at least 1, got {x}")
    targets = [rec.item_index(i) for i in its]
    groups: dict = {}  # who -> index into prompts (a NewUser with unhashable history is its own group)
    prompts, rows, offsets, of_pair = [], [], [], []
    for who in us:
        try:
            key = ("user", who) if isinstance(who, str) else ("new", hash(who), who)
        except TypeError:
            key = ("one", len(prompts))
        if key not in groups:
            groups[key] = len(prompts)
            p = shown_prompt(rec, who)
            prompts.append(p)
            offsets.append(len(rows))
            rows += [p.example, *p.variants()]
        of_pair.append(groups[key])
    columns = sorted(set(targets))
    col = {j: c for c, j in enumerate(columns)}
    scores, priors = score_columns(rec, rows, columns, batch_size)
    templates = rec.explanation_templates
    ds = rec.dataset
    out = []
    for who, target, kk, g in zip(us, targets, ks, of_pair):
        p, row, c = prompts[g], offsets[g], col[target]
        entries = p.entries
        full, prior = float(scores[row, c]), float(priors[row, c])
        changes = full - scores[row + 1 : row + 1 + len(entries), c]
        positive = float(changes[changes > 0].sum())
        order = sorted(range(len(entries)), key=lambda n: (-changes[n], n))[:kk]
        contributions = tuple(
            Contribution(ds.items[entries[n][2]].id, ds.items[entries[n][2]].title, entries[n][0], float(changes[n]),
                         float(changes[n]) / positive if changes[n] > 0 and positive > 0 else 0.0, entries[n][3],
                         entries[n][1])
            for n in order
        )
        user = None if not isinstance(who, str) else who
        fields = {"user": user, "item": ds.items[target].id, "title": ds.items[target].title, "score": full,
                  "prior_part": prior, "lm_part": full - prior, "contributions": contributions, "shown": len(entries),
                  "history_shown": len(p.history_items), "social_shown": len(p.social_items),
                  "positive_total": positive}
        words = {**fields, "who": f"user {user}" if user is not None else "the new user", "explicit": ds.explicit,
                 "contributions": [x.to_dict() for x in contributions]}
        out.append(Explanation(**fields, sentence=templates.render("sentence", **words),
                               because=templates.render("because", **words)))
    return out
