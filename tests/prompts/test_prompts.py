"""Prompts rendered with the real tokenizer on real data: the token budget holds, targets and labels
never leak, context obeys the rules, odd text is printed literally, held-out paraphrases stay out of
training, broken templates fail at load with a useful message, and rendering is deterministic."""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mtrec.data.splits import TEST, TRAIN, VALID, Split
from mtrec.pipeline import Batcher, Prefetcher, TaskSampler, kinds_for, mixing_probs, train_specs
from mtrec.prompts import (
    DEFAULT_PROMPTS_DIR,
    PromptRenderer,
    PromptTooLongError,
    RenderOptions,
    Template,
    TemplateError,
    load_prompts,
)
from mtrec.kinds import KIND_IDS, KIND_NAMES, KIND_TASK, TASKS
from mtrec.tasks import (
    EXAMPLE_TYPES,
    ExampleFactory,
    ExampleOptions,
    HistoryEntry,
    SocialEntry,
    Specs,
    build_specs,
    template_fields,
)

ALL_KINDS = ("rating", "like", "categories", "recommendation")
TRAIN_SAMPLE = 2_500  # training examples per data set: 5,000 over ML-100K and Last.fm
# A small budget per data set: Last.fm items carry up to ~10 tags, so a like prompt with no history
# needs up to ~125 tokens there (smaller budgets raise PromptTooLongError).
SMALL_BUDGET = {"movielens-100k": 96, "lastfm-2k": 128}
ODD_BUDGET = 96  # hand-made odd examples, where PromptTooLongError is allowed
HIDDEN_VALUES = {"item_index": (5, 6), "interaction": (10, 11), "user_index": (2, 3), "role": ("test", "valid")}


def templates_of(prompts, kind: str) -> list[Template]:
    """Training and held-out paraphrases of `kind`."""
    tp = prompts[KIND_TASK[kind]]
    return tp.train(kind) + tp.heldout(kind)


def all_templates(prompts) -> list[Template]:
    return [t for kind in ALL_KINDS for t in templates_of(prompts, kind)]


def hand_example(kind: str, **fields):
    """A hand-built example of `kind` (no data set behind it); `fields` override the defaults."""
    base = dict(user_id="u7", user={}, history=(), social=(), explicit=True, rating_scale=(1.0, 5.0),
                interaction=0, user_index=0, role="test")
    if kind in ("rating", "like"):
        base |= dict(item_title="Heat (1995)", item_text="", item_categories=(), label=1.0, item_index=0)
    elif kind == "categories":
        base |= dict(label=(0,))
    else:
        base |= dict(label=0)
    return EXAMPLE_TYPES[kind](**{**base, **fields})


def titles(ds, interactions: np.ndarray) -> list[str]:
    return [ds.items[i].title for i in ds.item_idx[interactions]]


def token_id(tokenizer, instruction_tokens, template: Template) -> int:
    return tokenizer.convert_tokens_to_ids(instruction_tokens[template.task])


# ------------------------------------------------------------------------------- the budget
@dataclass
class Corpus:
    """Rendered examples of one data set: row i of `specs` is `examples[i]`, rendered with
    `templates[i]` as `rendered[i]`."""

    split: Split
    specs: Specs
    examples: list
    templates: list[Template]
    rendered: list

    def rows(self, kind: str, roles: tuple[int, ...]) -> np.ndarray:
        keep = (self.specs.kind == KIND_IDS[kind]) & np.isin(self.split.role[self.specs.interaction], roles)
        return np.flatnonzero(keep)


