"""Batch inference: the API, `infer.py --task` (run in-process) and the chat give the same answers;
bad input lines are reported as file:line, counted and skipped; top-K never repeats or shows seen
items; the seen-item mask is the same dense or sparse."""

import csv
import importlib.util
import json

import numpy as np
import pytest
import torch

from mtrec.chat import ChatSession
from mtrec.inference import Recommender, check_recommendations
from mtrec.ranking import Seen
from tests_paths import ROOT

K = 5


def _load_infer():
    spec = importlib.util.spec_from_file_location("infer", ROOT / "infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


infer = _load_infer()


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    """The session's tiny run folder (see tests/conftest.py)."""
    return tiny_run


@pytest.fixture(scope="module")
def rec(run_dir):
    return Recommender.from_run(run_dir, device="cpu")


@pytest.fixture
def cached_load(monkeypatch, rec):
    """infer.main without reloading the model each time (the load itself is tested once below)."""
    monkeypatch.setattr(infer.Recommender, "from_run", classmethod(lambda cls, *a, **kw: rec))


def _cli(*argv) -> int:
    return infer.main([str(a) for a in argv] + ["--device", "cpu", "--no-progress"])


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _table_rows(answer: str, fields: int) -> list[list[str]]:
    """The data rows of a chat table: lines after the headline and the column header, split into
    `fields` fixed columns plus the title."""
    return [line.split(None, fields) for line in answer.splitlines()[2:]]


def test_same_answer_through_api_batch_cli_and_chat(run_dir, rec, tmp_path, monkeypatch):
    user = "3"
    api = rec.recommend(user, k=K)[0]
    # the first CLI call loads the run folder itself; the later ones reuse `rec` to save time
    assert _cli("--run", run_dir, "--task", "recommend", user, "-k", K, "--out", tmp_path / "top.jsonl") == 0
    monkeypatch.setattr(infer.Recommender, "from_run", classmethod(lambda cls, *a, **kw: rec))
    [row] = _jsonl(tmp_path / "top.jsonl")
    chat = ChatSession(rec)
    table = _table_rows(chat.handle(f"recommend {user} k={K}"), 3)
    want = [(i, f"{s:.4f}") for i, s in api]
    assert len(want) == K
    assert [(e["item"], f"{e['score']:.4f}") for e in row["items"]] == want
    assert [(r[1], r[2]) for r in table] == want

    items = [i for i, _ in api[:3]]
    for task, method, key in (("rate", rec.rate, "rating"), ("prefer", rec.prefer, "p_like")):
        api_values = [f"{v:.4f}" for v in method(user, items)]
        out = tmp_path / f"{task}.jsonl"
        assert _cli("--run", run_dir, "--task", task, *[f"{user}:{i}" for i in items], "--out", out) == 0
        assert [f"{r[key]:.4f}" for r in _jsonl(out)] == api_values
        quoted = " ".join(f'"{i}"' for i in items)
        rows = _table_rows(chat.handle(f"{task} {user} {quoted}"), 2)
        assert [(r[0], r[1]) for r in rows] == list(zip(items, api_values))

    cats = rec.categories(user, k=3)[0]
    assert _cli("--run", run_dir, "--task", "categories", user, "-k", 3, "--out", tmp_path / "c.jsonl") == 0
    assert [(c["category"], f"{c['p']:.4f}") for c in _jsonl(tmp_path / "c.jsonl")[0]["categories"]] == \
        [(c, f"{p:.4f}") for c, p in cats]
    table = _table_rows(chat.handle(f"prefer {user}"), 2)[:3]
    assert [(r[2], r[1]) for r in table] == [(c, f"{p:.4f}") for c, p in cats]


def test_bad_lines_are_named_counted_and_skipped_csv_in_jsonl_out(cached_load, rec, tmp_path, capsys):
    src = tmp_path / "users.csv"
    src.write_text("user_id,note\n1,ok\n999,unknown\n2\n\n,empty\n4,ok\n", encoding="utf-8")
    out = tmp_path / "recs.jsonl"
    assert _cli("--run", "unused", "--task", "recommend", "--input", src, "-k", 3, "--out", out) == 0
    err = capsys.readouterr().err
    assert f"{src}:3: unknown user id '999'" in err
    assert f"{src}:4: 1 fields, the header has 2" in err
    assert f"{src}:6: empty user id" in err
    assert "recommend: 2 users in" in err and "users/s" in err and "3 rejected" in err
    rows = _jsonl(out)
    assert [r["user"] for r in rows] == ["1", "4"]  # input order, bad lines left out
    assert [[(e["item"], e["score"]) for e in r["items"]] for r in rows] == rec.recommend(["1", "4"], k=3)


def test_jsonl_in_csv_out_for_pairs(cached_load, rec, tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    src.write_text('{"user": "1", "item": "5"}\n{"user": 2, "item_id": "7"}\nnot json\n[1]\n'
                   '{"user": "1", "item": "nope"}\n{"user": true, "item": "3"}\n{"item": "3"}\n'
                   '{"user_id": "3", "item": 9}\n', encoding="utf-8")
    out = tmp_path / "ratings.csv"
    assert _cli("--run", "unused", "--task", "rate", "--input", src, "--out", out) == 0
    err = capsys.readouterr().err
    for line, text in [(3, "not valid JSON"), (4, "expected a JSON object"), (5, "unknown item id 'nope'"),
                       (6, "field 'user' must be a string or an integer id, got true"),
                       (7, "no 'user' or 'user_id' field")]:
        assert f"{src}:{line}: {text}" in err
    assert "rate: 3 rows in" in err and "rows/s" in err and "5 rejected" in err
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["user"], r["item"]) for r in rows] == [("1", "5"), ("2", "7"), ("3", "9")]
    want = rec.rate(["1", "2", "3"], ["5", "7", "9"])
    assert [float(r["rating"]) for r in rows] == pytest.approx(want, abs=1e-6)


