"""The HTTP server on a tiny run folder, over real sockets (uvicorn in a thread): answers equal the
`Recommender`'s, concurrent requests are batched, every bad request gets a 4xx naming its field
(a table and a fuzz), overload answers 503, reload swaps runs under load without a failed request."""

import shutil
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from serve_helpers import Client, running

from mtrec.inference import Recommender
from mtrec.serve import Served, Settings, create_app

TOKEN = "test-token"


@pytest.fixture(scope="module")
def served(run_dir):
    return Served.load(run_dir, device="cpu")


@pytest.fixture(scope="module")
def server(run_dir, served):
    """One server for the module: batching on (20 ms window), admin token set; the model loads once."""
    app = create_app(
        run_dir,
        Settings(max_wait_ms=20, admin_token=TOKEN, max_body=4096),
        loader=lambda path: served if path == run_dir else Served.load(path, device="cpu"),
    )
    with running(app) as client:
        yield client


def test_answers_equal_the_recommenders(server: Client, served):
    rec: Recommender = served.rec
    status, top = server.post("/recommend", {"user": "3", "k": 5})
    assert status == 200
    assert [(e["item"], round(e["score"], 5)) for e in top["items"]] == [
        (i, round(v, 5)) for i, v in rec.recommend("3", 5)[0]
    ]
    items = [e["item"] for e in top["items"]]
    assert server.post("/rate", {"user": 3, "items": items})[1]["ratings"][0]["rating"] == pytest.approx(
        rec.rate("3", items)[0], abs=1e-5
    )
    p = server.post("/prefer", {"user": "3", "items": items})[1]["preferences"]
    assert [e["p_like"] for e in p] == pytest.approx(rec.prefer("3", items), abs=1e-5)
    cats = server.post("/categories", {"user": "3", "k": 2})[1]["categories"]
    assert [(c["category"], round(c["p"], 5)) for c in cats] == [
        (c, round(v, 5)) for c, v in rec.categories("3", 2)[0]
    ]
    # a new user: titles and ids name the same items; the named items are left out
    title = rec.dataset.items[rec.dataset.item_index["5"]].title
    status, cold = server.post("/recommend_for_history", {"history": [title, "13"], "k": 4})
    assert status == 200 and cold["user"] is None
    assert [e["item"] for e in cold["items"]] == [i for i, _ in rec.recommend_for_history(["5", "13"], k=4)]
    assert server.post("/rate", {"history": ["5", "13"], "items": ["7"]})[1]["ratings"][0][
        "rating"
    ] == pytest.approx(rec.rate_for_history(["5", "13"], "7")[0], abs=1e-5)
    status, hist = server.get("/users/3/history?limit=2")
    assert status == 200 and [e["item"] for e in hist["items"]] == [i for i, _, _ in rec.history("3")[:2]]
    status, item = server.get("/items/5")
    assert (
        status == 200
        and item["title"] == title
        and item["interactions"] == int(served.interactions[rec.dataset.item_index["5"]])
    )


def test_concurrent_requests_share_a_model_call(server: Client, served):
    users = [u.id for u in served.rec.dataset.users[:16]]
    before = server.get("/health")[1]["batching"]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda u: server.post("/recommend", {"user": u, "k": 3}), users))
    after = server.get("/health")[1]["batching"]
    calls, requests = after["batches"] - before["batches"], after["requests"] - before["requests"]
    assert requests == 16 and calls < 16 and after["largest_batch"] > 1
    alone = served.rec.recommend(users, k=3)
    for (status, body), u, want in zip(answers, users, alone):  # each caller gets its own answer
        assert status == 200 and body["user"] == u
        assert [e["item"] for e in body["items"]] == [i for i, _ in want]


BAD = [  # (path, body, status, field): body None = nothing sent; bytes are sent as they are
    ("/recommend", {"user": "nobody"}, 404, "user"),
    ("/recommend", {"user": "3", "k": 0}, 422, "k"),
    ("/recommend", {"user": "3", "k": 101}, 422, "k"),
    ("/recommend", {"user": "3", "k": "ten"}, 422, "k"),
    ("/recommend", {"user": True}, 422, "user"),
    ("/recommend", {"user": "3", "kk": 2}, 422, "kk"),
    ("/recommend", {"k": 2}, 422, "user"),
    ("/recommend", [1, 2], 422, "body"),
    ("/recommend", b'{"user": "3",', 422, "body"),
    ("/recommend", b"\xff\xfe{", 400, "body"),
    ("/recommend", None, 422, "body"),
    ("/recommend", b"[" * 3000, 400, "body"),  # nested past the JSON parser's recursion limit
    ("/recommend", {"user": "x" * 5000}, 413, "body"),
    ("/rate", {"user": "3", "items": ["5", "no-such-item"]}, 404, "items.1"),
    ("/rate", {"user": "3", "items": []}, 422, "items"),
    ("/rate", {"user": "3", "history": ["5"], "items": ["5"]}, 422, "body"),
    ("/prefer", {"items": ["5"]}, 422, "body"),
    ("/prefer", {"history": ["5", "no title like this"], "items": ["5"]}, 404, "history.1"),
    ("/categories", {"user": "3", "k": -1}, 422, "k"),
    ("/recommend_for_history", {"history": []}, 422, "history"),
    ("/recommend_for_history", {"history": ["  "]}, 422, "history.0"),
    ("/admin/reload", {"run": "/no/such/run"}, 401, "X-Admin-Token"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), BAD, ids=[f"{p}-{s}-{f}" for p, _, s, f in BAD])
