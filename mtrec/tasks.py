"""Task examples: one dataclass per prompt kind, holding exactly the fields its templates may use.

Tasks and their prompt kinds:
- ``rating``: RatingExample (explicit data only) -> the user's rating of the named item.
- ``preference``: two kinds, both read by the preference head:
  ``like`` (PreferenceExample): does the user like the named item? Explicit data: rating >=
  ``like_threshold``; implicit data: an observed item (1) against a sampled unobserved item (0).
  ``categories`` (CategoryExample): which categories does the user prefer? No item is named (so the
  head cannot just read the item's categories); the label is the categories of the user's next liked item.
- ``recommendation``: RecommendationExample -> the next item, scored against the whole catalog.
- ``friends``: FriendsExample -> a user to befriend, scored against every user (the protocol:
  `mtrec.data.friends`). Training rows are the remaining graph's edges (u -> v: the prompt lists u's
  other friends, never v, and none of v's items); validation/test rows are the held-out pairs. A
  friends row's ``interaction`` is an anchor, the user's newest training interaction (it names the
  user; the history shown is the user's training interactions), and its ``item`` is the target user.

Examples are built lazily: `build_specs` returns compact numpy arrays (one row per example) and
`ExampleFactory.make` materialises a dataclass for one row, applying the context rules of
`mtrec.data.context`. Fields whose metadata says ``hidden`` (labels, indices) are never visible to
templates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from mtrec.data.context import ContextIndex
from mtrec.data.splits import ROLE_NAMES, TRAIN, Split
from mtrec.kinds import KIND_IDS, KIND_NAMES
from mtrec.model.collaborative import pair_keys, sample_unobserved


def hidden(**kw: Any):
    """A dataclass field that templates may not read (labels and bookkeeping)."""
    return field(metadata={"hidden": True}, **kw)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One item of a user's own history (or a friend's), as shown in prompts."""

    title: str
    rating: float | None = None
    weight: float | None = None
    categories: tuple[str, ...] = ()
    item: int = -1  # the item's index in the catalog (hybrid item tokens); -1: unknown


@dataclass(frozen=True, slots=True)
class SocialEntry:
    """An item a friend / trusted user interacted with (training split, earlier in time)."""

    friend: str
    title: str
    rating: float | None = None
    weight: float | None = None
    item: int = -1  # the item's index in the catalog (hybrid item tokens); -1: unknown


@dataclass(frozen=True)
class _UserContext:
    user_id: str
    user: Mapping[str, str]
    history: tuple[HistoryEntry, ...]
    social: tuple[SocialEntry, ...]
    explicit: bool
    rating_scale: tuple[float, float] | None
    interaction: int = hidden()
    user_index: int = hidden()
    role: str = hidden()
    # the history's item indices, newest first, at most `ExampleOptions.sequence_len` (what the heads read)
    history_items: tuple[int, ...] = hidden(default=(), kw_only=True)


@dataclass(frozen=True)
class _NamedItemExample(_UserContext):
    """A prompt about one named item (the target, or a sampled negative)."""

    item_title: str = ""
    item_text: str = ""
    item_categories: tuple[str, ...] = ()
    label: float = hidden(default=0.0)
    item_index: int = hidden(default=-1)


@dataclass(frozen=True)
class RatingExample(_NamedItemExample):
    """How would this user rate the named item? label = the rating."""


@dataclass(frozen=True)
class PreferenceExample(_NamedItemExample):
    """Does this user like the named item? label = 1 or 0."""


@dataclass(frozen=True)
class CategoryExample(_UserContext):
    label: tuple[int, ...] = hidden(default=())


@dataclass(frozen=True)
class RecommendationExample(_UserContext):
    candidates: tuple[str, ...] = ()
    label: int = hidden(default=-1)


@dataclass(frozen=True)
class FriendsExample(_UserContext):
    """Whom should this user befriend? `friend_ids`: the user's current friends shown (the target
    never among them); label = the target user's index."""

    friend_ids: tuple[str, ...] = ()
    label: int = hidden(default=-1)


EXAMPLE_TYPES = {
    "rating": RatingExample,
    "like": PreferenceExample,
    "categories": CategoryExample,
    "recommendation": RecommendationExample,
    "friends": FriendsExample,
}


def template_fields(kind: str) -> set[str]:
    """The names a template of `kind` may use."""
    return {f.name for f in fields(EXAMPLE_TYPES[kind]) if not f.metadata.get("hidden")}