def render_corpus(split: Split, renderer: PromptRenderer, prompts) -> Corpus:
    """Every validation and test example of every kind, plus TRAIN_SAMPLE seeded training examples.
    Row i uses the i-th paraphrase (training and held-out, cyclically) of its kind."""
    kinds = tuple(k for k in ALL_KINDS if k != "rating" or split.dataset.explicit)
    opts = ExampleOptions()
    train = build_specs(split, TRAIN, kinds, opts)
    sample = train.take(np.sort(np.random.default_rng(0).choice(len(train), TRAIN_SAMPLE, replace=False)))
    specs = Specs.concat([build_specs(split, VALID, kinds, opts), build_specs(split, TEST, kinds, opts), sample])
    factory = ExampleFactory(split, opts)
    examples = [factory.make_row(specs, row) for row in range(len(specs))]
    templates = []
    for row in range(len(specs)):
        options = templates_of(prompts, KIND_NAMES[int(specs.kind[row])])
        templates.append(options[row % len(options)])
    rendered = [renderer.render(e, t) for e, t in zip(examples, templates)]
    return Corpus(split, specs, examples, templates, rendered)


@pytest.fixture(scope="session", params=["ml100k", "lastfm"])
def corpus(request, renderer, prompts) -> Corpus:
    return render_corpus(request.getfixturevalue(f"{request.param}_split"), renderer, prompts)


@pytest.mark.slow  # renders ~26k real prompts (see render_corpus)
def test_no_rendered_prompt_exceeds_max_length(corpus, tokenizer, instruction_tokens):
    split, ds = corpus.split, corpus.split.dataset
    assert max(r.num_tokens for r in corpus.rendered) <= 256
    # every user's validation and test target is there, in every kind that names a target
    eval_targets = set(split.valid.tolist()) | set(split.test.tolist())
    for kind in ("rating", "like", "recommendation") if ds.explicit else ("like", "recommendation"):
        assert set(corpus.specs.interaction[corpus.rows(kind, (VALID, TEST))].tolist()) == eval_targets, kind
    assert len(corpus.rows("categories", (VALID, TEST))) > 0.3 * len(eval_targets)
    assert len(corpus.rows("categories", (TRAIN,))) > 0
    assert (split.role[corpus.specs.interaction] == TRAIN).sum() == TRAIN_SAMPLE
    # the budget binds (long histories are cut) yet always leaves room for some history
    assert np.mean([r.history_cut > 0 for r in corpus.rendered]) > 0.5
    assert all(r.history_shown >= 1 for r, e in zip(corpus.rendered, corpus.examples) if e.history)
    for r, e in zip(corpus.rendered, corpus.examples):
        assert r.history_shown + r.history_cut == len(e.history) and r.social_shown + r.social_cut == len(e.social)
    # the ids are the text's tokenisation, framed by the task's instruction token
    for r, t in list(zip(corpus.rendered, corpus.templates))[::97]:
        assert tokenizer(r.text)["input_ids"] == r.input_ids
        assert r.input_ids[0] == r.input_ids[-1] == token_id(tokenizer, instruction_tokens, t)


@pytest.mark.slow  # renders ~26k real prompts (see render_corpus)
def test_small_budget_cuts_and_still_fits(corpus, tokenizer, instruction_tokens):
    budget = SMALL_BUDGET[corpus.split.dataset.name]
    small = PromptRenderer(tokenizer, instruction_tokens, RenderOptions(max_length=budget))
    rows = range(0, len(corpus.examples), 40)
    results = [small.render(corpus.examples[i], corpus.templates[i]) for i in rows]
    assert max(r.num_tokens for r in results) <= budget
    assert np.mean([r.history_cut > 0 for r in results]) > 0.9
    if corpus.split.dataset.num_social_edges:
        assert sum(r.social_cut > 0 for r in results) > 0.3 * len(results)


# ------------------------------------------------------------------------- no target leakage
@pytest.mark.slow  # renders ~26k real prompts (see render_corpus)
def test_recommendation_target_is_never_in_own_history(corpus):
    split, ds = corpus.split, corpus.split.dataset
    pairs = ds.user_idx.astype(np.int64) * ds.num_items + ds.item_idx
    assert len(np.unique(pairs)) == ds.num_interactions  # no repeats, so the target item cannot be in the past
    rows = corpus.rows("recommendation", (TRAIN, VALID, TEST))
    assert len(rows) > len(split.valid)
    for row in rows:
        example, target = corpus.examples[row], int(corpus.specs.interaction[row])
        past = split.history(target)
        assert example.label == ds.item_idx[target]
        assert example.label not in ds.item_idx[past]
        # the example's history is exactly those interactions, newest first (indices, not titles)
        assert [h.title for h in example.history] == titles(ds, past[::-1][: ExampleOptions().max_history])
        assert example.candidates == ()


