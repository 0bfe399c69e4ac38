"""The chat session: forgiving titles, commands and free text, one-line errors that never end the
session, and `infer.py --chat` driven through a pipe."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from mtrec.chat import MAX_LINE, PROMPT, ChatError, ChatSession, TitleIndex, run_chat, title_key
from mtrec.data.records import Item
from mtrec.inference import Recommender
from tests_paths import ROOT

TITLES = ["Toy Story (1995)", "Heat (1995)", "Heat (1972)", "Usual Suspects, The (1995)", "Seven (Se7en) (1995)",
          "Postino, Il (1994)", "Schindler's List (1993)", "Next (2007)", "Die Hard (1988)", "Chasing Amy (1997)",
          "Chasing Amy (1997)", "City of Lost Children, The (1995)", "Amélie (2001)"]
POPULARITY = np.array([50, 40, 2, 30, 20, 5, 25, 1, 15, 9, 3, 4, 6])


@pytest.fixture(scope="module")
def titles():
    return TitleIndex([Item(str(n), t) for n, t in enumerate(TITLES, 1)], POPULARITY)


@pytest.mark.parametrize("query, item_id", [
    ("toy story", "1"), ("TOY STORY (1995)", "1"), ("The Usual Suspects", "4"), ("usual suspects!", "4"),
    ("Se7en", "5"), ("Il Postino", "6"), ("schindlers list", "7"), ("Schindler\u2019s List", "7"), ("Amelie", "13"),
    ("heat (1972)", "3"), ("2", "2"), ("'Die Hard'", "9"), ("city of lost children", "12"),
])
def test_titles_resolve_forgivingly(titles, query, item_id):
    assert titles.items[titles.resolve(query)].id == item_id


def test_ambiguous_and_unknown_titles_get_suggestions(titles):
    with pytest.raises(ChatError, match=r"'Heat' matches 2 items: Heat \(1995\) \[id 2\]; Heat \(1972\) \[id 3\]; "
                                        r"add the year or use the item id"):
        titles.resolve("Heat")
    with pytest.raises(ChatError, match=r"Chasing Amy \(1997\) \[id 10\]; Chasing Amy \(1997\) \[id 11\]"):
        titles.resolve("chasing amy")
    with pytest.raises(ChatError, match=r"unknown title 'Toy Stroy'; did you mean: Toy Story \(1995\) \[id 1\]"):
        titles.resolve("Toy Stroy")
    with pytest.raises(ChatError, match=r"unknown title 'Heat \(1999\)'; did you mean: Heat \(1995\)"):
        titles.resolve("Heat (1999)")
    assert title_key("Usual Suspects, The (1995)") == (("usual", "suspects"), "1995")


def test_titles_found_in_free_text(titles):
    found, notes = titles.find_in_text("I loved Toy Story and Heat, what next?")
    assert [titles.items[j].id for j in found] == ["1", "2"]  # Heat: the more popular one, said so
    assert notes == ["'Heat' could be 2 items; took Heat (1995) [id 2]"]
    assert titles.find_in_text("what next? and then?") == ([], [])  # no film called "Next" here
    found, notes = titles.find_in_text('I liked "Il Postino", die hard and Heat (1972)')
    assert [titles.items[j].id for j in found] == ["6", "9", "3"] and notes == []
    with pytest.raises(ChatError, match="unknown title 'Nope'"):
        titles.find_in_text('I loved "Nope"')


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The session's tiny run folder (see tests/conftest.py)."""
    return tiny_run


@pytest.fixture(scope="module")
def rec(run_dir):
    return Recommender.from_run(run_dir, device="cpu")


def _rows(answer: str, fields: int) -> list[list[str]]:
    return [line.split(None, fields) for line in answer.splitlines()[2:]]


def test_bad_lines_answer_in_one_line(rec):
    chat = ChatSession(rec)
    cases = {
        "recommend 999": "error: unknown user '999' (this run knows 30 users, ids 1 ... 30)",
        'rate 1 "Heat (1995)"': "error: unknown title 'Heat (1995)'",
        "x" * 10_000: f"error: line too long (10000 characters; the limit is {MAX_LINE})",
        'rate 1 "Item 5': "error: unbalanced quotes (No closing quotation)",
        "recommend 1 k=zero": "error: expected k=N with N >= 1, got 'k=zero'",
        "rate 1": "error: which item?",
        "format yaml": "error: format 'yaml': expected table or json",
        "blah blah": "error: not a command, and no known title or 'user ID' in 'blah blah'",
        "prefer me": "error: no new user 'me' yet",
    }
    for line, error in cases.items():
        answer = chat.handle(line)
        assert answer.startswith(error) and "\n" not in answer, (line[:40], answer)
    assert chat.handle("") == "" and chat.handle("   ") == ""
    assert not chat.finished


def test_internal_errors_do_not_end_the_session(rec, monkeypatch):
    chat = ChatSession(rec)

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(rec, "recommend", broken)
    assert chat.handle("recommend 1") == "error: internal error (RuntimeError: boom second line)"
    monkeypatch.undo()
    assert chat.handle("recommend 1 k=2").startswith("top 2 for user 1")


