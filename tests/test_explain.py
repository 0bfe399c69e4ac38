"""Explanations (`Recommender.explain`): the score changes are the real ones (the prompt re-scored by
hand without that entry), the score splits exactly into the priors' and the language model's parts,
new users work, bad input gets the errors the other methods give; the sentence templates load from
the run folder or fall back to the shipped file; the chat and `infer.py` answer."""

import csv
import dataclasses
import importlib.util
import json
import shutil

import pytest
import torch
from tests_paths import ROOT

from mtrec.chat import ChatSession
from mtrec.inference import NewUser, Recommender, UnknownIdError
from mtrec.prompts import DEFAULT_PROMPTS_DIR, TemplateError, load_explanation_templates, load_prompts


@pytest.fixture(scope="module")
def rec(tiny_run):
    return Recommender.from_run(tiny_run, device="cpu")


def _user_with_cut_and_friends(rec) -> str:
    """A user whose prompt shows friends' items and had history cut by the token budget."""
    for u in rec.dataset.users:
        ex = rec.factory.make_now("recommendation", rec.user_index(u.id))
        r = rec.renderer.render(ex, rec._template(ex))
        if r.history_cut and r.social_shown:
            return u.id
    pytest.skip("no user of the tiny run has both a cut history and friends shown")


def _score_by_hand(rec, example, item: int) -> float:
    """One unbatched, unpadded forward pass of `example`: the target column of its item scores."""
    rendered = rec.renderer.render(example, rec._template(example))
    ids = torch.tensor([rendered.input_ids])
    with torch.no_grad():
        out = rec.model(ids, torch.ones_like(ids), None, torch.tensor([-1]), torch.tensor([example.user_index]))
    return float(out["item_logits"][0, item])


def test_changes_are_the_real_occlusions(rec):
    user = _user_with_cut_and_friends(rec)
    ds = rec.dataset
    item = rec.recommend(user, k=1)[0][0][0]
    j = ds.item_index[item]
    e = rec.explain(user, item, k=100)
    example = rec.factory.make_now("recommendation", rec.user_index(user))
    shown = rec.renderer.render(example, rec._template(example))
    assert (e.history_shown, e.social_shown) == (shown.history_shown, shown.social_shown)
    assert e.shown == len(e.contributions) == shown.history_shown + shown.social_shown  # cut entries: no credit
    history, social = example.history[: shown.history_shown], example.social[: shown.social_shown]
    assert e.score == pytest.approx(_score_by_hand(rec, example, j), abs=1e-5)
    assert e.score == pytest.approx(rec.recommend(user, k=1)[0][0][1], abs=1e-5)
    for c in e.contributions:
        if c.source == "history":
            assert history[c.position].title == c.title and c.friend is None
            edited = dataclasses.replace(example, history=history[: c.position] + history[c.position + 1 :],
                                         social=social)
        else:
            assert social[c.position].title == c.title and social[c.position].friend == c.friend
            edited = dataclasses.replace(example, history=history,
                                         social=social[: c.position] + social[c.position + 1 :])
        assert ds.items[ds.item_index[c.item]].title == c.title
        assert c.change == pytest.approx(e.score - _score_by_hand(rec, edited, j), abs=1e-5)
    changes = [c.change for c in e.contributions]
    assert changes == sorted(changes, reverse=True)
    positive = [c for c in e.contributions if c.change > 0]
    assert e.positive_total == pytest.approx(sum(c.change for c in positive))
    if positive:
        assert sum(c.share for c in positive) == pytest.approx(1.0)
    assert all(c.share == 0.0 for c in e.contributions if c.change <= 0)
    top = rec.explain(user, item, k=2)
    assert top.contributions == e.contributions[:2]