def test_candidates_never_mark_the_target(renderer, prompts):
    candidates = ("Alien (1979)", "Heat (1995)", "Fargo (1996)")
    for template in templates_of(prompts, "recommendation"):
        as_target = renderer.render(hand_example("recommendation", candidates=candidates, label=1), template)
        as_other = renderer.render(hand_example("recommendation", candidates=candidates, label=2), template)
        assert "Alien (1979); Heat (1995); Fargo (1996)" in as_target.text
        assert as_target.input_ids == as_other.input_ids


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_hidden_fields_never_reach_a_template(kind, renderer, prompts):
    assert "label" not in template_fields(kind)
    hidden = {f.name for f in dataclasses.fields(EXAMPLE_TYPES[kind]) if f.metadata.get("hidden")}
    assert hidden & template_fields(kind) == set() and "label" in hidden
    history = (HistoryEntry("Alien (1979)", 4.0),)
    first = {n: v[0] for n, v in HIDDEN_VALUES.items() if n in hidden}
    second = {n: v[1] for n, v in HIDDEN_VALUES.items() if n in hidden}
    labels = {"categories": ((0, 3), (1,)), "recommendation": (1, 2)}.get(kind, (3.7, 1.0))
    first["label"], second["label"] = labels
    for template in templates_of(prompts, kind):
        a = renderer.render(hand_example(kind, history=history, **first), template)
        b = renderer.render(hand_example(kind, history=history, **second), template)
        assert a.input_ids == b.input_ids, template.id


@pytest.mark.parametrize("kind", ["rating", "like"])
def test_target_is_named_but_its_label_never_shown(kind, renderer, prompts):
    example = hand_example(kind, item_title="Heat (1995)", label=3.7, history=())
    for template in templates_of(prompts, kind):
        text = renderer.render(example, template).text
        assert '"Heat (1995)"' in text, template.id
        assert "3.7" not in text and "3,7" not in text, template.id


# ---------------------------------------------------------------------------- context rules
@pytest.mark.parametrize("split_name", ["ml100k_split", "lastfm_split", "synthetic_split"])
def test_context_obeys_the_rules(split_name, request, renderer, prompts):
    split = request.getfixturevalue(split_name)
    ds, factory = split.dataset, ExampleFactory(split)
    context, opts = factory.context, factory.opts
    rng = np.random.default_rng(1)
    pools = [np.flatnonzero(split.role == r) for r in (TRAIN, VALID, TEST)]
    targets = np.concatenate([rng.choice(pool, min(100, len(pool)), replace=False) for pool in pools])
    templates = templates_of(prompts, "like")
    social_shown = time_cut = 0
    for n, t in enumerate(targets.tolist()):
        user, role = ds.user_idx[t], split.role[t]
        own = context.own_history(t)
        assert (ds.user_idx[own] == user).all()
        assert len(own) == split.position[t] and (split.position[own] < split.position[t]).all()
        assert (np.diff(split.position[own]) < 0).all()  # newest first
        assert set(split.role[own].tolist()) <= ({TRAIN, VALID} if role == TEST else {TRAIN})
        # social: exactly the friends' training interactions, strictly earlier when timed
        friends_train = np.concatenate(
            [context.friend_train_interactions(int(f), None) for f in context.friends(user)] or [[]]
        ).astype(np.int64)
        allowed = friends_train[ds.timestamps[friends_train] < ds.timestamps[t]] if ds.timed else friends_train
        time_cut += len(friends_train) - len(allowed)
        social = context.social(t)
        assert sorted(social.tolist()) == sorted(allowed.tolist())
        assert (split.role[social] == TRAIN).all() and np.isin(ds.user_idx[social], context.friends(user)).all()
        # the example shows those indices (newest first, cut to the configured counts)
        example = factory.make("like", t, int(ds.item_idx[t]), 1.0)
        assert [h.title for h in example.history] == titles(ds, own[: opts.max_history])
        assert [s.title for s in example.social] == titles(ds, social[: opts.max_social])
        assert [s.friend for s in example.social] == [ds.users[u].id for u in ds.user_idx[social[: opts.max_social]]]
        # the rendered prompt shows the newest entries: rendering only the shown prefix is identical
        template = templates[n % len(templates)]
        r = renderer.render(example, template)
        shown = dataclasses.replace(example, history=example.history[: r.history_shown],
                                    social=example.social[: r.social_shown])
        assert renderer.render(shown, template).input_ids == r.input_ids
        social_shown += r.social_shown
    if ds.num_social_edges:
        assert social_shown > 0
    if ds.num_social_edges and ds.timed:
        assert time_cut > 0  # the time rule actually removed friends' later interactions


