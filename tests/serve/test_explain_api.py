"""POST /explain on the tiny run: answers equal `Recommender.explain`, concurrent requests go through
the dynamic batcher together, bad bodies get the 4xx naming the field that the other routes give."""

from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import Client, running

from mtrec.serve import Served, Settings, create_app


@pytest.fixture(scope="module")
def served(run_dir):
    return Served.load(run_dir, device="cpu")


@pytest.fixture(scope="module")
def server(run_dir, served):
    app = create_app(run_dir, Settings(max_wait_ms=20), loader=lambda path: served)
    with running(app) as client:
        yield client


def test_explain_answers_equal_the_recommenders(server: Client, served):
    rec = served.rec
    status, got = server.post("/explain", {"user": "3", "item": 5, "k": 2})
    assert status == 200
    e = rec.explain("3", "5", k=2)
    assert got["user"] == "3" and got["item"] == "5" and got["title"] == e.title
    assert got["score"] == pytest.approx(e.score, abs=1e-5)
    assert got["prior_part"] + got["lm_part"] == pytest.approx(got["score"], abs=1e-6)
    assert [(c["item"], c["source"], c["position"]) for c in got["contributions"]] == [
        (c.item, c.source, c.position) for c in e.contributions
    ]
    assert [c["change"] for c in got["contributions"]] == pytest.approx([c.change for c in e.contributions], abs=1e-5)
    assert got["sentence"] == e.sentence and got["shown"] == e.shown
    title = rec.dataset.items[rec.dataset.item_index["12"]].title
    status, cold = server.post("/explain", {"history": [title, "3"], "item": "5"})
    assert status == 200 and cold["user"] is None and cold["social_shown"] == 0
    assert len(cold["contributions"]) == 2  # k defaults to 3; two items were shown
    assert {c["item"] for c in cold["contributions"]} == {"12", "3"}


def test_concurrent_explanations_share_model_calls(server: Client, served):
    pairs = [(u.id, "5") for u in served.rec.dataset.users[:6]]
    before = server.get("/health")[1]["batching"]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda p: server.post("/explain", {"user": p[0], "item": p[1], "k": 1}), pairs))
    after = server.get("/health")[1]["batching"]
    assert after["requests"] - before["requests"] == 6 and after["batches"] - before["batches"] < 6
    for (status, body), (user, item) in zip(answers, pairs):
        assert status == 200 and body["user"] == user
        assert body["score"] == pytest.approx(served.rec.explain(user, item).score, abs=1e-5)


BAD = [
    ({"user": "nobody", "item": "5"}, 404, "user"),
    ({"user": "3", "item": "no-such-item"}, 404, "item"),
    ({"history": ["5", "no title like this"], "item": "5"}, 404, "history.1"),
    ({"user": "3", "item": "5", "k": 0}, 422, "k"),
    ({"user": "3", "item": "5", "k": 101}, 422, "k"),
    ({"user": "3"}, 422, "item"),
    ({"user": "3", "history": ["5"], "item": "5"}, 422, "body"),
    ({"item": "5"}, 422, "body"),
    ({"user": "3", "item": "5", "why": 1}, 422, "why"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD, ids=[f"{s}-{f}" for _, s, f in BAD])
def test_bad_explain_requests_get_a_4xx_naming_the_field(server: Client, body, status, field):
    got, answer = server.post("/explain", body)
    assert (got, answer.get("field")) == (status, field), answer
    assert answer["error"]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=8)
FIELDS = st.fixed_dictionaries({}, optional={"user": JSON | st.sampled_from(["3", 7]), "item": JSON | st.just("5"),
                                             "history": JSON | st.just(["5"]), "k": JSON})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=FIELDS | JSON)
def test_fuzzed_explain_bodies_never_get_a_5xx(server: Client, body):
    status, answer = server.post("/explain", body)
    assert status == 200 or 400 <= status < 500, (status, answer)
