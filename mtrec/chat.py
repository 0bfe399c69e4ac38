"""A prompt-style session over a run folder: ``python infer.py --run DIR --chat``.

Commands (one per line; USER is a user id, optionally written ``user 42``, or ``me``)::

    recommend USER [k=10]        top-K unseen items
    rate USER ITEM [ITEM ...]    predicted rating(s)
    prefer USER ITEM [ITEM ...]  P(like)
    prefer USER                  category affinities
    history USER [k=20|all]      the user's known items, newest first
    like ITEM [ITEM ...]         add items to the session's new user "me"; forget: clear it
    why ITEM for USER            which items shown in USER's prompt raised ITEM's score most
    why [ITEM]                   the same for the last recommendation (bare: its top item)
    friends USER [k=10]          people USER may want to befriend (a run trained with the friends task)
    format table|json            answers as aligned tables (default) or one JSON object per line
    help, quit / exit / EOF

ITEM is an item id or a title. Titles match forgivingly: case, accents, punctuation, a leading or
MovieLens-style trailing article ("Usual Suspects, The") and the year are ignored; a year given
("Heat (1995)") picks between same-named items; ambiguous and unknown titles are answered with
suggestions (difflib close matches). Several titles need double quotes: ``rate 42 "Heat" "Casino"``;
one title needs none: ``rate 42 Schindler's List``.

Anything that is not a command is read as a free-text question. With ``user 42`` in it, it is routed
to rate / prefer / history / recommend by its words ("how would user 42 rate Heat (1995)?"). Without
a user, it is a new user's question ("I loved Toy Story and Heat, what next?"): the titles it names
become that user's history (cold start, `Recommender.recommend_for_history`) and the session's
``me``, so ``rate me Casino`` can follow.

`ChatSession.handle(line) -> str` holds all of this and never raises: every error is one line.
`run_chat` is the stdin/stdout loop around it; it writes the prompt ``mtrec> `` before each line
even through a pipe (unless told not to), so a script can split the answers on it.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
import sys
import unicodedata
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np

PROMPT = "mtrec> "
MAX_LINE = 2000  # characters; longer lines are refused before any parsing or title matching
LEADING_ARTICLES = {"the", "a", "an"}
# MovieLens writes "Usual Suspects, The" and "Cité des enfants perdus, La"
TRAILING_ARTICLE = re.compile(r",\s*(the|a|an|la|le|les|l'|il|el|los|las|das|die|der|den|det)\s*$")
TRAILING_PARENS = re.compile(r"\s*\(([^()]*)\)\s*$")
# "Il Postino" is stored as "Postino, Il": a query's leading foreign article may be dropped
FOREIGN_ARTICLES = {"la", "le", "les", "l", "il", "el", "los", "las", "das", "die", "der", "den", "det"}
WORD = re.compile(r"[^\W_]+")
# single capitalised words that start questions, never titles on their own
STOPWORDS = {"what", "which", "next", "then", "and", "but", "also", "like", "love", "loved", "liked", "please",
             "recommend", "user", "movie", "movies", "film", "films", "item", "items", "how", "would", "should",
             "now", "new", "can", "could", "give", "show", "tell", "any", "some", "more", "rate", "prefer"}
K_PATTERN = re.compile(r"\btop\s+(\d{1,4})\b|\b(\d{1,4})\s+(?:more\s+)?(?:movies|items|films|songs|records|books|"
                       r"things|titles|picks|recommendations|suggestions)\b", re.I)
USER_PATTERN = re.compile(r"\buser\s+([^\s,;:?!\"]+)", re.I)
WHY_PATTERN = re.compile(r"^(.*?)\s+for\s+(?:user\s+)?(\S+)$", re.I)  # "ITEM for [user] USER"


class ChatError(Exception):
    """A problem with one line of input, shown to the user as one line."""


class UsageError(ChatError):
    """The line does not fit the command's form (it may still read as a free-text question)."""