# --------------------------------------------------------------------------- odd text (hypothesis)
NASTY = [
    "{{ 7*7 }}", "{% for x in y %}", "{#", "#}", "{% raw %}", "}}", "<|rating|>", "<|preference|>",
    "<|recommendation|>", "<|im_start|>", "<|endoftext|>", "<|rating", "|>", "\u202eevil RTL", "שלום עולם",
    "مرحبا بالعالم", "🎬👨‍👩‍👧🏳️‍🌈", "e\u0301\u0301\u0301", "\x00", "\r\n", "   ", "",
]
odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(NASTY),
    st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=6)), max_size=6).map("".join),
    # thousands of characters
    st.tuples(st.text(min_size=1, max_size=12), st.integers(200, 600)).map(lambda p: p[0] * p[1]),
)
ratings = st.sampled_from([1.0, 2.5, 5.0])
history_entries = st.builds(HistoryEntry, title=odd_text, rating=ratings, weight=ratings,
                            categories=st.lists(odd_text, max_size=3).map(tuple))
social_entries = st.builds(SocialEntry, friend=odd_text, title=odd_text, rating=ratings, weight=ratings)


@st.composite
def odd_examples(draw):
    kind = draw(st.sampled_from(ALL_KINDS))
    fields = dict(
        user_id=draw(odd_text),
        user=draw(st.dictionaries(odd_text, odd_text, max_size=3)),
        history=tuple(draw(st.lists(history_entries, max_size=60))),
        social=tuple(draw(st.lists(social_entries, max_size=25))),
        explicit=draw(st.booleans()),
    )
    if kind in ("rating", "like"):
        fields |= dict(item_title=draw(odd_text), item_text=draw(odd_text),
                       item_categories=tuple(draw(st.lists(odd_text, max_size=4))))
    if kind == "recommendation":
        fields["candidates"] = tuple(draw(st.lists(odd_text, max_size=8)))
    return hand_example(kind, **fields)


@pytest.fixture(scope="session")
def renderers(tokenizer, instruction_tokens, renderer) -> dict[int, PromptRenderer]:
    small = PromptRenderer(tokenizer, instruction_tokens, RenderOptions(max_length=ODD_BUDGET))
    return {256: renderer, ODD_BUDGET: small}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(example=odd_examples(), pick=st.integers(0, 6), max_length=st.sampled_from([256, ODD_BUDGET]))