def test_prior_and_lm_parts_add_up(rec):
    user = rec.dataset.users[4].id
    items = [i for i, _ in rec.recommend(user, k=3)[0]] + ["1"]
    heads = rec.model.heads  # the trained heads (the adapter is merged on load)
    u = rec.user_index(user)
    for e in rec.explain_items(user, items):
        assert e.prior_part + e.lm_part == pytest.approx(e.score, abs=1e-6)
        j = rec.item_index(e.item)
        by_hand = float(heads.item_bias[j] + heads.rec_user_factors[u] @ heads.rec_item_factors[j])
        assert e.prior_part == pytest.approx(by_hand, abs=1e-5)
    # one user's items share the occluded prompts: the same as explaining each alone
    alone = rec.explain(user, items[1])
    assert alone.score == pytest.approx(rec.explain_items(user, items)[1].score, abs=1e-5)


def test_a_new_user(rec):
    named = ["3", "12", "7", "30"]
    e = rec.explain(NewUser(named), "5", k=10)
    assert e.user is None and e.social_shown == 0 and e.shown == e.history_shown == len(named)
    assert {c.item for c in e.contributions} == set(named) and all(c.source == "history" for c in e.contributions)
    entries, _ = rec.cold_history(named)
    example = rec._cold_example("recommendation", entries)
    j = rec.item_index("5")
    assert e.score == pytest.approx(_score_by_hand(rec, example, j), abs=1e-5)
    c = e.contributions[0]
    edited = dataclasses.replace(example, history=entries[: c.position] + entries[c.position + 1 :])
    assert c.change == pytest.approx(e.score - _score_by_hand(rec, edited, j), abs=1e-5)
    assert e.score == pytest.approx(dict(rec.recommend_for_history(named, k=40))["5"], abs=1e-5)
    assert "the new user" in e.sentence


def test_bad_input_is_refused_as_elsewhere(rec):
    with pytest.raises(UnknownIdError, match=r"unknown item id '999' \(this run knows 40 items\)"):
        rec.explain("1", "999")
    with pytest.raises(UnknownIdError, match=r"unknown user id 'nobody'"):
        rec.explain("nobody", "1")
    with pytest.raises(UnknownIdError, match=r"unknown item id 'x'"):
        rec.explain(NewUser(["x"]), "1")
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        rec.explain("1", "1", k=0)
    with pytest.raises(ValueError, match="2 users and 3 items"):
        rec.explain_pairs(["1", "2"], ["1", "2", "3"])


def test_the_sentence_and_its_templates(rec, tiny_run, tmp_path):
    e = rec.explain("2", "5", k=2)
    assert e.sentence.startswith(f'"{e.title}" scores {e.score:.3f} for user 2: {e.prior_part:.3f} from the collaborative')
    assert "\n" not in e.sentence and e.because.startswith(("because of", "no shown item raises it"))
    for c in e.contributions:
        if c.change > 0:
            assert c.title in e.sentence and f"{c.change:+.3f}" in e.because
    # the run folder carries the file; load_prompts does not mistake it for a task
    assert rec.explanation_templates.path == tiny_run / "prompts" / "explanation.yaml"
    assert sorted(load_prompts(tiny_run / "prompts")) == ["preference", "rating", "recommendation"]
    # a run folder from before explanations: the shipped file
    old = tmp_path / "old-prompts"
    shutil.copytree(tiny_run / "prompts", old)
    (old / "explanation.yaml").unlink()
    assert load_explanation_templates(old).path == DEFAULT_PROMPTS_DIR / "explanation.yaml"
    again = Recommender(rec.run_dir, rec.model, rec.tokenizer, rec.split, load_prompts(old), rec.cfg, rec.device)
    assert again.explain("2", "5", k=2).sentence == e.sentence
    # a run folder's own wording wins
    (old / "explanation.yaml").write_text('sentence: "{{ title }} for {{ who }}: {{ score | fixed }}"\n'
                                          'because: "b {{ contributions | length }}"\n', encoding="utf-8")
    custom = Recommender(rec.run_dir, rec.model, rec.tokenizer, rec.split, load_prompts(old), rec.cfg, rec.device)
    got = custom.explain("2", "5", k=2)
    assert (got.sentence, got.because) == (f"{e.title} for user 2: {e.score:.3f}", "b 2")
    (old / "explanation.yaml").write_text('sentence: "{{ item_index }}"\nbecause: "x"\n', encoding="utf-8")
    with pytest.raises(TemplateError, match=r"sentence uses \['item_index'\]"):
        load_explanation_templates(old)
    (old / "explanation.yaml").write_text('sentence: "{% if %}"\nbecause: "x"\n', encoding="utf-8")
    with pytest.raises(TemplateError, match="sentence: Jinja syntax error"):
        load_explanation_templates(old)
    (old / "explanation.yaml").write_text('sentence: "x"\n', encoding="utf-8")
    with pytest.raises(TemplateError, match="expected a mapping with keys sentence, because"):
        load_explanation_templates(old)