def test_bad_requests_get_a_4xx_naming_the_field(server: Client, path, body, status, field):
    got, answer = server.post(path, body)
    assert (got, answer.get("field")) == (status, field), answer
    assert answer["error"]


def test_wrong_methods_paths_and_content_types(server: Client):
    assert server.get("/recommend")[0] == 405
    assert server.get("/nowhere") == (404, {"error": "Not Found", "field": None})
    assert server.get("/items/nope")[1]["field"] == "item_id"
    assert server.get("/users/nope/history")[0] == 404
    assert server.get("/users?limit=0")[1]["field"] == "limit"
    status, answer = server.post("/recommend", b'{"user": "3"}', content_type="text/plain")
    assert status == 422 and "application/json" in answer["error"]


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "user": JSON | st.sampled_from(["3", "1", 7]),
        "k": JSON,
        "items": JSON | st.just(["5", "7"]),
        "history": JSON | st.just(["5"]),
        "run": JSON,
    },
)
PATHS = st.sampled_from(
    ["/recommend", "/recommend_for_history", "/rate", "/prefer", "/categories", "/admin/reload"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=PATHS, body=FIELDS | JSON | st.binary(max_size=64))
def test_fuzzed_bodies_never_get_a_5xx(server: Client, path, body):
    status, answer = server.post(path, body, headers={"X-Admin-Token": "wrong"})
    assert status == 200 or 400 <= status < 500, (status, answer)
    if status != 200:
        assert isinstance(answer.get("error"), str) and answer["error"]


URL_TEXT = st.text(max_size=40).map(lambda t: urllib.parse.quote(t, safe=""))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["item", "history", "users"]), text=URL_TEXT, number=st.integers() | URL_TEXT)
@example(which="item", text="0%2F", number=0)  # was a 307 redirect to /items/0 (CI, stop 21)
@example(which="history", text="1%2F", number=0)
def test_fuzzed_lookups_never_get_a_5xx(server: Client, which, text, number):
    path = {
        "item": f"/items/{text}",
        "history": f"/users/{text}/history?limit={number}",
        "users": f"/users?offset={number}&limit={text}",
    }[which]
    status, answer = server.get(path)
    assert status == 200 or 400 <= status < 500, (path, status, answer)
    if status != 200:
        assert isinstance(answer.get("error"), str) and answer["error"]


def test_the_server_kept_count_and_never_failed(server: Client):
    health = server.get("/health")[1]  # after the table and the fuzz (this module's order)
    assert health["status"] == "ok" and health["server_errors"] == 0 and health["client_errors"] > len(BAD)


def test_overload_answers_503_counted_apart(run_dir, served):
    app = create_app(run_dir, Settings(timeout_s=1e-4, max_wait_ms=50), loader=lambda path: served)
    with running(app) as client:
        status, answer, headers = client.request("POST", "/recommend", {"user": "3"})
        assert status == 503 and headers.get("retry-after") == "1" and "retry" in answer["error"]
        health = client.get("/health")[1]
        assert (health["overloaded"], health["server_errors"]) == (1, 0)


def test_reload_under_load_fails_no_request(server: Client, run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    stop, failures, answered = threading.Event(), [], []

    def load() -> None:
        n = 0
        while not stop.is_set():
            status, body = server.post("/recommend", {"user": str(1 + n % 30), "k": 3})
            (answered if status == 200 and len(body["items"]) == 3 else failures).append((status, body))
            n += 1

    assert server.post("/admin/reload", {"run": str(copy)}, headers={"X-Admin-Token": "nope"})[0] == 401
    with ThreadPoolExecutor(6) as pool:
        workers = [pool.submit(load) for _ in range(6)]
        time.sleep(0.5)
        for run in (copy, run_dir):
            status, body = server.post("/admin/reload", {"run": str(run)}, headers={"X-Admin-Token": TOKEN})
            assert status == 200 and body["run"] == str(run), body
        assert server.get("/health")[1]["run"] == str(run_dir)
        status, body = server.post(
            "/admin/reload", {"run": str(tmp_path / "none")}, headers={"X-Admin-Token": TOKEN}
        )
        assert (status, body["field"]) == (422, "run")  # the old run keeps serving
        time.sleep(0.3)
        stop.set()
        [w.result() for w in workers]
    assert failures == [] and len(answered) > 20
    assert server.get("/health")[1]["reloads"] >= 2


def test_admin_is_off_without_a_token(run_dir, served):
    with running(create_app(run_dir, Settings(), loader=lambda path: served)) as client:
        status, body = client.post("/admin/reload", {"run": str(run_dir)}, headers={"X-Admin-Token": ""})
        assert status == 404 and "--admin-token" in body["error"]


def test_openapi_names_every_endpoint(server: Client):
    status, spec = server.get("/openapi.json")
    assert status == 200
    assert {
        "/recommend",
        "/rate",
        "/prefer",
        "/categories",
        "/recommend_for_history",
        "/items/{item_id}",
        "/users/{user_id}/history",
        "/health",
        "/admin/reload",
    } <= set(spec["paths"])
    assert server.get_text("/docs")[0] == 200


def test_command_line_refuses_bad_arguments(capsys, tmp_path):
    from mtrec.serve.__main__ import main, parser

    assert parser().parse_args(["--run", "x"]).host == "127.0.0.1"
    assert main(["--run", str(tmp_path), "--max-batch", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --max-batch 0")
    assert main(["--run", str(tmp_path / "missing"), "--device", "cpu"]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--port", "80"])  # no --run
    assert e.value.code == 2