def test_odd_text_is_rendered_literally_and_within_budget(
    example, pick, max_length, renderers, prompts, tokenizer, instruction_tokens
):
    kind = next(k for k, cls in EXAMPLE_TYPES.items() if type(example) is cls)
    options = templates_of(prompts, kind)
    template = options[pick % len(options)]
    renderer = renderers[max_length]
    try:
        r = renderer.render(example, template)
    except PromptTooLongError as e:  # the one documented failure: the fixed part alone is over budget
        assert template.id in str(e) and f"max_length={max_length}" in str(e)
        event("too long even when empty")
        return
    event(f"history cut: {r.history_cut > 0}, social cut: {r.social_cut > 0}")
    assert r.num_tokens <= max_length
    task_id = token_id(tokenizer, instruction_tokens, template)
    specials = set(tokenizer.all_special_ids)
    assert r.input_ids[0] == r.input_ids[-1] == task_id
    assert [i for i in r.input_ids if i in specials] == [task_id, task_id]  # data never becomes a special token
    assert r.history_shown + r.history_cut == len(example.history)
    assert r.social_shown + r.social_cut == len(example.social)
    clean = renderer.clean(example)  # capped to the per-field token limits, special tokens defused
    if kind in ("rating", "like"):
        assert f'"{clean.item_title}"' in r.text
    for h in clean.history[: r.history_shown]:
        assert h.title.rstrip() in r.text  # rstrip: the body is stripped, a last entry loses trailing space
    for s in clean.social[: r.social_shown]:
        assert s.title.rstrip() in r.text


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_jinja_in_data_is_printed_not_run(kind, renderer, prompts):
    history = (HistoryEntry("{% for x in y %}", 4.0), HistoryEntry("{# not a comment", 2.0))
    fields = dict(item_title="{{ 7*7 }}") if kind in ("rating", "like") else dict(user_id="{{ 7*7 }}")
    for template in templates_of(prompts, kind):
        text = renderer.render(hand_example(kind, history=history, **fields), template).text
        assert "{{ 7*7 }}" in text and "49" not in text, template.id
        assert "{% for x in y %}" in text and "{# not a comment" in text, template.id


def test_user_id_and_attributes_are_shown_verbatim(renderer, prompts):
    fields = dict(user_id="AbC-9", user={"gender": "M", "occupation": "Doctor"})
    altered = []
    for kind in ALL_KINDS:
        for template in templates_of(prompts, kind):
            text = renderer.render(hand_example(kind, **fields), template).text
            if "AbC-9" not in text or "gender M, occupation Doctor" not in text:
                altered.append(template.id)
    assert altered == []


def test_instruction_token_spelled_in_a_title_stays_text(renderer, prompts, tokenizer, instruction_tokens):
    example = hand_example("rating", item_title="<|rating|> Reloaded", history=(HistoryEntry("<|rating|>", 5.0),))
    for template in templates_of(prompts, "rating"):
        r = renderer.render(example, template)
        task_id = token_id(tokenizer, instruction_tokens, template)
        assert r.input_ids.count(task_id) == 2 and r.input_ids[0] == r.input_ids[-1] == task_id
        assert r.text.replace("\u200b", "").count("<|rating|>") == 4  # frame x2 + the two titles, still readable


# ------------------------------------------------------------------------ held-out paraphrases
def test_paraphrase_sets(prompts):
    for kind in ALL_KINDS:
        tp = prompts[KIND_TASK[kind]]
        train, heldout = {t.id for t in tp.train(kind)}, {t.id for t in tp.heldout(kind)}
        assert len(train) >= 5 and len(heldout) >= 2, kind
        assert train.isdisjoint(heldout), kind
        assert not any(t.heldout for t in tp.train(kind)) and all(t.heldout for t in tp.heldout(kind))


class RecordingBatcher(Batcher):
    """The real Batcher's template choice; collate only records which paraphrases were drawn."""

    def __init__(self, prompts):
        super().__init__(factory=None, renderer=None, prompts=prompts, pad_id=0, num_categories=0)
        self.drawn: Counter[str] = Counter()

    def collate(self, specs, rows, templates, plain=None):
        self.drawn.update(t.id for t in templates)
        return {}


def test_heldout_paraphrases_never_reach_training_batches(synthetic_split, prompts, renderer, tokenizer):
    kinds = kinds_for(list(TASKS), synthetic_split)
    specs = train_specs(synthetic_split, kinds, ExampleOptions())
    probs = mixing_probs({k: len(v) for k, v in specs.items()}, "proportional", 1.0)
    heldout = {t.id for k in ALL_KINDS for t in prompts[KIND_TASK[k]].heldout(k)}
    train = {t.id for k in kinds for t in prompts[KIND_TASK[k]].train(k)}
    recorder = RecordingBatcher(prompts)
    sampler = TaskSampler(specs, probs, recorder, batch_size=32, seed=0)
    for step in range(300):
        sampler.batch(step)
    assert sum(recorder.drawn.values()) == 300 * 32
    assert set(recorder.drawn) == train  # every training paraphrase drawn, no held-out one
    # the real collate reports the same
    batcher = Batcher(ExampleFactory(synthetic_split), renderer, prompts, tokenizer.pad_token_id or 0,
                      len(synthetic_split.dataset.categories))
    real = TaskSampler(specs, probs, batcher, batch_size=16, seed=0)
    drawn = [i for step in range(4) for i in real.batch(step)["template_ids"]]
    assert len(drawn) == 64 and set(drawn) <= train and not set(drawn) & heldout


