"""Render examples into prompts that fit a token budget, measured with the real tokenizer.

Rules (deterministic, no randomness):
1. Every free-text value (titles, item text, user attributes, candidates) is capped to a per-field
   token count, lists of categories to `max_categories` (the most frequent first, as loaders order them), and any instruction/special token spelled inside it is defused, so data can never
   inject a task token.
2. The prompt is ``<task token> body <task token>``: the leading token conditions every position,
   the trailing one is where a decoder's last-token pooling reads the answer.
3. If the whole prompt exceeds ``max_length``, own history keeps its newest entries and drops the
   oldest, then social context does the same (at most ``social_share`` of the spare budget is held
   for it while history is cut), then candidates; the largest counts that fit are found on the real
   token count. The search starts from an estimate (entries' own token counts, calibrated by
   measured lengths) and gallops, then bisects, from there: the same counts as a plain binary
   search, with ~2-3 tokenisations per list instead of ~log2(n). The counts cut are returned.
4. If nothing is left to cut and the prompt still does not fit, `PromptTooLongError` names the
   template and the lengths; no prompt is ever returned over budget.
5. Hybrid item tokens (`item_tokens` hybrid or both): each history and friends' item with a
   collaborative embedding (`known_items`) is written as the one token `ITEM_TOKEN` (hybrid) or that
   token before its title (both); the model puts a projection of the item's embedding in its place.
   `RenderedPrompt.item_slots` says which item sits at which token position, found from the order
   the template wrote the entries in (any order, any template). An item without an embedding keeps
   its title.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mtrec.prompts.templates import Template
from mtrec.tasks import HistoryEntry, SocialEntry


class PromptTooLongError(ValueError):
    """Even with no history, social context or candidates, the prompt exceeds max_length."""


ITEM_TOKEN = "<|item|>"  # where a hybrid item token goes (the model replaces its embedding)
ITEM_TOKEN_MODES = ("text", "hybrid", "both")
_MARK = re.compile("\ue000(\\d+)\ue001")


@dataclass(frozen=True)
class RenderOptions:
    """Token budget settings (config section ``prompt``)."""

    max_length: int = 256
    max_title_tokens: int = 24
    max_text_tokens: int = 48
    max_attribute_tokens: int = 8
    max_categories: int = 5
    social_share: float = 0.3
    item_tokens: str = "text"


def render_options(cfg) -> RenderOptions:
    """The token budget a `mtrec.config.Config` asks for (training and serving alike)."""
    p = cfg.prompt
    return RenderOptions(p.max_length, p.max_title_tokens, p.max_text_tokens, max_categories=p.max_categories,
                         social_share=p.social_share, item_tokens=p.item_tokens)


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt ready for the model, with what was cut to fit."""

    text: str
    input_ids: list[int]
    template_id: str
    history_shown: int
    history_cut: int
    social_shown: int
    social_cut: int
    candidates_cut: int = 0
    item_slots: tuple[tuple[int, int], ...] = ()  # (token position, item index) of each hybrid item token

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