@dataclass(frozen=True)
class ExampleOptions:
    """How examples are built (see config section ``data``)."""

    like_threshold: float = 4.0
    negatives_per_positive: int = 1
    max_history: int = 50
    max_social: int = 20
    seed: int = 0
    sequence_len: int = 0  # history item ids kept on each example for the heads (`history_width`; 0: none)


@dataclass(frozen=True)
class Specs:
    """Rows of examples: kind id, target interaction, item index (target or sampled negative), label."""

    kind: np.ndarray
    interaction: np.ndarray
    item: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    def take(self, idx: np.ndarray) -> Specs:
        return Specs(self.kind[idx], self.interaction[idx], self.item[idx], self.label[idx])

    @staticmethod
    def concat(parts: list[Specs]) -> Specs:
        return Specs(*(np.concatenate([getattr(p, n) for p in parts]) for n in ("kind", "interaction", "item", "label")))


def task_available(task: str, split: Split) -> bool:
    """Rating needs explicit ratings; friends a social graph."""
    if task == "rating":
        return split.dataset.explicit
    if task == "friends":
        return split.dataset.num_social_edges > 0
    return True


def build_specs(split: Split, role: int, kinds: tuple[str, ...], opts: ExampleOptions) -> Specs:
    """Example rows for every target interaction of `role` (TRAIN/VALID/TEST) and each kind."""
    ds = split.dataset
    targets = np.flatnonzero(split.role == role)
    rng = np.random.default_rng(opts.seed + 7919 * role)
    parts = []
    for kind in kinds:
        k = KIND_IDS[kind]
        if kind == "rating" and not ds.explicit:
            continue
        items = ds.item_idx[targets].astype(np.int64)
        if kind == "rating":
            parts.append(Specs(np.full(len(targets), k), targets, items, ds.values[targets].astype(np.float32)))
        elif kind == "like":
            parts.append(_like_specs(split, targets, opts, rng, negative_pool(split, role)))
        elif kind == "categories":
            liked = _liked(split, targets, opts)
            has_cat = np.array([len(ds.items[i].categories) > 0 for i in ds.item_idx[targets]], bool)
            keep = targets[liked & has_cat]
            parts.append(Specs(np.full(len(keep), k), keep, ds.item_idx[keep].astype(np.int64), np.ones(len(keep), np.float32)))
        elif kind == "recommendation":
            parts.append(Specs(np.full(len(targets), k), targets, items, np.ones(len(targets), np.float32)))
        elif kind == "friends":
            parts.append(friend_specs(split, role))
        else:
            raise ValueError(f"unknown prompt kind {kind!r}; expected one of {sorted(KIND_IDS)}")
    if not parts:
        return Specs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    return Specs.concat(parts)


def friend_anchors(split: Split) -> np.ndarray:
    """Per user, the newest training interaction (-1 for a user without one): a friends row's
    ``interaction`` (see the module docstring)."""
    anchor = np.full(split.dataset.num_users, -1, np.int64)
    seq = split.seq[split.role[split.seq] == TRAIN]  # grouped by user, each user's oldest first
    anchor[split.dataset.user_idx[seq]] = seq  # the last write per user is the newest
    return anchor


def friend_specs(split: Split, role: int) -> Specs:
    """Friends rows of `role`: TRAIN, every edge of the (held-out-free) graph; VALID/TEST, the
    held-out pairs of `split.friends` (none without a hold-out). Users without a training
    interaction have no anchor and no rows."""
    ds = split.dataset
    if role == TRAIN:
        src, dst = ds.social_src.astype(np.int64), ds.social_dst.astype(np.int64)
        keep = src != dst
        src, dst = src[keep], dst[keep]
    elif split.friends is None:
        src = dst = np.zeros(0, np.int64)
    else:
        pairs = split.friends.pairs(ROLE_NAMES[role])
        src, dst = pairs[:, 0], pairs[:, 1]
    anchor = friend_anchors(split)[src]
    ok = anchor >= 0
    n = int(ok.sum())
    return Specs(np.full(n, KIND_IDS["friends"]), anchor[ok], dst[ok], np.ones(n, np.float32))


def _liked(split: Split, targets: np.ndarray, opts: ExampleOptions) -> np.ndarray:
    ds = split.dataset
    if ds.explicit:
        return ds.values[targets] >= opts.like_threshold
    return np.ones(len(targets), bool)


