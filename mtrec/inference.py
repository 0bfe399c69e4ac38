"""Serving a run folder: `Recommender.from_run(run_dir)` answers every task through the same heads.

Ids are the data set's own ids as strings. At serving time a user's whole known sequence is their
history, and friends' interactions are used without a time cut ("now"). A *new* user (cold start)
is described by the items they name: `recommend_for_history`, `rate_for_history`, ... build the
same prompt with that history and no id, attributes or friends.

The second half of this module is the batch front end used by ``infer.py --task``: reading
requests from the command line or CSV / JSONL / text files (bad lines are reported as
``file:line`` and skipped), scoring them in batches, and writing JSONL or CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from mtrec.batching import item_slots, pad_right
from mtrec.data.splits import TRAIN, Split
from mtrec.kinds import KIND_TASK
from mtrec.prompts import PromptRenderer, render_options
from mtrec.ranking import Seen, top_k
from mtrec.run import load_catalog, load_run
from mtrec.tasks import EXAMPLE_TYPES, ExampleFactory, HistoryEntry, example_options, history_ids

KIND_OF_TYPE = {cls: kind for kind, cls in EXAMPLE_TYPES.items()}
NEW_USER_ID = "new user"  # what the prompt calls a cold-start user (no id is known)


def serving_split(split: Split) -> Split:
    """The same data with every interaction usable as context (serving happens after all of them)."""
    return dataclasses.replace(split, role=np.full_like(split.role, TRAIN))


@dataclasses.dataclass(frozen=True)
class NewUser:
    """A user the run folder does not know (cold start), described by the items they liked:
    item ids newest first, or (item id, rating or weight) pairs (see `Recommender.cold_history`).
    Every task method takes one wherever it takes a user id."""

    history: tuple

    def __post_init__(self) -> None:
        object.__setattr__(self, "history", tuple(self.history))


Who = str | NewUser  # a known user's id, or a new user


class UnknownIdError(KeyError):
    """A user or item id the run folder does not know."""

    def __str__(self) -> str:
        return str(self.args[0])


class Recommender:
    """Rate, prefer, categories and full-catalog top-K for a trained run folder."""

    def __init__(self, run_dir: Path, model, tokenizer, split: Split, prompts, cfg, device: torch.device):
        self.run_dir, self.model, self.tokenizer, self.cfg, self.device = run_dir, model, tokenizer, cfg, device
        self.split = split
        self.dataset = split.dataset
        self.prompts = prompts
        self.factory = ExampleFactory(serving_split(split), example_options(cfg))
        from mtrec.model.build import embedded_items

        known = embedded_items(split) if cfg.prompt.item_tokens != "text" else None  # hybrid item tokens
        self.renderer = PromptRenderer(tokenizer, {t: p.instruction_token for t, p in prompts.items()}, render_options(cfg),
                                       known)
        self.seen = Seen.every(split, device)  # serving comes after every interaction the run knows
        self._friend_seen = None  # built on first use (recommend_friends)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | None = None,
                 precision: str | None = None, merge: bool = True) -> Recommender:
        """Load a run folder (and its base backbone, rebuilt if bundled), or an export folder
        (`python -m mtrec.export`: merged weights, no peft needed).

        Args:
            run_dir: the run or export folder.
            device: "cpu", "cuda", ...; default cuda when available.
            precision: the backbone's "fp32", "bf16", or "int8" (dynamic quantisation of its linear
                layers, CPU only; see `mtrec.run.quantize_int8`); default bf16 on a GPU that has it, else fp32.
                The heads stay fp32.
            merge: fold the adapter into the backbone's weights (default; see `mtrec.run.load_run`).
        """
        r = load_run(run_dir, device, precision, merge)
        return cls(r.run_dir, r.model, r.tokenizer, r.split, r.prompts, r.cfg, r.device)

    # ---- ids --------------------------------------------------------------------------------
    def user_index(self, user: str) -> int:
        try:
            return self.dataset.user_index[str(user)]
        except KeyError:
            raise UnknownIdError(f"unknown user id {user!r} (this run knows {self.dataset.num_users} users)") from None

    def item_index(self, item: str) -> int:
        try:
            return self.dataset.item_index[str(item)]
        except KeyError:
            raise UnknownIdError(f"unknown item id {item!r} (this run knows {self.dataset.num_items} items)") from None

    def history(self, user: str) -> list[tuple[str, float, int | None]]:
        """The user's known interactions, newest first: (item id, rating or weight, timestamp or None)."""
        ds = self.dataset
        seq = self.split.user_sequence(self.user_index(user))[::-1]
        ts = ds.timestamps
        return [(ds.items[ds.item_idx[i]].id, float(ds.values[i]), None if ts is None else int(ts[i])) for i in seq]

    # ---- tasks: a known user id, or a `NewUser` (cold start) --------------------------------
    def rate(self, users: Who | Sequence[Who], items: str | Sequence[str], batch_size: int = 32) -> list[float]:
        """Predicted rating per (user, item) pair; a single user or item is broadcast."""
        self._require_ratings()
        us, its = _pairs(users, items)
        return self._scalar([self._example("rating", u, i) for u, i in zip(us, its)], "rating", batch_size)

    def prefer(self, users: Who | Sequence[Who], items: str | Sequence[str], batch_size: int = 32) -> list[float]:
        """P(like) per (user, item) pair; a single user or item is broadcast."""
        us, its = _pairs(users, items)
        return self._scalar([self._example("like", u, i) for u, i in zip(us, its)], "like_logit", batch_size)

    def categories(self, users: Who | Sequence[Who], k: int | None = None,
                   batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """Each user's categories by affinity (softmax over the data set's categories), best first."""
        return self._categories([self._example("categories", u) for u in _as_list(users)], k, batch_size)

    def recommend(self, users: Who | Sequence[Who], k: int = 10, exclude_seen: bool = True,
                  batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """Top-k (item id, score) per user over the full catalog: one forward pass + one matrix
        product per batch; seen items (every interaction the run folder knows; for a `NewUser`,
        the items they named) are masked and the top-k taken on the device, so only k pairs per
        user come back to the host."""
        examples, known, named = [], [], []  # known: (row, user index); named: (row, a new user's items)
        for row, who in enumerate(_as_list(users)):
            if isinstance(who, NewUser):
                entries, cols = self.cold_history(who.history)
                examples.append(self._cold_example("recommendation", entries, cols))
                named.append((row, cols))
            else:
                examples.append(self.factory.make_now("recommendation", self.user_index(who)))
                known.append((row, self.user_index(who)))

        def mask(scores: torch.Tensor, start: int) -> None:
            if not exclude_seen:
                return
            stop = start + len(scores)
            rows = [(r - start, u) for r, u in known if start <= r < stop]
            if len(rows) == len(scores):  # the common case: every row a known user, masked in place
                self.seen.mask_(scores, torch.as_tensor([u for _, u in rows], device=self.device))
            elif rows:
                at = torch.as_tensor([r for r, _ in rows], device=self.device)
                scores[at] = self.seen.mask_(scores[at], torch.as_tensor([u for _, u in rows], device=self.device))
            for r, cols in named:
                if start <= r < stop and cols:
                    scores[r - start, torch.as_tensor(cols, device=self.device)] = float("-inf")

        return self._top_items(examples, k, mask, batch_size)

    def recommend_friends(self, users: Who | Sequence[Who], k: int = 10, exclude_friends: bool = True,
                          batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """Top-k (user id, score) per user over every user the run knows, by the friends head: the
        user themself and (with `exclude_friends`) their current friends are left out. A `NewUser`
        has neither (their prompt shows the items they named). Needs a run trained with the
        ``friends`` task (a data set with a social graph)."""
        from mtrec.model.build import wants_friends

        if "friends" not in self.prompts or not wants_friends(self.cfg, self.dataset):
            raise ValueError(f"{self.run_dir}: this run was not trained with the friends task "
                             f"(train.tasks: {list(self.cfg.train.tasks)}; it needs a data set with a social graph)")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if self._friend_seen is None:
            from mtrec.data.friends import friend_seen

            self._friend_seen = friend_seen(self.dataset, None, "valid", self.device)
        who = _as_list(users)
        examples = [self._cold_example("friends", *self.cold_history(w.history)) if isinstance(w, NewUser)
                    else self.factory.make_now("friends", self.user_index(w)) for w in who]
        people, results = self.dataset.users, []
        for start, out in self._batches(examples, batch_size):
            scores = out["friend_logits"].float()
            rows = [(r, ex.user_index) for r, ex in enumerate(examples[start : start + len(scores)]) if ex.user_index >= 0]
            if rows and exclude_friends:
                at = torch.as_tensor([r for r, _ in rows], device=self.device)
                scores[at] = self._friend_seen.mask_(scores[at], torch.as_tensor([u for _, u in rows], device=self.device))
            elif rows:  # never the user themself
                scores[[r for r, _ in rows], [u for _, u in rows]] = float("-inf")
            values, indices = top_k(scores, k)
            for vals, cols in zip(values.tolist(), indices.tolist()):
                results.append([(people[c].id, v) for c, v in zip(cols, vals) if v != float("-inf")])
        return results

    def explain(self, user: Who, item: str, k: int = 3, batch_size: int = 32):
        """Why `item` scores as it does for `user` (a known id or a `NewUser`): an
        `mtrec.explain.Explanation` with the score split into the priors' part and the language
        model's part, and the `k` items shown in the prompt whose removal lowers the score most
        (occlusion: the prompt re-scored without each shown entry, all variants batched).
        Costs 1 + (shown history and friends' entries) prompts."""
        from mtrec.explain import explain_pairs

        return explain_pairs(self, [user], [item], k, batch_size)[0]

    def explain_items(self, user: Who, items: Sequence[str], k: int = 3, batch_size: int = 32) -> list:
        """`explain` for several items of one user: the occluded prompts do not depend on the item,
        so this costs what one explanation costs (the items are extra columns of the same passes)."""
        from mtrec.explain import explain_pairs

        items = _as_list(items)
        return explain_pairs(self, [user] * len(items), items, k, batch_size)

    def explain_pairs(self, users: Who | Sequence[Who], items: str | Sequence[str], k: int | Sequence[int] = 3,
                      batch_size: int = 32) -> list:
        """`explain` per (user, item) pair (a single user or item is broadcast); pairs of one user
        share that user's occluded prompts, and every prompt of the call is batched together."""
        from mtrec.explain import explain_pairs

        return explain_pairs(self, users, items, k, batch_size)

    @functools.cached_property
    def explanation_templates(self):
        """The sentence templates of `explain`: the run folder's ``prompts/explanation.yaml``, or
        the shipped one when the run predates it (`mtrec.prompts.load_explanation_templates`)."""
        from mtrec.prompts import load_explanation_templates

        return load_explanation_templates(self.prompts["recommendation"].path.parent)

    # the cold-start spellings of the same calls (a new user described by the items they liked)
    def recommend_for_history(self, history: Sequence, k: int = 10,
                              exclude_named: bool = True) -> list[tuple[str, float]]:
        """Top-k (item id, score) for a new user who liked the items in `history`.

        Args:
            history: item ids, newest first, or (item id, rating or weight) pairs; a bare id counts
                as liked (see `cold_history`).
            k: how many items.
            exclude_named: leave the named items out of the ranking.
        """
        return self.recommend(NewUser(history), k, exclude_seen=exclude_named)[0]

    def rate_for_history(self, history: Sequence, items: str | Sequence[str]) -> list[float]:
        """Predicted rating of each of `items` for a new user with `history` (see `recommend_for_history`)."""
        return self.rate(NewUser(history), items)

    def prefer_for_history(self, history: Sequence, items: str | Sequence[str]) -> list[float]:
        """P(like) of each of `items` for a new user with `history`."""
        return self.prefer(NewUser(history), items)

    def categories_for_history(self, history: Sequence, k: int | None = None) -> list[tuple[str, float]]:
        """Category affinities of a new user with `history`, best first."""
        return self.categories(NewUser(history), k)[0]

    def cold_history(self, history: Sequence) -> tuple[tuple[HistoryEntry, ...], list[int]]:
        """History entries (newest first) and item indices for a new user's named items.

        A bare item id counts as *liked*: the top of the rating scale for explicit data, the 90th
        percentile of interaction weights for implicit data (a typical strong play count), so the
        prompt reads like a real user's favourites. Repeated ids are kept once.
        """
        ds = self.dataset
        liked = ds.rating_scale[1] if ds.explicit and ds.rating_scale else float(np.quantile(ds.values, 0.9))
        entries, named = [], []
        for h in history:
            item, value = (h, liked) if isinstance(h, (str, int)) else (h[0], float(h[1]))
            j = self.item_index(item)
            if j in named:
                continue
            it = ds.items[j]
            rating, weight = (value, None) if ds.explicit else (None, value)
            entries.append(HistoryEntry(it.title, rating, weight, it.categories, j))
            named.append(j)
        return tuple(entries[: self.factory.opts.max_history]), named

    def _example(self, kind: str, who: Who, item: str | None = None):
        """The `kind` example for a known user (serving time: their whole sequence is history) or a
        `NewUser`; `item` (an item id) for rating and like."""
        j = -1 if item is None else self.item_index(item)
        if isinstance(who, NewUser):
            return self._cold_example(kind, *self.cold_history(who.history), item=j)
        return self.factory.make_now(kind, self.user_index(who), j)

    def _cold_example(self, kind: str, history: tuple[HistoryEntry, ...], named: Sequence[int] = (), item: int = -1):
        """The `kind` example for a new user: no id, attributes or friends; `history` as given (and
        `named`, its item indices newest first, for the sequential prior)."""
        ds = self.dataset
        base = dict(user_id=NEW_USER_ID, user={}, history=history, social=(), explicit=ds.explicit,
                    rating_scale=ds.rating_scale, interaction=-1, user_index=-1, role="serve",
                    history_items=tuple(named[: self.factory.opts.sequence_len]))
        cls = EXAMPLE_TYPES[kind]
        if kind in ("rating", "like"):
            it = ds.items[item]
            return cls(**base, item_title=it.title, item_text=it.text, item_categories=it.categories,
                       item_index=int(item))
        return cls(**base)

    # ---- plumbing ---------------------------------------------------------------------------
    def _require_ratings(self) -> None:
        if not self.dataset.explicit:
            raise ValueError(f"data set {self.dataset.name!r} has no explicit ratings (implicit feedback): "
                             "the rating head was not trained; use prefer() for P(like)")

    def _scalar(self, examples: list, key: str, batch_size: int) -> list[float]:
        """One number per example: the rating, or P(like) (sigmoid of the like logit)."""
        outs = [out[key].float() for _, out in self._batches(examples, batch_size)]
        if not outs:
            return []
        values = torch.cat(outs)
        return (torch.sigmoid(values) if key == "like_logit" else values).tolist()

    def _categories(self, examples: list, k: int | None, batch_size: int) -> list[list[tuple[str, float]]]:
        names = self.dataset.categories
        k = min(k or len(names), len(names))
        results = []
        for _, out in self._batches(examples, batch_size):
            top = torch.topk(torch.softmax(out["category_logits"].float(), -1), k, dim=-1)
            for ps, js in zip(top.values.tolist(), top.indices.tolist()):
                results.append([(names[j], p) for p, j in zip(ps, js)])
        return results

    def _top_items(self, examples: list, k: int, mask, batch_size: int) -> list[list[tuple[str, float]]]:
        """Top-k items per example over the full catalog; `mask(scores, start)` sets excluded
        entries to -inf in place. Excluded items never appear, so a user who has seen almost
        everything gets fewer than k."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        items, results = self.dataset.items, []
        for start, out in self._batches(examples, batch_size, full_catalog=True):
            scores = out["item_logits"].float()
            mask(scores, start)
            values, indices = top_k(scores, k)
            for vals, cols in zip(values.tolist(), indices.tolist()):
                results.append([(items[c].id, v) for c, v in zip(cols, vals) if v != float("-inf")])
        return results

    @torch.no_grad()
    def _batches(self, examples: list, batch_size: int, full_catalog: bool = False,
                 subset: torch.Tensor | None = None, with_prior: bool = False) -> Iterator[tuple[int, dict]]:
        """(start, model outputs) per batch. Catalog scores are computed only when asked: for
        rating / like / category rows an empty item subset skips the [B, items] matrix product.
        `subset` (item indices) scores only those columns; `with_prior` adds ``item_prior`` (see
        `mtrec.model.multitask.TaskHeads.forward`)."""
        no_items = torch.zeros(0, dtype=torch.long, device=self.device)
        extra = {"with_prior": True} if with_prior else {}
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            rendered = [self.renderer.render(ex, self._template(ex)) for ex in chunk]
            ids, mask = pad_right(rendered, self.tokenizer.pad_token_id)
            items = torch.tensor([getattr(ex, "item_index", -1) for ex in chunk], device=self.device)
            users = torch.tensor([ex.user_index for ex in chunk], device=self.device)  # -1: a cold-start user
            columns = subset if subset is not None else None if full_catalog else no_items
            if self.factory.opts.sequence_len:  # the sequential prior reads the history in order
                extra["history"] = history_ids(chunk, self.factory.opts.sequence_len).to(self.device)
            slots = item_slots(rendered, ids.shape[1])
            if slots is not None:  # hybrid item tokens
                extra["item_slots"] = slots.to(self.device)
            yield start, self.model(ids.to(self.device), mask.to(self.device), columns, items, users, **extra)

    def _template(self, example):
        kind = KIND_OF_TYPE[type(example)]
        return self.prompts[KIND_TASK[kind]].train(kind)[0]


def _as_list(x) -> list:
    """One id or `NewUser`, or a sequence of them, as a list (ids as strings)."""
    if isinstance(x, (str, int, NewUser)):
        x = [x]
    return [v if isinstance(v, NewUser) else str(v) for v in x]


def _pairs(users, items) -> tuple[list[str], list[str]]:
    """Equal-length user and item lists; a single user or item is broadcast over the other."""
    us, its = _as_list(users), _as_list(items)
    if len(us) == 1 and len(its) > 1:
        us = us * len(its)
    if len(its) == 1 and len(us) > 1:
        its = its * len(us)
    if len(us) != len(its):
        raise ValueError(f"{len(us)} users and {len(its)} items: give equal lengths, or one of either")
    return us, its


# ---- batch front end (infer.py --task) ------------------------------------------------------
USER_TASKS = ("recommend", "categories", "friends")  # one user per request
PAIR_TASKS = ("rate", "prefer", "explain")  # one (user, item) pair per request
TASKS = USER_TASKS + PAIR_TASKS
USER_COLUMNS, ITEM_COLUMNS = ("user", "user_id"), ("item", "item_id")


class BadInputError(ValueError):
    """Input that cannot be used at all: a missing file, a bad header, no valid rows."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One request: where it came from ("users.csv:7", "argument 2"), the user, the item (pair tasks)."""

    where: str
    user: str
    item: str | None = None


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A line or argument that was not usable, and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def input_format(path: str | Path, fmt: str | None = None) -> str:
    """csv, jsonl or txt: `fmt` if given, else from the file's suffix (anything else is txt)."""
    if fmt:
        return fmt
    suffix = Path(path).suffix.lower()
    return {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}.get(suffix, "txt")


def read_requests(path: str | Path, task: str, fmt: str | None = None) -> list[Request | Rejected]:
    """Requests from a file, in file order; unusable lines come back as `Rejected` naming file:line.

    CSV needs a header with a ``user``/``user_id`` column (and ``item``/``item_id`` for the pair
    tasks rate, prefer and explain). JSONL holds one object per line with the same keys. A text file
    holds whitespace-separated user ids (recommend / categories) or ``USER ITEM`` per line (pair tasks);
    ``#`` starts a comment. Raises `BadInputError` for a missing file or a bad CSV header.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "txt": _read_txt}[input_format(path, fmt)]
    # undecodable bytes become U+FFFD, so such a line is rejected by id instead of ending the run
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        return list(reader(f, str(path), task in PAIR_TASKS))


def requests_from_args(tokens: Sequence[str], task: str) -> list[Request | Rejected]:
    """Requests from command-line ids: USER for recommend/categories, USER:ITEM for rate/prefer/explain."""
    out: list[Request | Rejected] = []
    for n, token in enumerate(tokens, 1):
        where = f"argument {n} ({token!r})"
        if task in PAIR_TASKS:
            user, sep, item = token.partition(":")
            out.append(_request(where, user, item, True) if sep else Rejected(where, "expected USER:ITEM"))
        else:
            out.append(_request(where, token, None, False))
    return out


def _request(where: str, user, item, pair: bool) -> Request | Rejected:
    user = str(user).strip() if user is not None else ""
    item = str(item).strip() if item is not None else ""
    if not user:
        return Rejected(where, "empty user id")
    if pair and not item:
        return Rejected(where, "empty item id")
    return Request(where, user, item if pair else None)


def _read_csv(f: io.TextIOBase, name: str, pair: bool) -> Iterator[Request | Rejected]:
    reader = csv.reader(f)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except (StopIteration, csv.Error) as e:
        raise BadInputError(f"{name}:1: expected a header line ({e or 'empty file'})") from None
    user_col = next((header.index(c) for c in USER_COLUMNS if c in header), None)
    item_col = next((header.index(c) for c in ITEM_COLUMNS if c in header), None)
    if user_col is None or (pair and item_col is None):
        need = "a 'user' or 'user_id' column" + (" and an 'item' or 'item_id' column" if pair else "")
        raise BadInputError(f"{name}:1: bad header {','.join(header)!r}: need {need}")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # e.g. a NUL byte; the reader resumes at the next line
            yield Rejected(f"{name}:{reader.line_num}", f"unreadable CSV ({e})")
            continue
        where = f"{name}:{reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            yield Rejected(where, f"{len(row)} fields, the header has {len(header)}")
            continue
        yield _request(where, row[user_col], row[item_col] if pair else None, pair)


def _read_jsonl(f: io.TextIOBase, name: str, pair: bool) -> Iterator[Request | Rejected]:
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        where = f"{name}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield Rejected(where, f"not valid JSON ({e.msg}, column {e.colno})")
            continue
        if not isinstance(obj, dict):
            yield Rejected(where, 'expected a JSON object such as {"user": "42"}')
            continue
        user, item = _json_id(obj, USER_COLUMNS), _json_id(obj, ITEM_COLUMNS) if pair else None
        problem = next((p for p in (user, item) if isinstance(p, Rejected)), None)
        yield Rejected(where, problem.reason) if problem else _request(where, user, item, pair)


def _json_id(obj: dict, keys: tuple[str, str]) -> str | Rejected:
    """The id under the first present key; ids may be strings or integers (not floats or booleans)."""
    key = next((k for k in keys if k in obj), None)
    if key is None:
        return Rejected("", f"no {keys[0]!r} or {keys[1]!r} field")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return Rejected("", f"field {key!r} must be a string or an integer id, got {json.dumps(value)[:40]}")
    return str(value)


def _read_txt(f: io.TextIOBase, name: str, pair: bool) -> Iterator[Request | Rejected]:
    for n, line in enumerate(f, 1):
        tokens = line.split("#", 1)[0].split()
        where = f"{name}:{n}"
        if not tokens:
            continue
        if not pair:
            yield from (Request(where, t) for t in tokens)
        elif len(tokens) != 2:
            yield Rejected(where, f"expected 'USER ITEM', got {len(tokens)} fields")
        else:
            yield Request(where, tokens[0], tokens[1])


def check_ids(dataset, requests: Iterable[Request | Rejected]) -> tuple[list[Request], list[Rejected]]:
    """Split requests into those the run can answer and the rejected ones (unknown ids included)."""
    good, bad = [], []
    for r in requests:
        if isinstance(r, Rejected):
            bad.append(r)
        elif r.user not in dataset.user_index:
            bad.append(Rejected(r.where, f"unknown user id {r.user!r} (this run knows {dataset.num_users} users)"))
        elif r.item is not None and r.item not in dataset.item_index:
            bad.append(Rejected(r.where, f"unknown item id {r.item!r} (this run knows {dataset.num_items} items)"))
        else:
            good.append(r)
    return good, bad


def score_requests(rec: Recommender, task: str, requests: Sequence[Request], k: int = 10,
                   exclude_seen: bool = True, batch_size: int = 32) -> list[dict]:
    """One result row (a JSON-ready dict) per request, in order (`k`: items or categories per user;
    for explain, contributions per pair)."""
    users = [r.user for r in requests]
    if task == "recommend":
        tops = rec.recommend(users, k=k, exclude_seen=exclude_seen, batch_size=batch_size)
        return [{"user": u, "items": [{"item": i, "score": s} for i, s in top]} for u, top in zip(users, tops)]
    if task == "friends":  # exclude_seen: leave out the user's current friends
        tops = rec.recommend_friends(users, k=k, exclude_friends=exclude_seen, batch_size=batch_size)
        return [{"user": u, "friends": [{"friend": v, "score": s} for v, s in top]} for u, top in zip(users, tops)]
    if task == "categories":
        cats = rec.categories(users, k=k, batch_size=batch_size)
        return [{"user": u, "categories": [{"category": c, "p": p} for c, p in cs]} for u, cs in zip(users, cats)]
    items = [r.item for r in requests]
    if task == "explain":  # k: contributions per pair; pairs of one user share its occluded prompts
        return [{"user": u, **_explanation_row(e)}
                for u, e in zip(users, rec.explain_pairs(users, items, k=k, batch_size=batch_size))]
    if task == "rate":
        values, key = rec.rate(users, items, batch_size), "rating"
    elif task == "prefer":
        values, key = rec.prefer(users, items, batch_size), "p_like"
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return [{"user": u, "item": i, key: v} for u, i, v in zip(users, items, values)]


def _explanation_row(e) -> dict:
    """An `Explanation` as a JSON-ready row (without the user, which the caller sets)."""
    row = e.to_dict()
    del row["user"]
    return row


class ResultWriter:
    """Writes result rows as JSONL (one object per request) or CSV (one line per item / category
    for recommend and categories: user,rank,item,score and user,rank,category,p; one line per
    contribution for explain, the pair's score repeated, and a line with empty contribution fields
    for a pair with none)."""

    CSV_COLUMNS = {"recommend": ("user", "rank", "item", "score"), "categories": ("user", "rank", "category", "p"),
                   "friends": ("user", "rank", "friend", "score"),
                   "rate": ("user", "item", "rating"), "prefer": ("user", "item", "p_like"),
                   "explain": ("user", "item", "score", "prior_part", "lm_part", "rank", "source", "contributor",
                               "friend", "change", "share", "contributor_title")}
    NESTED = {"recommend": ("items", "item", "score"), "categories": ("categories", "category", "p"),
              "friends": ("friends", "friend", "score")}

    def __init__(self, stream, fmt: str, task: str, header: bool = True) -> None:
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"output format {fmt!r}: expected jsonl or csv")
        self.stream, self.fmt, self.task = stream, fmt, task
        if fmt == "csv":
            self.csv = csv.writer(stream, lineterminator="\n")
            if header:  # a later process's part of a sharded output has none
                self.csv.writerow(self.CSV_COLUMNS[task])

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            if self.fmt == "jsonl":
                self.stream.write(json.dumps(row, ensure_ascii=False) + "\n")
            elif self.task in USER_TASKS:
                key, name, value = self.NESTED[self.task]
                self.csv.writerows((row["user"], n, e[name], e[value]) for n, e in enumerate(row[key], 1))
            elif self.task == "explain":
                head = [row[c] for c in ("user", "item", "score", "prior_part", "lm_part")]
                lines = [head + [n, c["source"], c["item"], c["friend"] or "", c["change"], c["share"], c["title"]]
                         for n, c in enumerate(row["contributions"], 1)]
                self.csv.writerows(lines or [head + [""] * 7])
            else:
                self.csv.writerow([row[c] for c in self.CSV_COLUMNS[self.task]])
        self.stream.flush()


def run_batch(rec: Recommender, task: str, requests: Sequence[Request], writer: ResultWriter, *, k: int = 10,
              exclude_seen: bool = True, batch_size: int = 32, progress: bool = True) -> float:
    """Score `requests` batch by batch, writing as it goes (a crash keeps what was done), with a
    progress bar on stderr. Returns the seconds spent."""
    from tqdm.auto import tqdm

    unit = "user" if task in USER_TASKS else "row"
    start = time.perf_counter()
    with tqdm(total=len(requests), unit=unit, file=sys.stderr, disable=not progress, desc=task) as bar:
        for s in range(0, len(requests), batch_size):
            chunk = requests[s : s + batch_size]
            writer.write(score_requests(rec, task, chunk, k, exclude_seen, batch_size))
            bar.update(len(chunk))
    return time.perf_counter() - start


def check_recommendations(run_dir: str | Path, path: str | Path, k: int, exclude_seen: bool = True,
                          all_users: bool = False) -> tuple[int, list[str]]:
    """Check a recommend JSONL file against its run folder's catalog (no model needed).

    Every row must name a known user and list known, distinct items; with `exclude_seen` none of
    them seen, and exactly min(k, unseen items) of them (a user who has seen nearly the whole
    catalog gets fewer). With `all_users`, every user of the run must appear exactly once.

    Returns:
        (rows checked, problems as "file:line: ..." strings; empty when all is well).
    """
    ds = load_catalog(Path(run_dir) / "catalog").dataset
    seen: dict[int, set[int]] = {}
    for u, i in zip(ds.user_idx.tolist(), ds.item_idx.tolist()):
        seen.setdefault(u, set()).add(i)
    problems, users, rows = [], [], 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rows += 1
            row = json.loads(line)
            u = ds.user_index.get(str(row.get("user")))
            if u is None:
                problems.append(f"{path}:{n}: unknown user {row.get('user')!r}")
                continue
            users.append(u)
            problems += [f"{path}:{n}: {p}" for p in _check_row(ds, seen.get(u, set()), row["items"], k, exclude_seen)]
    if all_users:
        counts = np.bincount(np.asarray(users, dtype=np.int64), minlength=ds.num_users)
        if (counts != 1).any():
            problems.append(f"{path}: {int((counts == 0).sum())} users missing, {int((counts > 1).sum())} repeated")
    return rows, problems


def _check_row(ds, seen: set[int], entries: list[dict], k: int, exclude_seen: bool) -> list[str]:
    ids = [e["item"] for e in entries]
    idx = [ds.item_index.get(str(i)) for i in ids]
    problems = [f"unknown item {i!r}" for i, j in zip(ids, idx) if j is None]
    if len(set(ids)) != len(ids):
        problems.append("repeated items")
    if exclude_seen and any(j in seen for j in idx):
        problems.append(f"seen items recommended: {[i for i, j in zip(ids, idx) if j in seen]}")
    want = min(k, ds.num_items - (len(seen) if exclude_seen else 0))
    if len(ids) != want:
        problems.append(f"{len(ids)} items, expected {want}")
    scores = [e["score"] for e in entries]
    if scores != sorted(scores, reverse=True):
        problems.append("scores not in descending order")
    return problems