def _padding(batches) -> float:
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return 1 - real / sum(b["attention_mask"].numel() for b in batches)


def test_length_buckets_cut_padding_and_keep_draws_pure(ml100k_split, prompts, renderer, tokenizer):
    kinds = kinds_for(list(TASKS), ml100k_split)
    specs = train_specs(ml100k_split, kinds, ExampleOptions(max_history=15))
    probs = mixing_probs({k: len(v) for k, v in specs.items()}, "temperature", 2.0)
    batcher = Batcher(ExampleFactory(ml100k_split, ExampleOptions(max_history=15)), renderer, prompts,
                      tokenizer.pad_token_id or 0, len(ml100k_split.dataset.categories))
    plain = TaskSampler(specs, probs, batcher, batch_size=8, seed=0)
    bucketed = TaskSampler(specs, probs, batcher, batch_size=8, seed=0, buckets=8)
    random_batches = [plain.batch(step) for step in range(16)]
    grouped = [bucketed.batch(step) for step in range(16)]
    assert _padding(grouped) < 0.5 * _padding(random_batches)
    # the 8 batches of a group are the group's draws, each once: same rows, only regrouped
    group = [int(b["input_ids"].shape[0]) for b in grouped[:8]]
    assert group == [8] * 8
    # a pure function of (seed, step, rank): any call order, any sampler instance
    again = TaskSampler(specs, probs, batcher, batch_size=8, seed=0, buckets=8)
    for step in (13, 2, 9, 2):
        assert torch.equal(again.batch(step)["input_ids"], grouped[step]["input_ids"])
    assert not torch.equal(again.batch(3, rank=1)["input_ids"], grouped[3]["input_ids"])


def test_prefetcher_serves_the_same_batches_in_order(ml100k_split, prompts, renderer, tokenizer):
    kinds = kinds_for(list(TASKS), ml100k_split)
    specs = train_specs(ml100k_split, kinds, ExampleOptions())
    probs = mixing_probs({k: len(v) for k, v in specs.items()}, "proportional", 1.0)
    batcher = Batcher(ExampleFactory(ml100k_split), renderer, prompts, tokenizer.pad_token_id or 0,
                      len(ml100k_split.dataset.categories))
    sampler = TaskSampler(specs, probs, batcher, batch_size=4, seed=1, buckets=4)
    direct = [sampler.batch(d)["input_ids"] for d in range(6)]
    fetch = Prefetcher(lambda d: TaskSampler(specs, probs, batcher, 4, 1, 4).batch(d))
    try:
        got = [fetch.get(d)["input_ids"] for d in (0, 1, 2, 5, 3, 4)]  # a jump, then back
    finally:
        fetch.close()
    for d, ids in zip((0, 1, 2, 5, 3, 4), got):
        assert torch.equal(ids, direct[d])


# ---------------------------------------------------------------------------- template errors
def _break(tmp_path, task: str, edit) -> str:
    """Copy the shipped prompts to tmp_path, apply `edit` to `task`'s YAML, return that file's path."""
    for f in DEFAULT_PROMPTS_DIR.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    path = tmp_path / f"{task}.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    edit(doc)
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return str(path)


def _append(kind: str, index: int, text: str):
    def edit(doc):
        doc["kinds"][kind]["train"][index]["text"] += text
    return edit


def _replace(kind: str, index: int, text: str):
    def edit(doc):
        doc["kinds"][kind]["train"][index]["text"] = text
    return edit