def negative_pool(split: Split, role: int) -> np.ndarray | None:
    """Where sampled negatives come from: anywhere (None), except in the cold-items protocol, where
    training rows draw warm items only (no training prompt names a held-out item) and evaluation
    rows held-out items only (else "never trained on" alone would tell a positive from a negative)."""
    if split.heldout_items is None:
        return None
    return np.flatnonzero(~split.heldout_items if role == TRAIN else split.heldout_items)


def _like_specs(split: Split, targets: np.ndarray, opts: ExampleOptions, rng: np.random.Generator,
                pool: np.ndarray | None = None) -> Specs:
    """Explicit: label = rating >= threshold. Implicit: observed (1) + sampled unobserved items (0),
    drawn from `pool` where given (`negative_pool`)."""
    ds = split.dataset
    k = KIND_IDS["like"]
    items = ds.item_idx[targets].astype(np.int64)
    if ds.explicit:
        return Specs(np.full(len(targets), k), targets, items, _liked(split, targets, opts).astype(np.float32))
    n_neg = opts.negatives_per_positive
    neg_targets = np.repeat(targets, n_neg)
    # every split's pairs count as seen: no future positive is labelled a negative
    seen = pair_keys(ds.user_idx, ds.item_idx, ds.num_items)
    neg_items = sample_unobserved(ds.user_idx[neg_targets], seen, ds.num_items, rng, pool=pool)
    keep = neg_items >= 0  # users who have seen the whole catalog get no negatives
    neg_targets, neg_items = neg_targets[keep], neg_items[keep]
    return Specs(
        np.full(len(targets) + len(neg_targets), k),
        np.concatenate([targets, neg_targets]),
        np.concatenate([items, neg_items]),
        np.concatenate([np.ones(len(targets), np.float32), np.zeros(len(neg_targets), np.float32)]),
    )


def example_options(cfg) -> ExampleOptions:
    """The example options a `mtrec.config.Config` asks for (training and serving alike)."""
    d = cfg.data
    m = cfg.model
    return ExampleOptions(d.like_threshold, d.negatives_per_positive, d.max_history,
                          d.max_social if cfg.prompt.social else 0, cfg.run.seed,
                          history_width(m))


def history_width(model_cfg) -> int:
    """History item ids each batch carries for the heads (`history_ids`): the sequential prior's
    `sequence_len` where it is in use, the like head's text term's `like_text`; 0: none."""
    return max(model_cfg.sequence_len if model_cfg.ranking_prior != "factors" else 0, model_cfg.like_text)