def fold(text: str) -> str:
    """Lower case without accents, '&' read as 'and', apostrophes dropped (Schindler's = Schindlers)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return text.replace("&", " and ").replace("'", "").replace("\u2019", "")


def title_key(title: str) -> tuple[tuple[str, ...], str | None]:
    """(words, year) of a title or query: "Usual Suspects, The (1995)" -> (("usual", "suspects"), "1995")."""
    key, year, _ = _title_parts(title)
    return key, year


def _title_parts(title: str) -> tuple[tuple[str, ...], str | None, list[tuple[str, ...]]]:
    """Words, year, and the words of alternate titles in trailing parentheses ("Seven (Se7en) (1995)")."""
    text, year, aliases = title.strip().lower(), None, []
    while m := TRAILING_PARENS.search(text):
        inner = m.group(1).strip()
        if year is None and re.fullmatch(r"\d{4}", inner):
            year = inner
        elif inner:
            aliases.append(_words(inner))
        text = text[: m.start()]
    return _words(text), year, [a for a in aliases if a]


def _words(text: str) -> tuple[str, ...]:
    words = WORD.findall(fold(TRAILING_ARTICLE.sub("", text.strip())))
    if len(words) > 1 and words[0] in LEADING_ARTICLES:
        words = words[1:]
    return tuple(words)


class TitleIndex:
    """Find catalog items by id or forgiving title, one at a time or inside free text."""

    def __init__(self, items: Sequence, popularity: np.ndarray) -> None:
        self.items, self.popularity = items, popularity
        self.ids = {it.id: j for j, it in enumerate(items)}
        self.by_title: dict[str, list[int]] = {}
        self.by_key: dict[tuple[str, ...], list[int]] = {}
        self.years: list[str | None] = []
        for j, it in enumerate(items):
            key, year, aliases = _title_parts(it.title)
            self.years.append(year)
            self.by_title.setdefault(" ".join(it.title.lower().split()), []).append(j)
            for k in dict.fromkeys([key, *aliases]):  # an alternate title finds the item too
                if k:
                    self.by_key.setdefault(k, []).append(j)
        self.max_words = max(map(len, self.by_key), default=0)
        self._key_text = {" ".join(k): k for k in self.by_key}

    def describe(self, j: int) -> str:
        return f"{self.items[j].title} [id {self.items[j].id}]"

    def resolve(self, text: str) -> int:
        """The item an id or title names; `ChatError` with suggestions when unknown or ambiguous."""
        query = text.strip().strip("'\"").strip()
        if not query:
            raise ChatError("empty item: give an item id or a title")
        if query in self.ids:  # an exact id wins; add the year to mean a numeric title
            return self.ids[query]
        found = self.by_title.get(" ".join(query.lower().split()))
        if not found:
            key, year = title_key(query)
            named = self.by_key.get(key, [])
            if not named and len(key) > 1 and key[0] in FOREIGN_ARTICLES:
                named = self.by_key.get(key[1:], [])
            found = [j for j in named if year is None or self.years[j] == year]
            if not found:
                hint = "; ".join(self.describe(j) for j in self.suggest(key))
                raise ChatError(f"unknown title {query!r}" + (f"; did you mean: {hint}" if hint else ""))
        if len(found) > 1:
            found = sorted(found, key=lambda j: -self.popularity[j])
            listed = "; ".join(self.describe(j) for j in found[:5])
            raise ChatError(f"{query!r} matches {len(found)} items: {listed}; add the year or use the item id")
        return found[0]

    def suggest(self, key: tuple[str, ...], n: int = 5) -> list[int]:
        """Close titles: difflib matches of the words, then titles holding every word, popular first."""
        close = difflib.get_close_matches(" ".join(key), list(self._key_text), n=n, cutoff=0.6)
        picks = [j for text in close for j in self.by_key[self._key_text[text]]]
        if len(picks) < n and key:
            words = set(key)
            holding = [j for k, js in self.by_key.items() if words <= set(k) for j in js]
            picks += sorted(set(holding) - set(picks), key=lambda j: -self.popularity[j])
        return picks[:n]

    def find_in_text(self, text: str) -> tuple[list[int], list[str]]:
        """Titles named in free text, in order, and notes about guesses. Quoted parts are resolved
        strictly (an unknown one raises with suggestions); the rest is scanned for the longest
        catalog titles. A lone word counts only if capitalised, 3+ letters and not a question word,
        so "what next?" never finds a film called "Next"."""
        found: list[int] = []
        for quoted in re.findall(r'"([^"]+)"', text):
            found.append(self.resolve(quoted))
        words = WORD.findall(fold(re.sub(r'"[^"]*"', " ", text)))
        notes, i = [], 0
        while i < len(words):
            span, items = self._longest_title(words, i)
            if not items:
                i += 1
                continue
            after = words[i + span].lower() if i + span < len(words) else ""
            if any(self.years[j] == after for j in items):  # "Heat 1995" or "Heat (1995)"
                items, span = [j for j in items if self.years[j] == after], span + 1
            best = max(items, key=lambda j: self.popularity[j])
            if len(items) > 1:
                notes.append(f"{' '.join(words[i:i + span])!r} could be {len(items)} items; took {self.describe(best)}")
            found.append(best)
            i += span
        return list(dict.fromkeys(found)), notes

    def _longest_title(self, words: list[str], i: int) -> tuple[int, list[int]]:
        for span in range(min(self.max_words, len(words) - i), 0, -1):
            items = self.by_key.get(tuple(w.lower() for w in words[i : i + span]))
            if items and (span > 1 or (words[i][:1].isupper() and len(words[i]) >= 3
                                       and words[i].lower() not in STOPWORDS)):
                return span, items
        return 0, []


def split_args(text: str) -> list[str]:
    """Whitespace-split with double quotes grouping; apostrophes and backslashes are plain text."""
    lex = shlex.shlex(text, posix=True)
    lex.whitespace_split, lex.quotes, lex.escape, lex.commenters = True, '"', "", ""
    try:
        return list(lex)
    except ValueError as e:  # shlex: "No closing quotation"
        raise ChatError(f"unbalanced quotes ({e}): put each title in double quotes, "
                        "e.g. rate 42 \"Heat (1995)\"") from None


RATE_WORDS = {"rate", "rates", "rated", "rating", "ratings", "score", "stars"}
LIKE_WORDS = {"like", "likes", "prefer", "prefers", "enjoy", "enjoys", "love", "loves"}
CATEGORY_WORDS = LIKE_WORDS | {"category", "categories", "genre", "genres", "taste", "tastes"}
HISTORY_WORDS = {"history", "seen", "watched", "rated", "past", "listened", "played", "known"}

HELP = """commands (USER: a user id, or "me" = the new user you describe; ITEM: an id or a title):
  recommend USER [k=10]          top-K items USER has not seen          recommend 42 k=5
  rate USER ITEM [ITEM ...]      predicted ratings                     rate 42 "Heat (1995)" "Casino"
  prefer USER ITEM [ITEM ...]    P(USER likes ITEM)                    prefer 42 Heat
  prefer USER                    USER's categories by affinity         prefer 42
  history USER [k=20|all]        USER's known items, newest first      history 42
  like ITEM [ITEM ...]           add items "me" liked; forget: clear    like "Toy Story" Heat
  why ITEM for USER              shown items that raised ITEM most     why 50 for 42
  why [ITEM]                     the same after a recommendation       why   (its top item)
  friends USER [k=10]            people to befriend (friends runs)     friends 42 k=5
  format table|json              how answers are printed
  help, quit
