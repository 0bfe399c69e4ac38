"""Friend recommendation (`friends` task kind, `mtrec.data.friends`, `mtrec.bench.friends`): the
hold-out leaks nowhere (no training row, prompt or prior holds a held-out pair in either direction),
the graph baselines score what a hand count gives, the head trains and its prior is exactly the
fitted factor model, and `recommend_friends` leaves out the user and their friends."""

import numpy as np
import pytest
import torch

from mtrec.data import RecDataset, User, Item
from mtrec.data.friends import MIN_EDGES, friend_seen, hold_out_friends
from mtrec.data.splits import TEST, TRAIN, VALID
from mtrec.kinds import Kind


def _graph(edges, num_users=6) -> RecDataset:
    """A tiny data set: each user rated item 0 and item u % 3 + 1; `edges` as given (directed)."""
    users = [User(str(u)) for u in range(num_users)]
    items = [Item(str(i), f"Item {i}") for i in range(4)]
    ui = [(u, 0) for u in range(num_users)] + [(u, u % 3 + 1) for u in range(num_users)]
    src, dst = zip(*edges) if edges else ((), ())
    return RecDataset("g", users, items, [u for u, _ in ui], [i for _, i in ui], np.full(len(ui), 4.0), None,
                      explicit=True, social_src=np.array(src), social_dst=np.array(dst), rating_scale=(1.0, 5.0))


def _pairs(ds):
    return set(zip(ds.social_src.tolist(), ds.social_dst.tolist()))


def test_hold_out_removes_both_directions_and_is_seeded():
    edges = [(0, 1), (1, 0), (0, 2), (2, 0), (0, 3), (3, 0), (1, 2), (2, 1), (4, 5)]  # 4 -> 5 only one way
    ds = _graph(edges)
    out, held = hold_out_friends(ds, seed=0)
    assert held.valid[:, 0].tolist() == held.test[:, 0].tolist() == [0]  # only user 0 has >= 3 friends
    assert MIN_EDGES == 3
    (u, a), (_, b) = held.valid[0], held.test[0]
    assert a != b and {a, b} <= {1, 2, 3}
    left = _pairs(out)
    for v in (a, b):
        assert (u, v) not in left and (v, u) not in left
    assert left == _pairs(ds) - {(u, a), (a, u), (u, b), (b, u)}
    again = hold_out_friends(ds, seed=0)[1]
    assert np.array_equal(again.test, held.test) and np.array_equal(again.valid, held.valid)
    assert _pairs(ds) == set(edges)  # the input data set is untouched
    assert out.notes["friend_holdout"] == {"seed": 0, "users": 1, "edges_removed": 4}


@pytest.fixture(scope="module")
def friend_setup(tiny_backbone_dir):
    from mtrec.config import load_config
    from tests_paths import ROOT
    from mtrec.training import build_setup, load_split

    cfg = load_config(ROOT / "tests/configs/tiny.yaml", [f"model.backbone={tiny_backbone_dir}",
                                                         "train.tasks=[recommendation,friends]"])
    split = load_split(cfg)
    return cfg, split, build_setup(cfg, split=split)


def test_leakage_held_out_pairs_appear_in_no_row_prompt_or_prior(friend_setup):
    from mtrec.data import load_dataset
    from mtrec.model.collaborative import fit_friends
    from mtrec.pipeline import train_specs

    cfg, split, s = friend_setup
    held = split.friends
    assert held is not None and held.num_users >= 10
    gone = {tuple(p) for p in np.concatenate([held.valid, held.test]).tolist()}
    gone |= {(b, a) for a, b in gone}
    full = load_dataset("synthetic", None, **cfg.data.options)
    assert gone <= _pairs(full)  # they were edges ...
    assert not gone & _pairs(split.dataset)  # ... and the run's graph has none of them
    ds = split.dataset
    specs = train_specs(split, s.kinds, s.example_options)["friends"]
    rows = {(int(ds.user_idx[i]), int(t)) for i, t in zip(specs.interaction, specs.item)}
    assert len(rows) == len(specs) > 0 and not rows & gone  # no training row
    factory = s.batcher.factory
    for role in (TRAIN, VALID, TEST):  # no prompt of any role shows a held-out friend or their items
        from mtrec.tasks import build_specs
        role_specs = build_specs(split, role, ("friends",), s.example_options)
        for r in range(len(role_specs)):
            ex = factory.make_row(role_specs, r)
            u = ex.user_index
            shown = {ds.user_index[f] for f in ex.friend_ids} | {ds.user_index[e.friend] for e in ex.social}
            assert not {(u, v) for v in shown} & gone
            assert int(role_specs.item[r]) not in shown  # nor the row's own target
    # the prior: the friend head starts from the factor model of the held-out-free graph, exactly
    heads = s.model.base_model.model.heads.modules_to_save["default"]
    clean = fit_friends(ds.social_src, ds.social_dst, ds.num_users, cfg.model.collab_dim, seed=cfg.run.seed)
    leaky = fit_friends(full.social_src, full.social_dst, full.num_users, cfg.model.collab_dim, seed=cfg.run.seed)
    assert torch.equal(heads.friend_bias.detach(), clean["bias"])
    assert torch.equal(heads.friend_src_factors.detach(), clean["R"])
    assert not torch.equal(heads.friend_bias.detach(), leaky["bias"])  # the check can tell them apart