class ExampleFactory:
    """Materialises example dataclasses from spec rows under the context rules."""

    def __init__(self, split: Split, opts: ExampleOptions | None = None) -> None:
        self.split = split
        self.ds = split.dataset
        self.opts = opts or ExampleOptions()
        self.context = ContextIndex(split)

    def history(self, interaction: int) -> tuple[HistoryEntry, ...]:
        """The user's own history before `interaction`, newest first, at most `max_history`."""
        idx = self.context.own_history(interaction)[: self.opts.max_history]
        return tuple(self._entry(int(i)) for i in idx)

    def social(self, interaction: int) -> tuple[SocialEntry, ...]:
        """Friends' items allowed as context for `interaction`, newest first, at most `max_social`."""
        return tuple(self._social_entry(i) for i in self.context.social(interaction, limit=self.opts.max_social).tolist())

    def _entry(self, i: int) -> HistoryEntry:
        ds = self.ds
        item = ds.items[ds.item_idx[i]]
        v = float(ds.values[i])
        return HistoryEntry(item.title, v if ds.explicit else None, None if ds.explicit else v, item.categories,
                            int(ds.item_idx[i]))

    def make(self, kind: int | str, interaction: int, item: int, label: float):
        """One example of `kind` for target `interaction` (and `item`, the target or a negative)."""
        kind = KIND_NAMES[kind] if isinstance(kind, (int, np.integer)) else kind
        ds = self.ds
        u = int(ds.user_idx[interaction])
        if kind == "friends":
            return self.make_friends(u, item)
        context = dict(history=self.history(interaction), social=self.social(interaction), interaction=int(interaction),
                       role=ROLE_NAMES[int(self.split.role[interaction])],
                       history_items=self._items(self.context.own_history(interaction)))
        return self._example(kind, u, item, label, context)

    def make_now(self, kind: str, user: int, item: int = -1):
        """An example for `user` *after* every interaction the split knows (serving time): the whole
        sequence is history and friends' interactions have no time cut. With a split whose roles
        are all TRAIN (see `mtrec.inference.serving_split`), friends' validation/test items count too."""
        if kind == "friends":
            return self.make_friends(int(user))
        seq, social = self.now_interactions(user)
        context = dict(history=tuple(self._entry(int(i)) for i in seq),
                       social=tuple(self._social_entry(int(i)) for i in social), interaction=-1, role="serve",
                       history_items=self._items(self.split.user_sequence(user)[::-1]))
        return self._example(kind, int(user), item, 0.0, context)

    def now_interactions(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """The interactions `make_now` writes into `user`'s prompt, in prompt order (newest first):
        (own history, friends' items). Their items are ``dataset.item_idx`` of these indices."""
        seq = self.split.user_sequence(user)[::-1][: self.opts.max_history]
        return seq, np.asarray(self.context.social_for(user, None, self.opts.max_social))

    def make_friends(self, user: int, target: int = -1):
        """A friends example for `user`: their training interactions as history (newest first), their
        friends other than `target` (at most `max_social`, in index order) and those friends' recent
        training items (no time cut). At serving time (`target` -1) every friend counts."""
        history, friends, social = self.friends_context(user, target)
        context = dict(history=tuple(self._entry(int(i)) for i in history),
                       social=tuple(self._social_entry(int(i)) for i in social), interaction=-1, role="train",
                       history_items=self._items(history))
        base = dict(user_id=self.ds.users[user].id, user=self.ds.users[user].attributes, explicit=self.ds.explicit,
                    rating_scale=self.ds.rating_scale, user_index=user, **context)
        return FriendsExample(**base, friend_ids=tuple(self.ds.users[f].id for f in friends), label=int(target))

    def friends_context(self, user: int, target: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(own training interactions newest first, friends shown, friends' interactions shown) of
        `make_friends`: the target and anything of the target's never appear."""
        c = self.context
        history = c.train_interactions(user)[::-1][: self.opts.max_history]
        friends = c.friends(user)
        friends = friends[friends != target]
        social = c.social_for(user, None, self.opts.max_social, exclude=target)
        return history, friends[: self.opts.max_social], social

    def _example(self, kind: str, user: int, item: int, label: float, context: dict):
        ds = self.ds
        base = dict(user_id=ds.users[user].id, user=ds.users[user].attributes, explicit=ds.explicit,
                    rating_scale=ds.rating_scale, user_index=user, **context)
        if kind in ("rating", "like"):
            it = ds.items[item]
            return EXAMPLE_TYPES[kind](**base, item_title=it.title, item_text=it.text, item_categories=it.categories,
                                       label=float(label), item_index=int(item))
        if kind == "categories":
            cats = () if item < 0 else tuple(ds.category_index[c] for c in ds.items[item].categories
                                             if c in ds.category_index)
            return CategoryExample(**base, label=cats)
        if kind == "recommendation":
            return RecommendationExample(**base, label=int(item))
        raise ValueError(f"unknown prompt kind {kind!r}")

    def _items(self, interactions: np.ndarray) -> tuple[int, ...]:
        """Item indices of `interactions` (newest first), at most `sequence_len` (none when it is 0)."""
        return tuple(int(i) for i in self.ds.item_idx[interactions[: self.opts.sequence_len]])

    def _social_entry(self, i: int) -> SocialEntry:
        e = self._entry(i)
        return SocialEntry(self.ds.users[self.ds.user_idx[i]].id, e.title, e.rating, e.weight, e.item)

    def make_row(self, specs: Specs, row: int):
        return self.make(int(specs.kind[row]), int(specs.interaction[row]), int(specs.item[row]), float(specs.label[row]))


def history_ids(examples: Sequence, length: int) -> torch.Tensor:
    """[B, length] the sequential prior's input: each example's `history_items` + 1, oldest first,
    newest in the last column, left-padded with 0 (`mtrec.model.sequential.SequenceNet`)."""
    out = torch.zeros(len(examples), length, dtype=torch.long)
    for row, ex in enumerate(examples):
        items = ex.history_items[:length][::-1]
        if items:
            out[row, length - len(items):] = torch.as_tensor(items) + 1
    return out