or ask in free text: "I loved Toy Story and Heat, what next?", "how would user 42 rate Heat (1995)?"
several titles in one command need double quotes; one title needs none"""


class ChatSession:
    """One chat session over a `Recommender`. `handle(line)` answers one line and never raises.

    Args:
        rec: the `mtrec.inference.Recommender` to ask.
        fmt: "table" (aligned, for people) or "json" (one object per answer, for scripts).
    """

    def __init__(self, rec, fmt: str = "table") -> None:
        ds = rec.dataset
        self.rec, self.ds, self.fmt = rec, ds, fmt
        self.titles = TitleIndex(ds.items, np.bincount(ds.item_idx, minlength=ds.num_items))
        self.me: list[str] = []  # item ids the session's new user liked, newest first
        self.last: tuple[str | None, str] | None = None  # (user, top item id) of the last recommendation
        self.finished = False
        self.commands = {"recommend": self._recommend, "rate": self._rate, "prefer": self._prefer,
                         "history": self._history, "like": self._like, "forget": self._forget, "why": self._why,
                         "friends": self._friends,
                         "format": self._format, "help": lambda rest: {"answer": "message", "text": HELP}}

    def handle(self, line: str) -> str:
        """The answer to one line ("" for a blank line); errors are one line starting with "error:"."""
        try:
            result = self._dispatch(line)
        except (ChatError, ValueError, KeyError) as e:  # KeyError: UnknownIdError from the API
            return self._error(str(e))
        except Exception as e:  # a bug must not end the session: say it in one line, go on
            return self._error(f"internal error ({type(e).__name__}: {e})")
        return "" if result is None else self._render(result)

    def _error(self, message: str) -> str:
        message = " ".join(message.split())[:500]
        return json.dumps({"error": message}) if self.fmt == "json" else f"error: {message}"

    def _dispatch(self, line: str) -> dict | None:
        line = line.strip()
        if not line:
            return None
        if len(line) > MAX_LINE:
            raise ChatError(f"line too long ({len(line)} characters; the limit is {MAX_LINE})")
        word, _, rest = line.partition(" ")
        command = word.lower()
        if command in ("quit", "exit"):
            self.finished = True
            return {"answer": "message", "text": "bye"}
        handler = self.commands.get(command)
        if handler is not None:
            try:
                return handler(rest.strip())
            except UsageError:  # "recommend 10 movies for user 42" is a question, not a bad command
                result = self._free_text(line)
                if result is None:
                    raise
                return result
        result = self._free_text(line)
        if result is None:
            raise ChatError(f"not a command, and no known title or 'user ID' in {line[:60]!r}; type help")
        return result

    # ---- commands -----------------------------------------------------------------------------
    def _recommend(self, rest: str) -> dict:
        user, tokens = self._user(split_args(rest))
        return self._recommend_answer(user, self._count(tokens, 10))

    def _friends(self, rest: str) -> dict:
        from mtrec.inference import NewUser

        user, tokens = self._user(split_args(rest))
        k = self._count(tokens, 10)
        top = self.rec.recommend_friends(user if user is not None else NewUser(self.me), k=k)[0]
        known = 0 if user is None else len(self.rec.factory.context.friends(self.ds.user_index[user]))
        return {"answer": "friends", "user": user, "known": known, "k": k,
                "items": [{"friend": v, "score": s} for v, s in top]}

    def _rate(self, rest: str) -> dict:
        user, tokens = self._user(split_args(rest))
        return self._pair_answer("rate", user, self._items(tokens, '"' in rest))

    def _prefer(self, rest: str) -> dict:
        user, tokens = self._user(split_args(rest))
        if not tokens:
            return self._categories_answer(user)
        return self._pair_answer("prefer", user, self._items(tokens, '"' in rest))

    def _history(self, rest: str) -> dict:
        user, tokens = self._user(split_args(rest))
        return self._history_answer(user, self._count(tokens, 20, allow_all=True))

    def _like(self, rest: str) -> dict:
        named = [self.ds.items[j].id for j in self._items(split_args(rest), '"' in rest)]
        self.me = list(dict.fromkeys(named[::-1] + self.me))  # the ones just named are the newest
        liked = "; ".join(self._title(i) for i in self.me)
        return {"answer": "message", "text": f"new user 'me' liked (newest first): {liked}. Try: recommend me"}

    def _why(self, rest: str) -> dict:
        """`why ITEM for USER`, `why ITEM` (the last recommendation's user), bare `why` (its top item)."""
        text = rest.strip().rstrip("?").strip()
        if not text:
            if self.last is None:
                raise ChatError("nothing to explain yet: ask for a recommendation first, or ask why ITEM for USER "
                                "(e.g. why 50 for 42)")
            return self._explain_answer(*self.last)
        m = WHY_PATTERN.match(text)
        if m and (m.group(2).lower() == "me" or m.group(2) in self.ds.user_index):
            (user, _), text = self._user([m.group(2)]), m.group(1)
        elif m:  # "for X" with X no user: a title holding "for" (after a recommendation), else a bad user
            if self.last is not None:
                try:
                    return self._explain_answer(self.last[0], self.ds.items[self.titles.resolve(text)].id)
                except ChatError:
                    pass
            self._user([m.group(2)])  # raises: unknown user, naming it
        elif self.last is not None:  # "why Heat": the last recommendation's user
            user = self.last[0]
        else:
            raise ChatError(f"why {text[:60]!r} for whom? e.g. why 50 for 42 (or ask after a recommendation)")
        return self._explain_answer(user, self.ds.items[self.titles.resolve(text)].id)

    def _forget(self, rest: str) -> dict:
        self.me = []
        return {"answer": "message", "text": "forgot the new user 'me'"}

    def _format(self, rest: str) -> dict:
        if rest.lower() not in ("table", "json"):
            raise ChatError(f"format {rest!r}: expected table or json")
        self.fmt = rest.lower()
        return {"answer": "message", "text": f"answers are now printed as {self.fmt}"}

    # ---- arguments ----------------------------------------------------------------------------
    def _user(self, tokens: list[str]) -> tuple[str | None, list[str]]:
        """(user id, or None for "me"; the remaining tokens). "user 42" and "42" both work."""
        if tokens and tokens[0].lower() == "user":
            tokens = tokens[1:]
        if not tokens:
            raise UsageError("which user? e.g. recommend 42 k=10 (type help)")
        user = tokens[0]
        if user.lower() == "me":
            if not self.me:
                raise ChatError("no new user 'me' yet: say which titles you liked (like \"Toy Story\" Heat), "
                                "or ask 'I loved Toy Story and Heat, what next?'")
            return None, tokens[1:]
        if user not in self.ds.user_index:
            ds = self.ds
            raise ChatError(f"unknown user {user!r} (this run knows {ds.num_users} users, ids "
                            f"{ds.users[0].id} ... {ds.users[-1].id})")
        return user, tokens[1:]

    @staticmethod
    def _count(tokens: list[str], default: int, allow_all: bool = False) -> int | None:
        """`k=N` or `N` (or `all` where allowed: None); `default` when absent."""
        if not tokens:
            return default
        text = tokens[0].lower().removeprefix("k=")
        if len(tokens) > 1 or not (text.isdigit() and int(text) > 0 or allow_all and text == "all"):
            raise UsageError(f"expected k=N with N >= 1{' or all' if allow_all else ''}, got {' '.join(tokens)[:60]!r}")
        return None if text == "all" else int(text)

    def _items(self, tokens: list[str], quoted: bool) -> list[int]:
        """Item indices: each token when titles were quoted or every token is an item id; else the
        whole rest of the line is one title (so `rate 42 Heat (1995)` needs no quotes)."""
        if not tokens:
            raise UsageError("which item? give an item id or a title")
        if quoted or all(t in self.titles.ids for t in tokens):
            return [self.titles.resolve(t) for t in tokens]
        return [self.titles.resolve(" ".join(tokens))]

    def _title(self, item_id: str) -> str:
        return self.ds.items[self.ds.item_index[item_id]].title

    # ---- answers (plain dicts: rendered as a table or as JSON) --------------------------------
    def _recommend_answer(self, user: str | None, k: int) -> dict:
        if user is None:
            top = self.rec.recommend_for_history(self.me, k=k)
            known = len(self.me)
        else:
            top = self.rec.recommend(user, k=k)[0]
            known = len(self.rec.split.user_sequence(self.ds.user_index[user]))
        rows = [{"item": i, "score": s, "title": self._title(i)} for i, s in top]
        if rows:
            self.last = (user, rows[0]["item"])
        return {"answer": "recommend", "user": user, "liked": None if user else list(self.me), "known": known,
                "k": k, "items": rows}

    def _pair_answer(self, task: str, user: str | None, items: list[int]) -> dict:
        ids = [self.ds.items[j].id for j in items]
        if task == "rate":
            values = self.rec.rate(user, ids) if user else self.rec.rate_for_history(self.me, ids)
        else:
            values = self.rec.prefer(user, ids) if user else self.rec.prefer_for_history(self.me, ids)
        key = "rating" if task == "rate" else "p_like"
        rows = [{"item": i, key: v, "title": self._title(i)} for i, v in zip(ids, values)]
        return {"answer": task, "user": user, "items": rows}

    def _explain_answer(self, user: str | None, item: str) -> dict:
        from mtrec.inference import NewUser

        if user is None and not self.me:
            raise ChatError("no new user 'me' any more (forgotten): say which titles you liked first")
        e = self.rec.explain(user if user is not None else NewUser(self.me), item, k=3)
        rows = [{"item": c.item, "change": c.change, "share": c.share, "source": c.source, "friend": c.friend,
                 "title": c.title} for c in e.contributions]
        return {"answer": "explain", "user": user, "item": e.item, "title": e.title, "score": e.score,
                "prior_part": e.prior_part, "lm_part": e.lm_part, "shown": e.shown, "items": rows,
                "sentence": e.sentence}

    def _categories_answer(self, user: str | None) -> dict:
        if not self.ds.categories:
            raise ChatError(f"data set {self.ds.name!r} has no item categories")
        cats = self.rec.categories(user)[0] if user else self.rec.categories_for_history(self.me)
        return {"answer": "categories", "user": user, "categories": [{"category": c, "p": p} for c, p in cats]}

    def _history_answer(self, user: str | None, limit: int | None) -> dict:
        if user is None:
            entries = [(i, None, None) for i in self.me]
        else:
            entries = self.rec.history(user)
        key = "rating" if self.ds.explicit else "weight"
        rows = [{"item": i, key: v, "time": t, "title": self._title(i)} for i, v, t in entries[:limit]]
        return {"answer": "history", "user": user, "total": len(entries), "items": rows}

    def _free_text(self, line: str) -> dict | None:
        """Route a question by its words; None when it names neither a user nor a known title."""
        found = K_PATTERN.search(line)
        k = int(found.group(1) or found.group(2)) if found else 10
        mention = USER_PATTERN.search(line)
        if mention is None:
            items, notes = self.titles.find_in_text(line)
            if not items:
                return None
            self.me = [self.ds.items[j].id for j in items]  # the new user of this question
            return {**self._recommend_answer(None, max(k, 1)), "notes": notes}
        user, _ = self._user([mention.group(1).rstrip(".")])
        rest = line[: mention.start()] + " " + line[mention.end() :]
        items, notes = self.titles.find_in_text(rest)
        words = set(WORD.findall(rest.lower()))
        if items and (words & RATE_WORDS or not words & LIKE_WORDS and self.ds.explicit):
            result = self._pair_answer("rate", user, items)
        elif items:
            result = self._pair_answer("prefer", user, items)
        elif words & CATEGORY_WORDS and self.ds.categories:
            result = self._categories_answer(user)
        elif words & HISTORY_WORDS:
            result = self._history_answer(user, 20)
        else:
            result = self._recommend_answer(user, max(k, 1))
        return {**result, "notes": notes}

    # ---- rendering ----------------------------------------------------------------------------
    def _render(self, r: dict) -> str:
        if self.fmt == "json":
            return json.dumps(r, ensure_ascii=False)
        if r["answer"] == "message":
            return r["text"]
        lines = [f"note: {n}" for n in r.get("notes", ())] + [self._headline(r)]
        rows = r["categories"] if r["answer"] == "categories" else r["items"]
        after = [r["sentence"]] if r["answer"] == "explain" else []
        if not rows:
            return "\n".join(lines + ["  (none)"] + after)
        columns = self._columns(r)
        cells = [[fmt(row, n) for _, fmt in columns] for n, row in enumerate(rows, 1)]
        return "\n".join(lines + table([h for h, _ in columns], cells) + after)

    def _who(self, user: str | None) -> str:
        return f"user {user}" if user is not None else "the new user 'me'"

    def _headline(self, r: dict) -> str:
        who, kind = self._who(r["user"]), r["answer"]
        if kind == "recommend" and r["user"] is None:
            liked = "; ".join(self._title(i) for i in r["liked"][:5]) + (" ..." if len(r["liked"]) > 5 else "")
            return f"top {r['k']} for a new user who liked {liked} (named items excluded):"
        if kind == "recommend":
            return f"top {r['k']} for {who} ({r['known']} known interactions; seen items excluded):"
        if kind == "friends":
            return f"top {r['k']} people for {who} to befriend ({r['known']} current friends excluded):"
        if kind == "rate":
            lo, hi = self.ds.rating_scale or (float("nan"), float("nan"))
            return f"predicted ratings for {who} (scale {lo:g} to {hi:g}):"
        if kind == "prefer":
            return f"P(like) for {who}:"
        if kind == "explain":
            return (f"why {self.titles.describe(self.ds.item_index[r['item']])} for {who}: score {r['score']:.4f} = "
                    f"prior {r['prior_part']:.4f} + prompt {r['lm_part']:+.4f}; of the {r['shown']} items shown, "
                    "those whose removal lowers it most:")
        if kind == "categories":
            return f"categories {who} prefers (probabilities over {len(self.ds.categories)}):"
        shown = len(r["items"])
        more = f", showing the newest {shown} (history {r['user'] or 'me'} all)" if shown < r["total"] else ""
        return f"{who}: {r['total']} known items, newest first{more}:"

    def _columns(self, r: dict) -> list[tuple[str, object]]:
        """(header, cell function) per column; the free-text column (title, category) comes last so
        that every line splits into fixed fields plus the rest."""
        rank = ("#", lambda row, n: str(n))
        item = ("item", lambda row, n: row["item"])
        title = ("title", lambda row, n: _clip(row["title"], 80))
        kind = r["answer"]
        if kind == "recommend":
            return [rank, item, ("score", lambda row, n: f"{row['score']:.4f}"), title]
        if kind == "friends":
            return [rank, ("score", lambda row, n: f"{row['score']:.4f}"), ("user", lambda row, n: row["friend"])]
        if kind == "rate":
            return [item, ("rating", lambda row, n: f"{row['rating']:.4f}"), title]
        if kind == "prefer":
            return [item, ("P(like)", lambda row, n: f"{row['p_like']:.4f}"), title]
        if kind == "categories":
            return [rank, ("p", lambda row, n: f"{row['p']:.4f}"), ("category", lambda row, n: row["category"])]
        if kind == "explain":
            return [rank, ("change", lambda row, n: f"{row['change']:+.4f}"),
                    ("share", lambda row, n: f"{100 * row['share']:.0f}"), ("source", lambda row, n: row["source"]),
                    ("friend", lambda row, n: row["friend"] or "-"), item, title]
        key = "rating" if self.ds.explicit else "weight"
        value = (key, lambda row, n: "-" if row[key] is None else f"{row[key]:g}")
        columns = [rank, item, value]
        if self.ds.timed and r["user"] is not None:
            columns.append(("date", lambda row, n: _date(row["time"])))
        return columns + [title]


def _date(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Aligned lines, two-space indent: numbers right-aligned, the last column left as it is."""
    widths = [max(len(h), *(len(row[c]) for row in rows)) for c, h in enumerate(headers)]
    numeric = [all(_is_number(row[c]) for row in rows) for c in range(len(headers))]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells[:-1], widths, numeric)]
        return ("  " + "  ".join(padded + [cells[-1]])).rstrip()

    return [line(headers)] + [line(row) for row in rows]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "-"
    return True


def run_chat(rec, stdin=None, stdout=None, prompt: bool = True) -> int:
    """The session loop: read a line, print its answer, until quit/exit/EOF. Returns 0.

    The prompt is written before each line, through a pipe too, so that a script can split the
    output on it; `prompt=False` leaves it out. Ctrl-C abandons the current line or answer.
    """
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    session, ds = ChatSession(rec), rec.dataset
    print(f"mtrec chat: {rec.run_dir} ({ds.name}: {ds.num_users} users, {ds.num_items} items). "
          "Type help for commands, quit to leave.", file=stdout, flush=True)
    interactive = stdin is sys.stdin and stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    while not session.finished:
        try:
            line = _read_line(stdin, stdout, PROMPT if prompt else "", interactive)
            if line is None:  # EOF
                print(file=stdout)
                break
            answer = session.handle(line)
        except KeyboardInterrupt:
            answer = "(interrupted)"
        if answer:
            print(answer, file=stdout, flush=True)
    return 0


def _read_line(stdin, stdout, prompt: str, interactive: bool) -> str | None:
    """One line without its newline, or None at EOF. A giant line is read in bounded pieces and
    cut: only its length matters (it is refused)."""
    if interactive:
        try:
            return input(prompt)
        except EOFError:
            return None
    stdout.write(prompt)
    stdout.flush()
    limit = 16 * MAX_LINE
    line = stdin.readline(limit)
    if not line:
        return None
    if len(line) == limit and not line.endswith("\n"):
        while (more := stdin.readline(limit)) and not more.endswith("\n"):
            pass  # drop the rest of the line
    return line.rstrip("\r\n")