def test_csv_out_for_top_k_is_one_line_per_item(cached_load, rec, tmp_path, capsys):
    out = tmp_path / "recs.csv"
    assert _cli("--run", "unused", "--task", "recommend", "1", "2", "nobody", "-k", 2, "--out", out) == 0
    assert "argument 3 ('nobody'): unknown user id 'nobody'" in capsys.readouterr().err
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    want = rec.recommend(["1", "2"], k=2)
    assert rows[0] == ["user", "rank", "item", "score"]
    assert [(u, int(n), i) for u, n, i, _ in rows[1:]] == [(u, n, i) for u, top in zip("12", want)
                                                             for n, (i, _) in enumerate(top, 1)]


def test_unusable_input_exits_2_and_writes_nothing(cached_load, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("id,name\n1,x\n", encoding="utf-8")
    no_valid = tmp_path / "n.jsonl"
    no_valid.write_text('{"user": "999"}\nnope\n', encoding="utf-8")
    pairs_need_items = tmp_path / "p.csv"
    pairs_need_items.write_text("user\n1\n", encoding="utf-8")
    cases = [(["--task", "recommend", "--input", tmp_path / "missing.csv"], "no such file"),
             (["--task", "recommend", "--input", bad_header], "bad header 'id,name'"),
             (["--task", "recommend", "--input", no_valid], "no valid rows to score (2 rejected)"),
             (["--task", "prefer", "--input", pairs_need_items], "and an 'item' or 'item_id' column"),
             (["--task", "recommend"], "give ids, --input FILE or --all-users")]
    for args, message in cases:
        assert _cli("--run", "unused", *args, "--out", out) == 2, message
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_precision_reaches_the_loader_and_int8_off_the_cpu_exits_2(rec, tmp_path, monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(infer.Recommender, "from_run",
                        classmethod(lambda cls, run_dir, device=None, precision=None: asked.append(precision) or rec))
    out = tmp_path / "out.jsonl"
    args = ["--run", "r", "--task", "recommend", "--all-users", "--out", out]
    assert infer.main([str(a) for a in args] + ["--precision", "int8", "--device", "cuda", "--no-progress"]) == 2
    assert "--precision int8: dynamic int8 quantisation runs on the CPU only" in capsys.readouterr().err
    assert not out.exists() and asked == []  # refused before anything loads
    assert _cli(*args, "--precision", "int8") == 0 and _cli(*args, "--precision", "fp32") == 0
    assert asked == ["int8", "fp32"] and len(_jsonl(out)) == rec.dataset.num_users


def test_every_user_gets_k_distinct_unseen_items(cached_load, rec, run_dir, tmp_path, capsys):
    out = tmp_path / "all.jsonl"
    assert _cli("--run", run_dir, "--task", "recommend", "--all-users", "-k", 10, "--out", out) == 0
    rows = _jsonl(out)
    ds = rec.dataset
    assert [r["user"] for r in rows] == [u.id for u in ds.users]
    for r in rows:
        u = ds.user_index[r["user"]]
        seen = {ds.items[i].id for i in ds.item_idx[ds.user_idx == u]}
        items = [e["item"] for e in r["items"]]
        assert len(set(items)) == len(items) == min(10, ds.num_items - len(seen))
        assert not seen & set(items)
    assert check_recommendations(run_dir, out, 10, all_users=True) == (len(rows), [])
    assert _cli("--run", run_dir, "--check", out, "-k", 10, "--all-users") == 0
    # the checker notices a seen item and a missing user
    first = rows[0]
    seen_item = ds.items[int(ds.item_idx[ds.user_idx == ds.user_index[first["user"]]][0])].id
    first["items"][-1]["item"] = seen_item
    out.write_text("\n".join(json.dumps(r) for r in rows[:-1]) + "\n", encoding="utf-8")
    n, problems = check_recommendations(run_dir, out, 10, all_users=True)
    assert any("seen items recommended" in p and f"{out}:1" in p for p in problems)
    assert any("1 users missing" in p for p in problems)
    assert _cli("--run", run_dir, "--check", out, "-k", 10) == 1


def test_include_seen_lets_seen_items_back(rec):
    ds = rec.dataset
    u = int(np.argmax(np.bincount(ds.user_idx)))  # the user with most interactions
    user = ds.users[u].id
    seen = {ds.items[i].id for i in ds.item_idx[ds.user_idx == u]}
    everything = rec.recommend(user, k=ds.num_items, exclude_seen=False)[0]
    unseen = rec.recommend(user, k=ds.num_items)[0]
    assert len(everything) == ds.num_items and {i for i, _ in everything} >= seen
    assert [p for p in everything if p[0] not in seen] == unseen


def test_sparse_seen_mask_equals_dense():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 50, 400), rng.integers(0, 70, 400)
    scores = torch.randn(6, 70)
    batch = torch.tensor([3, 0, 49, 3, 17, 8])
    dense = Seen(users, items, 50, 70, torch.device("cpu"), dense=True)
    sparse = Seen(users, items, 50, 70, torch.device("cpu"), dense=False)
    assert not sparse.dense and not hasattr(sparse, "table")
    a, b = dense.mask_(scores.clone(), batch), sparse.mask_(scores.clone(), batch)
    assert torch.equal(a, b)
    want = np.zeros((50, 70), bool)
    want[users, items] = True
    assert torch.equal(torch.isinf(a), torch.from_numpy(want[batch.numpy()]))


def test_recommend_with_sparse_mask_matches_dense(rec):
    ds = rec.dataset
    users = [u.id for u in ds.users[:7]]
    dense = rec.recommend(users, k=8, batch_size=3)
    rec_sparse = Recommender(rec.run_dir, rec.model, rec.tokenizer, rec.split, rec.prompts, rec.cfg, rec.device)
    rec_sparse.seen = Seen(ds.user_idx, ds.item_idx, ds.num_users, ds.num_items, rec.device, dense=False)
    assert rec_sparse.recommend(users, k=8, batch_size=3) == dense


def test_cold_start_prompt_and_answers(rec):
    ds = rec.dataset
    liked = [ds.items[4].id, ds.items[12].id]
    entries, named = rec.cold_history(liked + [liked[0]])  # a repeat is kept once
    assert named == [4, 12] and [e.title for e in entries] == [ds.items[4].title, ds.items[12].title]
    assert all(e.rating == ds.rating_scale[1] for e in entries)  # named = liked: top of the scale
    example = rec._cold_example("recommendation", entries)
    text = rec.renderer.render(example, rec._template(example)).text
    assert "new user" in text and all(ds.items[j].title in text for j in named)
    top = rec.recommend_for_history(liked, k=ds.num_items)
    assert len(top) == ds.num_items - 2 and not set(liked) & {i for i, _ in top}
    lo, hi = ds.rating_scale
    assert all(lo <= r <= hi for r in rec.rate_for_history(liked, [i for i, _ in top[:3]]))
    assert all(0 <= p <= 1 for p in rec.prefer_for_history(liked, top[0][0]))
    assert sum(p for _, p in rec.categories_for_history(liked)) == pytest.approx(1, abs=1e-5)
    with pytest.raises(KeyError, match="unknown item id 'nope'"):
        rec.recommend_for_history(["nope"])