def test_friend_rows_and_batches(friend_setup):
    from mtrec.pipeline import eval_specs

    cfg, split, s = friend_setup
    specs = eval_specs(split, ["friends"], s.example_options, role=TEST)
    assert len(specs) == split.friends.num_users
    batch = s.batcher.collate(specs, np.arange(4), [s.batcher.templates("friends")[0]] * 4)
    assert (batch["kind"] == Kind.FRIENDS).all() and (batch["item"] == -1).all()
    assert batch["friend"].tolist() == split.friends.test[:4, 1].tolist()
    assert batch["user"].tolist() == split.friends.test[:4, 0].tolist()
    assert all("<|friends|>" in s.tokenizer.decode(ids) for ids in batch["input_ids"])


def test_friend_head_is_prior_plus_prompt_and_trains(friend_setup):
    from mtrec.model.multitask import multitask_loss
    from mtrec.pipeline import eval_specs

    cfg, split, s = friend_setup
    specs = eval_specs(split, ["friends"], s.example_options, role=VALID)
    batch = s.batcher.collate(specs, np.arange(8), [s.batcher.templates("friends")[0]] * 8)
    model = s.model
    heads = model.base_model.model.heads.modules_to_save["default"]
    out = model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"], with_prior=True)
    u = batch["user"]
    prior = heads.friend_bias + heads.friend_src_factors[u] @ heads.friend_dst_factors.T
    assert torch.allclose(out["friend_prior"], prior, atol=1e-5)
    lm = out["friend_logits"] - out["friend_prior"]
    assert float(lm.detach().abs().max()) <= float(heads.friend_log_scale.detach().exp()) + 1e-5  # a scaled cosine
    before = {n: p.detach().clone() for n, p in heads.named_parameters()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        o = model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"])
        loss = multitask_loss(o, batch, s.weights, False)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.05
    changed = {n for n, p in heads.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert {"friend_query.weight", "user_table", "friend_bias", "friend_log_scale"} <= changed
    assert "item_table" not in changed  # no recommendation row in the batch: its table gets no gradient


def test_graph_baselines_match_hand_counts():
    from mtrec.bench.friends import GraphScores, per_user, rank_pairs

    # undirected: 0-1, 0-2, 1-2, 2-3, 3-4; 1 -> 4 only one way (counts as a neighbour pair)
    ds = _graph([(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1), (2, 3), (3, 2), (3, 4), (4, 3), (1, 4)], 5)
    g = GraphScores(ds)
    cn = g("common neighbours", np.array([0]))[0]
    # N(0) = {1, 2}; N(3) = {2, 4}: common {2}; N(4) = {1, 3}: common {1}; N(1) = {0, 2, 4}: common {2}
    assert np.floor(cn).tolist() == [2, 1, 1, 1, 1]  # N(0) ∩ N(0) = N(0): the ranking leaves u out anyway
    deg = {0: 2, 1: 3, 2: 3, 3: 2, 4: 2}
    aa = g("adamic-adar", np.array([0]))[0]
    assert aa[3] == pytest.approx(1 / np.log(deg[2]), abs=1e-5) and aa[4] == pytest.approx(1 / np.log(deg[1]), abs=1e-5)
    # in-degree tie-break, in-degree / (max + 1): user 2 has 3 (max), users 3 and 4 have 2 each
    assert cn[2] == pytest.approx(1 + 3 / 4) and cn[3] == cn[4] == pytest.approx(1 + 2 / 4)
    seen = friend_seen(ds, None, "valid")
    ranks = rank_pairs(lambda u: g("common neighbours", u), np.array([[0, 4], [0, 3], [3, 0], [3, 1]]), seen)
    # user 0: 1 and 2 are friends, 0 is the user: 3 and 4 tie, and ties count against the target;
    # user 3 (friends 2, 4): 0 and 1 both share 2 and 1 -> 4 too, so 1 scores 2 + 2/4 against 0's 1 + 2/4
    assert ranks.tolist() == [1, 1, 1, 0]
    m = per_user(np.array([0, 3, 12]))
    assert m["hr@10"].mean() == pytest.approx(2 / 3)
    assert m["ndcg@10"].mean() == pytest.approx((1 + 1 / np.log2(5)) / 3)
    assert m["mrr@10"].mean() == pytest.approx((1 + 1 / 4) / 3)


def test_log_vars_of_older_runs_load():
    from mtrec.kinds import NUM_KINDS
    from mtrec.model.multitask import TaskHeads

    heads = TaskHeads(8, 2, torch.zeros(3, 8), torch.zeros(3), None)
    state = heads.state_dict()
    state["log_vars"] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # four kinds, before friends
    heads.load_state_dict(state)
    assert heads.log_vars.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4] + [0.0] * (NUM_KINDS - 4))