def test_commands_and_free_text_agree_with_the_api(rec):
    chat = ChatSession(rec)
    ds = rec.dataset
    want = [(i, f"{s:.4f}") for i, s in rec.recommend("2", k=4)[0]]
    for line in ("recommend 2 k=4", "recommend user 2 4", "recommend 4 items for user 2", "top 4 for user 2 please"):
        assert [(r[1], r[2]) for r in _rows(chat.handle(line), 3)] == want, line
    title = ds.items[ds.item_index["7"]].title  # "Item 7: a rock record"
    rating = f"{rec.rate('2', '7')[0]:.4f}"
    for line in (f"rate 2 {title}", f'rate 2 "{title.upper()}"', "rate 2 7", f"how would user 2 rate {title}?"):
        assert [(r[0], r[1]) for r in _rows(chat.handle(line), 2)] == [("7", rating)], line
    p_like = f"{rec.prefer('2', '7')[0]:.4f}"
    assert [(r[0], r[1]) for r in _rows(chat.handle(f"would user 2 like {title}?"), 2)] == [("7", p_like)]
    history = chat.handle("history 2 k=3")
    assert history.startswith(f"user 2: {len(rec.history('2'))} known items, newest first, showing the newest 3")
    assert [r[1] for r in _rows(history, 4)] == [i for i, _, _ in rec.history("2")[:3]]


def test_cold_start_from_free_text_then_me(rec):
    chat = ChatSession(rec)
    ds = rec.dataset
    a, b = ds.items[ds.item_index["5"]].title, ds.items[ds.item_index["13"]].title
    answer = chat.handle(f"I loved {a} and {b}, what next? top 6")
    assert answer.splitlines()[0] == f"top 6 for a new user who liked {a}; {b} (named items excluded):"
    want = rec.recommend_for_history(["5", "13"], k=6)
    assert [(r[1], r[2]) for r in _rows(answer, 3)] == [(i, f"{s:.4f}") for i, s in want]
    assert not {"5", "13"} & {r[1] for r in _rows(answer, 3)}
    assert chat.me == ["5", "13"]
    rating = rec.rate_for_history(["5", "13"], "7")[0]
    assert _rows(chat.handle("rate me 7"), 2)[0][:2] == ["7", f"{rating:.4f}"]
    assert chat.handle("like 8").startswith("new user 'me' liked (newest first): Item 8")
    assert chat.me == ["8", "5", "13"]
    top = [(r[1], r[2]) for r in _rows(chat.handle("recommend me k=3"), 3)]
    assert top == [(i, f"{s:.4f}") for i, s in rec.recommend_for_history(["8", "5", "13"], k=3)]


def test_json_format_is_one_object_per_answer(rec):
    chat = ChatSession(rec)
    assert "json" in chat.handle("format json")
    answer = json.loads(chat.handle("recommend 1 k=3"))
    assert [(e["item"], e["score"]) for e in answer["items"]] == rec.recommend("1", k=3)[0]
    assert json.loads(chat.handle("recommend 999")) == {
        "error": "unknown user '999' (this run knows 30 users, ids 1 ... 30)"}


def test_run_chat_ends_cleanly_at_eof(rec):
    out = io.StringIO()
    assert run_chat(rec, io.StringIO("recommend 1 k=1\n\nhelp"), out) == 0
    banner, *answers = out.getvalue().split(PROMPT)
    assert banner.startswith("mtrec chat:") and len(answers) == 4  # three lines, then EOF
    assert answers[0].startswith("top 1 for user 1") and answers[1] == "" and answers[2].startswith("commands")
    assert answers[3] == "\n"


def test_infer_chat_through_a_pipe(run_dir, rec):
    ds = rec.dataset
    a, b = ds.items[ds.item_index["5"]].title, ds.items[ds.item_index["13"]].title
    lines = ["recommend 1 k=3", f'rate 1 "{a}"', "recommend 999", 'rate 1 "Heat (1995)"', "", "y" * 10_000,
             'prefer 1 "Item 5', f"I loved {a} and {b}, what next?", "history 1 k=2", "quit", "recommend 1"]
    done = subprocess.run([sys.executable, str(ROOT / "infer.py"), "--run", str(run_dir), "--chat", "--device", "cpu"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    banner, *answers = done.stdout.split(PROMPT)
    assert banner.startswith(f"mtrec chat: {run_dir} (synthetic: 30 users, 40 items)")
    assert len(answers) == 10  # one per line up to quit; the line after quit is never read
    answers = [s.rstrip("\n") for s in answers]
    top = [(i, f"{s:.4f}") for i, s in rec.recommend("1", k=3)[0]]
    assert [(r[1], r[2]) for r in _rows(answers[0], 3)] == top
    assert _rows(answers[1], 2)[0][:2] == ["5", f"{rec.rate('1', '5')[0]:.4f}"]
    assert answers[2] == "error: unknown user '999' (this run knows 30 users, ids 1 ... 30)"
    assert answers[3].startswith("error: unknown title 'Heat (1995)'") and "\n" not in answers[3]
    assert answers[4] == ""
    assert answers[5] == f"error: line too long (10000 characters; the limit is {MAX_LINE})"
    assert answers[6].startswith("error: unbalanced quotes") and "\n" not in answers[6]
    assert answers[7].startswith(f"top 10 for a new user who liked {a}; {b}")
    assert [r[1] for r in _rows(answers[7], 3)] == [i for i, _ in rec.recommend_for_history(["5", "13"], k=10)]
    assert [r[1] for r in _rows(answers[8], 4)] == [i for i, _, _ in rec.history("1")[:2]]
    assert answers[9] == "bye"