def test_chat_why(rec):
    chat = ChatSession(rec)
    assert chat.handle("why").startswith("error: nothing to explain yet")
    assert chat.handle("why 5 for 4242").startswith("error: unknown user '4242'")
    answer = chat.handle("why 5 for user 2?")
    e = rec.explain("2", "5")
    assert answer.splitlines()[0].startswith(f"why {e.title} [id 5] for user 2: score {e.score:.4f}")
    assert answer.splitlines()[-1] == e.sentence
    top = rec.recommend("3", k=2)[0]
    chat.handle("recommend 3 k=2")
    assert chat.handle("why").splitlines()[-1] == rec.explain("3", top[0][0]).sentence  # the top item
    assert chat.handle(f"why {top[1][0]}").splitlines()[-1] == rec.explain("3", top[1][0]).sentence
    assert chat.handle("why 999 for 3").startswith("error: unknown title '999'")
    chat.handle("like 3 12")
    chat.handle("recommend me k=1")
    chat.handle("format json")
    got = json.loads(chat.handle("why"))
    assert got["answer"] == "explain" and got["user"] is None
    assert {row["item"] for row in got["items"]} <= {"3", "12"}


def _load_infer():
    spec = importlib.util.spec_from_file_location("infer", ROOT / "infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_infer_explain_and_show_user(rec, tiny_run, tmp_path, monkeypatch, capsys):
    infer = _load_infer()
    monkeypatch.setattr(infer.Recommender, "from_run", classmethod(lambda cls, *a, **kw: rec))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n2,5\n3,999\n3,7\n2,9\n", encoding="utf-8")
    out = tmp_path / "why.jsonl"
    argv = ["--run", str(tiny_run), "--device", "cpu", "--no-progress", "--task", "explain"]
    assert infer.main(argv + ["--input", str(pairs), "--out", str(out), "4:1"]) == 0
    assert "pairs.csv:3: unknown item id '999'" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["user"], r["item"]) for r in rows] == [("2", "5"), ("3", "7"), ("2", "9"), ("4", "1")]
    for r in rows:
        e = rec.explain(r["user"], r["item"])  # default -k for explain: 3
        assert r["score"] == pytest.approx(e.score, abs=1e-5) and r["sentence"] == e.sentence
        assert [c["item"] for c in r["contributions"]] == [c.item for c in e.contributions]
    csv_out = tmp_path / "why.csv"
    assert infer.main(argv + ["-k", "2", "2:5", "--out", str(csv_out)]) == 0
    lines = list(csv.DictReader(csv_out.open(encoding="utf-8")))
    assert [int(x["rank"]) for x in lines] == [1, 2] and {x["item"] for x in lines} == {"5"}
    assert infer.main(["--run", str(tiny_run), "--device", "cpu", "--show-user", "3", "-k", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    top = rec.recommend("3", k=3)[0]
    whys = rec.explain_items("3", [i for i, _ in top])
    for e in whys:
        assert f"     {e.because}" in printed