@pytest.fixture(scope="module")
def friends_run(tmp_path_factory, tiny_backbone_dir):
    from mtrec.config import load_config
    from tests_paths import ROOT
    from mtrec.training import train

    cfg = load_config(ROOT / "tests/configs/tiny.yaml", [f"model.backbone={tiny_backbone_dir}",
                                                         "train.tasks=[rating,recommendation,friends]",
                                                         "train.max_steps=4", "train.eval_every=0"])
    run = tmp_path_factory.mktemp("friends-run") / "run"
    train(cfg, run)
    return run


def test_recommend_friends_leaves_out_self_and_friends(friends_run):
    from mtrec.data.friends import friend_lists
    from mtrec.inference import NewUser, Recommender

    rec = Recommender.from_run(friends_run, device="cpu")
    assert rec.split.friends is not None  # the hold-out travels in the catalog
    off, fr = friend_lists(rec.dataset)
    users = [u.id for u in rec.dataset.users[:6]]
    got = rec.recommend_friends(users, k=rec.dataset.num_users)
    for uid, top in zip(users, got):
        u = rec.user_index(uid)
        mine = {rec.dataset.users[f].id for f in fr[off[u] : off[u + 1]]}
        ids = [v for v, _ in top]
        assert uid not in ids and not mine & set(ids)
        assert len(ids) == rec.dataset.num_users - 1 - len(mine)
        assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    with_friends = rec.recommend_friends(users[0], k=rec.dataset.num_users, exclude_friends=False)[0]
    assert users[0] not in [v for v, _ in with_friends]
    assert len(rec.recommend_friends(NewUser(("1", "2")), k=3)[0]) == 3


def test_recommend_friends_needs_the_task(tiny_run):
    from mtrec.inference import Recommender

    rec = Recommender.from_run(tiny_run, device="cpu")
    with pytest.raises(ValueError, match="not trained with the friends task"):
        rec.recommend_friends("1")


def test_bench_scores_a_run_against_the_baselines(friends_run):
    from mtrec.bench.friends import run_bench
    from mtrec.data import load_dataset

    ds = load_dataset("synthetic", None, num_users=30, num_items=40)
    out = run_bench(ds, [friends_run], users=500, resamples=50)
    assert out["sample_users"] == out["eligible_users"]  # fewer than 500: all of them
    r = out["runs"][str(friends_run)]
    assert set(r["metrics"]) == {"hr@10", "ndcg@10", "mrr@10"} and 0 <= r["metrics"]["ndcg@10"] <= 1
    iv = out["intervals"][f"{friends_run} - its prior alone"]["ndcg@10"]
    assert iv["low"] <= iv["diff"] <= iv["high"] and iv["n"] == out["sample_users"]


def test_http_friends_route(friends_run):
    pytest.importorskip("fastapi")
    from serve.serve_helpers import running

    from mtrec.inference import Recommender
    from mtrec.serve import Served, Settings, create_app

    served = Served.load(friends_run, device="cpu")
    with running(create_app(friends_run, Settings(max_wait_ms=20), loader=lambda path: served)) as client:
        status, got = client.post("/friends", {"user": "3", "k": 4})
        assert status == 200 and got["user"] == "3"
        want = served.rec.recommend_friends("3", k=4)[0]
        assert [p["user"] for p in got["friends"]] == [v for v, _ in want]
        assert [p["score"] for p in got["friends"]] == pytest.approx([x for _, x in want], abs=1e-5)
        status, got = client.post("/friends", {"user": "nobody"})
        assert status == 404 and got["field"] == "user"
        status, got = client.post("/friends", {"history": ["1"], "k": 2})
        assert status == 200 and got["user"] is None and len(got["friends"]) == 2
    assert isinstance(served.rec, Recommender)


def test_chat_and_batch_cli_friends(friends_run, tmp_path):
    import json
    import subprocess
    import sys

    from mtrec.chat import ChatSession
    from mtrec.inference import Recommender

    rec = Recommender.from_run(friends_run, device="cpu")
    chat = ChatSession(rec, fmt="json")
    got = json.loads(chat.handle("friends 3 k=3"))
    assert got["answer"] == "friends" and [p["friend"] for p in got["items"]] == [v for v, _ in rec.recommend_friends("3", k=3)[0]]
    assert "top 3 people for user 3" in ChatSession(rec).handle("friends user 3 k=3")
    out = tmp_path / "f.csv"
    from tests_paths import ROOT
    r = subprocess.run([sys.executable, str(ROOT / "infer.py"), "--run", str(friends_run), "--task", "friends", "3", "4",
                        "-k", "2", "--out", str(out), "--no-progress", "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "user,rank,friend,score" and [l.split(",")[:2] for l in lines[1:]] == [["3", "1"], ["3", "2"], ["4", "1"], ["4", "2"]]