class PromptRenderer:
    """Renders examples with a tokenizer and instruction tokens under `RenderOptions`.

    Args:
        tokenizer: a Hugging Face tokenizer that already holds the instruction tokens.
        instruction_tokens: task -> token string (e.g. ``{"rating": "<|rating|>"}``).
        options: budget settings.
        known_items: with hybrid item tokens, [items] bool: the items that have a collaborative
            embedding (the others keep their titles); None: every item.
    """

    def __init__(self, tokenizer, instruction_tokens: dict[str, str], options: RenderOptions | None = None,
                 known_items: np.ndarray | None = None) -> None:
        self.tokenizer = tokenizer
        self.instruction_tokens = dict(instruction_tokens)
        self.options = options or RenderOptions()
        mode = self.options.item_tokens
        if mode not in ITEM_TOKEN_MODES:
            raise ValueError(f"prompt.item_tokens: {mode!r} is not one of {', '.join(ITEM_TOKEN_MODES)}")
        self.hybrid = mode != "text"
        self.item_token_id = None
        if self.hybrid:
            if ITEM_TOKEN not in tokenizer.get_vocab():
                raise ValueError(f"prompt.item_tokens={mode}: the tokenizer has no {ITEM_TOKEN} token "
                                 "(mtrec.model.build.build_backbone adds it)")
            self.item_token_id = tokenizer.convert_tokens_to_ids(ITEM_TOKEN)
        self.known_items = None if known_items is None else np.asarray(known_items, bool)
        specials = set(getattr(tokenizer, "all_special_tokens", [])) | set(self.instruction_tokens.values())
        specials |= {ITEM_TOKEN}
        self._specials = sorted((s for s in specials if s), key=len, reverse=True)
        self._cap = lru_cache(maxsize=200_000)(self._cap_uncached)
        self._ntok = lru_cache(maxsize=200_000)(self._ntok_uncached)
        self._clean_entry = lru_cache(maxsize=200_000)(self._clean_entry_uncached)

    def as_text(self) -> "PromptRenderer":
        """This renderer with titles in place of hybrid item tokens (itself when it writes titles)."""
        if not self.hybrid:
            return self
        if getattr(self, "_text", None) is None:
            self._text = PromptRenderer(self.tokenizer, self.instruction_tokens,
                                        dataclasses.replace(self.options, item_tokens="text"))
        return self._text

    # ---- field hygiene ------------------------------------------------------------------------
    def _defuse(self, text: str) -> str:
        # A zero-width space after the first character keeps the text readable but stops the
        # tokenizer from matching a special token spelled inside data.
        for s in self._specials:
            if s in text:
                text = text.replace(s, s[0] + "\u200b" + s[1:])
        return text

    def _cap_uncached(self, text: str, limit: int) -> str:
        text = self._defuse(text)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            return text
        return self.tokenizer.decode(ids[:limit], skip_special_tokens=True).rstrip() + "…"

    def _clean_entry_uncached(self, h: HistoryEntry) -> HistoryEntry:
        # cached per entry: a Last.fm entry carries up to ~10 categories, each its own cap lookup
        o = self.options
        categories = tuple(self._cap(c, o.max_attribute_tokens) for c in h.categories[: o.max_categories])
        return HistoryEntry(self._item_title(h.title, h.item), h.rating, h.weight, categories, h.item)

    def _item_title(self, title: str, item: int) -> str:
        """A history or friend's item's title as the prompt writes it: capped, or the hybrid item token."""
        capped = self._cap(title, self.options.max_title_tokens)
        if not self.hybrid or item < 0 or (self.known_items is not None and not self.known_items[item]):
            return capped
        return ITEM_TOKEN if self.options.item_tokens == "hybrid" else f"{ITEM_TOKEN} {capped}"

    def _ntok_uncached(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def clean(self, example):
        """A copy of `example` with every text value capped and defused."""
        o = self.options
        title, text, attr = o.max_title_tokens, o.max_text_tokens, o.max_attribute_tokens
        changes = {
            "user_id": self._cap(example.user_id, attr),
            "user": {self._cap(str(k), attr): self._cap(str(v), attr) for k, v in example.user.items()},
            "history": tuple(map(self._clean_entry, example.history)),
            "social": tuple(
                SocialEntry(self._cap(s.friend, attr), self._item_title(s.title, s.item), s.rating, s.weight, s.item)
                for s in example.social
            ),
        }
        if hasattr(example, "item_title"):
            changes["item_title"] = self._cap(example.item_title, title)
            changes["item_text"] = self._cap(example.item_text, text)
            changes["item_categories"] = tuple(self._cap(c, attr) for c in example.item_categories[: o.max_categories])
        if hasattr(example, "candidates"):
            changes["candidates"] = tuple(self._cap(c, title) for c in example.candidates)
        if hasattr(example, "friend_ids"):
            changes["friend_ids"] = tuple(self._cap(f, attr) for f in example.friend_ids)
        return dataclasses.replace(example, **changes)

    # ---- rendering ----------------------------------------------------------------------------
    def encode(self, task: str, body: str) -> tuple[str, list[int]]:
        tok = self.instruction_tokens[task]
        text = f"{tok}{body}{tok}"
        return text, self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def render(self, example, template: Template) -> RenderedPrompt:
        """Render `example` with `template`, cut to `max_length` tokens (see module docstring)."""
        ex = self.clean(example)
        budget = self.options.max_length
        whole = (len(ex.history), len(ex.social), self._n_cands(ex))
        memo: dict[tuple[int, int, int], tuple[str, list[int]]] = {}

        def size(h: int, s: int, c: int) -> int:
            if (h, s, c) not in memo:
                memo[h, s, c] = self._attempt(ex, template, h, s, c)
            return len(memo[h, s, c][1])

        # Tokenising a long uncut prompt is the costliest step, so try it first only when its entries
        # (titles + 2 tokens each) could fit; else it is checked last, if no cut prompt overflowed.
        entries = [e.title for e in ex.history + ex.social] + list(getattr(ex, "candidates", ()))
        if sum(self._ntok(t) + 2 for t in entries) <= budget and size(*whole) <= budget:
            return self._result(memo[whole], template, ex, *whole)
        empty = size(0, 0, 0)
        if empty > budget:
            raise PromptTooLongError(
                f"template {template.id!r} ({template.task}) needs {empty} tokens with no history, social "
                f"context or candidates, over max_length={budget}; raise prompt.max_length or shorten the template"
            )
        counts = self._cut_counts(ex, size, budget, empty)
        if max(len(ids) for _, ids in memo.values()) <= budget and size(*whole) <= budget:
            counts = whole
        return self._result(memo[counts], template, ex, *counts)

    def _cut_counts(self, ex, size, budget: int, empty: int) -> tuple[int, int, int]:
        """How many history, social and candidate entries to keep (rule 3 of the module docstring)."""
        n_h, n_s, n_c = len(ex.history), len(ex.social), self._n_cands(ex)
        # Hold back part of the spare budget for social context while history is cut.
        social_cost = size(0, n_s, 0) - empty
        reserve = min(social_cost, int(self.options.social_share * (budget - empty)))
        # History guess: titles' token counts plus a per-entry overhead, then rescaled once by the
        # measured length at that guess (the overhead depends on the template).
        costs = [self._ntok(e.title) + 3 for e in ex.history]
        guess = _guess(costs, empty, sum(costs), budget - reserve)
        if guess:
            guess = _guess(costs, empty, (size(guess, 0, 0) - empty) * sum(costs) / sum(costs[:guess]), budget - reserve)
        h = _largest(n_h, lambda k: size(k, 0, 0) <= budget - reserve, guess)
        base = size(h, 0, 0)
        guess = _guess([self._ntok(e.title) + 2 for e in ex.social], base, social_cost, budget)
        s = _largest(n_s, lambda k: size(h, k, 0) <= budget, guess)
        costs = [self._ntok(t) + 1 for t in getattr(ex, "candidates", ())]
        guess = _guess(costs, size(h, s, 0), sum(costs), budget) if n_c else 0
        c = _largest(n_c, lambda k: size(h, s, k) <= budget, guess)
        size(h, s, c)  # the result's attempt is in the memo
        return h, s, c

    @staticmethod
    def _n_cands(ex) -> int:
        return len(getattr(ex, "candidates", ()))

    def _attempt(self, ex, template: Template, h: int, s: int, c: int) -> tuple[str, list[int]]:
        return self.encode(template.task, template.render(_cut(ex, h, s, c)))

    def _result(self, attempt, template, ex, h: int, s: int, c: int) -> RenderedPrompt:
        text, ids = attempt
        slots = self._slots(ex, template, h, s, c, ids) if self.hybrid else ()
        return RenderedPrompt(text, ids, template.id, h, len(ex.history) - h, s, len(ex.social) - s,
                              self._n_cands(ex) - c, slots)

    def _slots(self, ex, template: Template, h: int, s: int, c: int, ids: list[int]) -> tuple[tuple[int, int], ...]:
        """(position, item) of each item token in `ids`: the template is rendered once more with a
        numbered marker in place of each entry's title, which gives the order it writes them in."""
        entries = ex.history[:h] + ex.social[:s]
        marked = _cut(ex, h, s, c)
        marked = dataclasses.replace(
            marked, history=tuple(dataclasses.replace(e, title=f"\ue000{k}\ue001") for k, e in enumerate(marked.history)),
            social=tuple(dataclasses.replace(e, title=f"\ue000{h + k}\ue001") for k, e in enumerate(marked.social)))
        order = [int(k) for k in _MARK.findall(template.render(marked))]
        items = [entries[k].item for k in order if ITEM_TOKEN in entries[k].title]
        positions = [p for p, t in enumerate(ids) if t == self.item_token_id]
        if len(positions) != len(items):
            raise ValueError(f"template {template.id!r}: {len(positions)} item tokens in the prompt but {len(items)} "
                             "item titles written; hybrid item tokens need each history / friend's title written once")
        return tuple(zip(positions, items))


def _cut(ex, h: int, s: int, c: int):
    """`ex` with its first h history entries, s friends' items and c candidates."""
    changes = {"history": ex.history[:h], "social": ex.social[:s]}
    if hasattr(ex, "candidates"):
        changes["candidates"] = ex.candidates[:c]
    return dataclasses.replace(ex, **changes)


def _guess(costs: list[int], base: int, total: int, limit: int) -> int:
    """How many leading entries fit `limit`, estimating the length with k entries as
    ``base + total * (cost of the first k) / (cost of all)``."""
    whole = sum(costs)
    k, run = 0, 0
    for cost in costs:
        run += cost
        if base + total * run / max(whole, 1) > limit:
            break
        k += 1
    return k


def _largest(n: int, fits, guess: int = 0) -> int:
    """The largest k in [0, n] with fits(k), assuming fits is monotone (True then False); 0 when
    no k >= 1 fits. Probes around `guess` first (galloping), then bisects the bracket found."""
    lo, hi = 0, n
    g = min(max(guess, 0), n)
    step = 1
    if g == 0 or fits(g):
        lo = g
        while lo < hi:
            probe = min(hi, lo + step)
            if not fits(probe):
                hi = probe - 1
                break
            lo, step = probe, step * 2
    else:
        hi = g - 1
        while hi > 0:
            probe = max(1, g - step)
            if fits(probe):
                lo = probe
                break
            hi, step = probe - 1, step * 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