def _macro_leak(doc):
    doc["macros"] += "\n{% macro leak() %}{{ item_index }}{% endmacro %}"
    doc["kinds"]["rating"]["train"][3]["text"] += "{{ leak() }}"


@pytest.mark.parametrize("task, edit, named", [
    ("rating", _append("rating", 0, " {{ favourite_colour }}"), ["'rating-1'", "'favourite_colour'"]),
    ("preference", _append("like", 1, "{{ label }}"), ["'like-2'", "'label'"]),
    ("rating", _macro_leak, ["'rating-4'", "'item_index'"]),
    ("rating", _replace("rating", 1, "How would {{ user_id }} rate it?"), ["'rating-2'", "'item_title'"]),
    ("recommendation", _append("recommendation", 2, "{% for h in history %}"), ["'recommendation-3'", "syntax"]),
], ids=["unknown-field", "hidden-field", "hidden-field-via-macro", "missing-item-title", "jinja-syntax"])
def test_template_errors_name_file_paraphrase_and_field(tmp_path, task, edit, named):
    path = _break(tmp_path, task, edit)
    with pytest.raises(TemplateError) as info:
        load_prompts(tmp_path)
    message = str(info.value)
    assert path in message
    for name in named:
        assert name in message


def test_shipped_prompts_survive_the_copy(tmp_path):
    """The YAML round trip in `_break` alone breaks nothing (so the errors above come from the edits)."""
    _break(tmp_path, "rating", lambda doc: None)
    copied, shipped = load_prompts(tmp_path), load_prompts()
    assert {t.id: t.source for t in all_templates(copied)} == {t.id: t.source for t in all_templates(shipped)}


# ------------------------------------------------------------------------------- determinism
def test_rendering_is_deterministic_and_reports_cuts(lastfm_split, prompts, tokenizer, instruction_tokens,
                                                     renderer):
    factory = ExampleFactory(lastfm_split)
    specs = build_specs(lastfm_split, TEST, ("like", "categories", "recommendation"), factory.opts)
    fresh = PromptRenderer(tokenizer, instruction_tokens)  # empty caches
    cut = 0
    for row in range(0, len(specs), len(specs) // 20):
        example = factory.make_row(specs, row)
        template = templates_of(prompts, KIND_NAMES[int(specs.kind[row])])[row % 7]
        first = renderer.render(example, template)
        assert first == renderer.render(example, template) == fresh.render(example, template)
        assert first.history_cut == len(example.history) - first.history_shown
        assert first.social_cut == len(example.social) - first.social_shown
        cut += first.history_cut + first.social_cut
    assert cut > 0


# ------------------------------------------------------------------------------ command line
def test_preview_command_prints_prompts_with_their_cuts(capsys):
    from mtrec.prompts.__main__ import main

    assert main(["preview", "--dataset", "synthetic", "--task", "preference", "-n", "2", "--max-length", "96"]) == 0
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if line.startswith("=== ")]
    assert len(headers) == 4 and sum("template like-" in h for h in headers) == 2  # both kinds, n each
    counts = [re.search(r"· (\d+)/96 tokens · history (\d+) shown, (\d+) cut · social (\d+) shown", h) for h in headers]
    assert all(m and int(m[1]) <= 96 for m in counts)
    assert sum(int(m[3]) for m in counts) > 0  # synthetic histories (15-40 items) do not fit 96 tokens
    assert out.count("<|preference|>") == 8


def test_preview_command_rejects_unknown_names(capsys):
    from mtrec.prompts.__main__ import main

    assert main(["preview", "--dataset", "movielens-9m", "--task", "rating"]) == 2  # the registry says no
    err = capsys.readouterr().err
    assert err.startswith("error: unknown data set 'movielens-9m'") and err.count("\n") == 1
    assert "movielens-1m" in err and "local:<folder>" in err
    with pytest.raises(SystemExit):
        main(["preview", "--dataset", "synthetic", "--task", "ranking"])
    assert "invalid choice: 'ranking'" in capsys.readouterr().err
