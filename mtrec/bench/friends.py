"""`python -m mtrec.bench friends --dataset lastfm-2k [--run RUN ...]`: friend recommendation.

The protocol is `mtrec.data.friends`: per user with >= 3 friends (or trusted users), a seeded
held-out friend for validation and one for test, both removed in both directions from the graph
every row reads. Each test target is ranked among every user, leaving out the user, their remaining
friends and their validation target (ties pessimistic, `mtrec.ranking`); HR@10, NDCG@10, MRR@10.

Rows:
- **baselines**, on every eligible user: in-degree popularity; common neighbours and Adamic–Adar on
  the undirected remaining graph (ties broken by in-degree, then as the protocol says); the
  user-embedding factor model (`mtrec.model.collaborative.fit_friends`: softmax over users of
  ``bias_v + <s_u, d_v>``), its width chosen on validation NDCG@10 among `FACTOR_DIMS`;
- **mtrec runs** (`--run`, each trained with the ``friends`` task on the same data set and split
  seed), on a seeded sample of `--users` eligible users (all where fewer), shared by every row: the
  run (prompt + heads) and its **prior alone** (the friend head's bias and factors, no backbone
  part: exactly the ``friend_prior`` the heads add, `TaskHeads.forward(with_prior=True)`).

Intervals: paired bootstrap over users (1,000 resamples, seeded): the best baseline against each
other baseline on every eligible user; on the sample, each run against its own prior and against
the best baseline on the sample, and every later run against the
first (`--run` order: e.g. multi-task, then friends-only). A difference whose interval holds 0 is
no measurable difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from mtrec import metrics
from mtrec.data.friends import FriendHoldout, friend_seen, hold_out_friends
from mtrec.data.records import RecDataset
from mtrec.ranking import ranks as rank_targets

K = 10
FACTOR_DIMS = (16, 32, 64, 128)
BLOCK = 512  # users scored at once


def per_user(ranks: np.ndarray, k: int = K) -> dict[str, np.ndarray]:
    """Each row's HR@k, NDCG@k and MRR@k from 0-based ranks."""
    r = np.asarray(ranks, np.float64)
    hit = r < k
    return {f"hr@{k}": hit.astype(np.float64), f"ndcg@{k}": metrics.ndcg_rows(r, k).double().numpy(),
            f"mrr@{k}": np.where(hit, 1.0 / (r + 1), 0.0)}


def means(rows: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(v.mean()) for name, v in rows.items()}


def adjacency(ds: RecDataset) -> sp.csr_matrix:
    """The undirected 0/1 adjacency of `ds`'s graph (an edge in either direction counts)."""
    n = ds.num_users
    a = sp.coo_matrix((np.ones(ds.num_social_edges), (ds.social_src, ds.social_dst)), shape=(n, n)).tocsr()
    a = ((a + a.T) > 0).astype(np.float64)
    a.setdiag(0)
    a.eliminate_zeros()
    return a.tocsr()


class GraphScores:
    """Scores of every user for blocks of users, by a named baseline."""

    def __init__(self, ds: RecDataset, factors: dict | None = None) -> None:
        self.a = adjacency(ds)
        indeg = np.bincount(ds.social_dst, minlength=ds.num_users).astype(np.float64)
        # in-degree in (0, 1): breaks the many ties of the neighbourhood counts, never reorders them
        self.tiebreak = indeg / (indeg.max() + 1.0) if len(indeg) else indeg
        degree = np.asarray(self.a.sum(1)).ravel()
        inv_log = np.zeros_like(degree)
        inv_log[degree > 1] = 1.0 / np.log(degree[degree > 1])
        self.a_aa = self.a @ sp.diags(inv_log)
        self.factors = factors

    def __call__(self, name: str, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, np.int64)
        if name == "popularity":
            return np.broadcast_to(self.tiebreak, (len(users), len(self.tiebreak))).copy()
        if name == "common neighbours":
            return (self.a[users] @ self.a).toarray() + self.tiebreak
        if name == "adamic-adar":
            return (self.a_aa[users] @ self.a).toarray() + self.tiebreak * 1e-6
        if name == "factor model":
            return factor_scores(self.factors, users)
        raise ValueError(f"unknown baseline {name!r}")


def factor_scores(fit: dict, users: np.ndarray) -> np.ndarray:
    """``bias_v + <s_u, d_v>`` of the factor model for each of `users` against every user."""
    u = torch.as_tensor(np.asarray(users, np.int64))
    return (fit["R"].index_select(0, u) @ fit["T"].T + fit["bias"]).double().numpy()


BASELINES = ("popularity", "common neighbours", "adamic-adar", "factor model")


def rank_pairs(score_fn, pairs: np.ndarray, seen) -> np.ndarray:
    """0-based rank of each pair's friend among every user for its user, by blocks."""
    out = []
    for a in range(0, len(pairs), BLOCK):
        block = pairs[a : a + BLOCK]
        scores = torch.as_tensor(score_fn(block[:, 0]))
        out.append(rank_targets(scores, torch.as_tensor(block[:, 1]), torch.as_tensor(block[:, 0]), seen).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def fit_factor_model(ds: RecDataset, held: FriendHoldout, seed: int = 0, progress: bool = False) -> tuple[dict, dict]:
    """The factor model at the width with the best validation NDCG@10 (`FACTOR_DIMS`)."""
    from mtrec.model.collaborative import fit_friends

    seen = friend_seen(ds, held, "valid")
    best, report = None, {}
    for dim in FACTOR_DIMS:
        fit = fit_friends(ds.social_src, ds.social_dst, ds.num_users, dim, seed=seed)
        ndcg = float(per_user(rank_pairs(lambda u, f=fit: factor_scores(f, u), held.valid, seen))[f"ndcg@{K}"].mean())
        report[str(dim)] = {"valid_ndcg@10": round(ndcg, 4), "epochs": fit["report"]["epochs"]}
        if progress:
            print(f"friends bench: factor model dim {dim}: validation NDCG@10 {ndcg:.4f}", file=sys.stderr, flush=True)
        if best is None or ndcg > best[0]:
            best = (ndcg, dim, fit)
    report["chosen_dim"] = best[1]
    return best[2], report


def sample_users(held: FriendHoldout, n: int, seed: int = 0) -> np.ndarray:
    """Row indices into the test pairs of a seeded sample of `n` eligible users (all where fewer), sorted."""
    m = len(held.test)
    if n >= m:
        return np.arange(m)
    return np.sort(np.random.default_rng([seed, 500]).choice(m, size=n, replace=False))


def score_run(run: Path, held: FriendHoldout, rows: np.ndarray, batch_size: int = 8, device: str | None = None,
              progress: bool = False) -> dict:
    """A run's ranks of the test targets `held.test[rows]`: with the prompt (the run) and its prior alone."""
    from mtrec.inference import Recommender
    from mtrec.tasks import ExampleFactory, example_options

    rec = Recommender.from_run(run, device=device)
    theirs = rec.split.friends
    if theirs is None or not (np.array_equal(theirs.test, held.test) and np.array_equal(theirs.valid, held.valid)):
        raise ValueError(f"{run}: its friend hold-out is not this bench's (train it with the friends task on "
                         f"the same data set and data.split_seed)")
    if "friends" not in rec.prompts:
        raise ValueError(f"{run}: not trained with the friends task")
    factory = ExampleFactory(rec.split, example_options(rec.cfg))  # the protocol's prompts: training history only
    pairs = held.test[rows]
    seen = friend_seen(rec.dataset, held, "test", rec.device)
    full, prior = [], []
    examples = [factory.make_friends(int(u)) for u in pairs[:, 0]]
    for start, out in rec._batches(examples, batch_size, with_prior=True):
        block = pairs[start : start + len(out["friend_logits"])]
        users, targets = torch.as_tensor(block[:, 0]), torch.as_tensor(block[:, 1])
        full.append(rank_targets(out["friend_logits"].float(), targets, users, seen).numpy())
        prior.append(rank_targets(out["friend_prior"].float(), targets, users, seen).numpy())
        if progress and (start // batch_size) % 20 == 0:
            print(f"friends bench: {run.name}: {start + len(block)}/{len(pairs)} users", file=sys.stderr, flush=True)
    tasks = list(rec.cfg.train.tasks)
    return {"ranks": np.concatenate(full), "prior_ranks": np.concatenate(prior), "tasks": tasks,
            "steps": rec.cfg.train.max_steps, "random_init": rec.cfg.model.random_init}


def run_bench(ds: RecDataset, runs: list[Path], users: int = 500, seed: int = 0, batch_size: int = 8,
              resamples: int = 1000, device: str | None = None, progress: bool = False) -> dict:
    """The whole bench (module docstring) on the loaded data set `ds` (before any hold-out)."""
    start = time.perf_counter()
    graph, held = hold_out_friends(ds, seed)
    if not len(held.test):
        raise ValueError(f"{ds.name}: no user has >= 3 friends, nothing to hold out")
    factors, factor_report = fit_factor_model(graph, held, seed, progress)
    scores = GraphScores(graph, factors)
    seen = friend_seen(graph, held, "test")
    baseline_ranks = {name: rank_pairs(lambda u, n=name: scores(n, u), held.test, seen) for name in BASELINES}
    rows = sample_users(held, users, seed)
    out = {"dataset": ds.name, "protocol": "friends (mtrec.data.friends)", "seed": seed,
           "eligible_users": len(held.test), "edges_left": int(graph.num_social_edges),
           "edges_removed": graph.notes["friend_holdout"]["edges_removed"], "sample_users": len(rows),
           "factor_model": factor_report,
           "baselines": {n: means(per_user(r)) for n, r in baseline_ranks.items()},
           "baselines_on_sample": {n: means(per_user(r[rows])) for n, r in baseline_ranks.items()},
           "runs": {}, "intervals": {}}
    every = {n: per_user(r) for n, r in baseline_ranks.items()}
    top = max(BASELINES, key=lambda n: out["baselines"][n][f"ndcg@{K}"])
    out["best_baseline"] = top
    for n in BASELINES:  # the best baseline against each other one, on every eligible user
        if n != top:
            out["intervals"][f"{top} - {n} (all users)"] = {
                m: metrics.paired_bootstrap(every[top][m], every[n][m], resamples, seed) for m in every[top]}
    best = max(BASELINES, key=lambda n: out["baselines_on_sample"][n][f"ndcg@{K}"])
    out["best_baseline_on_sample"] = best
    sample_base = per_user(baseline_ranks[best][rows])
    first = None
    for run in runs:
        got = score_run(run, held, rows, batch_size, device, progress)
        mine, prior = per_user(got["ranks"]), per_user(got["prior_ranks"])
        name = str(run)
        out["runs"][name] = {"tasks": got["tasks"], "steps": got["steps"], "random_init": got["random_init"],
                             "metrics": means(mine), "prior_alone": means(prior)}
        iv = {f"{name} - its prior alone": {m: metrics.paired_bootstrap(mine[m], prior[m], resamples, seed) for m in mine},
              f"{name} - {best}": {m: metrics.paired_bootstrap(mine[m], sample_base[m], resamples, seed) for m in mine}}
        if first is not None:
            iv[f"{name} - {first[0]}"] = {m: metrics.paired_bootstrap(mine[m], first[1][m], resamples, seed)
                                          for m in mine}
        else:
            first = (name, mine)
        out["intervals"].update(iv)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def markdown(result: dict) -> str:
    """The table and intervals as markdown."""
    m = [f"hr@{K}", f"ndcg@{K}", f"mrr@{K}"]
    lines = [f"### Friend recommendation: {result['dataset']} (test, {result['eligible_users']} users with >= 3 "
             f"friends; held-out pairs removed both ways: {result['edges_removed']} directed edges)", "",
             "| row | users | " + " | ".join(x.upper() for x in m) + " |", "|---|---|" + "---|" * len(m)]
    for n, v in result["baselines"].items():
        lines.append(f"| {n} | all {result['eligible_users']} | " + " | ".join(f"{v[x]:.4f}" for x in m) + " |")
    for n, v in result["baselines_on_sample"].items():
        lines.append(f"| {n} (sample) | {result['sample_users']} | " + " | ".join(f"{v[x]:.4f}" for x in m) + " |")
    for n, r in result["runs"].items():
        label = f"mtrec {'+'.join(r['tasks'])}, {r['steps']} steps{', random-init' if r['random_init'] else ''}"
        lines.append(f"| {label} ({Path(n).name}) | {result['sample_users']} | "
                     + " | ".join(f"{r['metrics'][x]:.4f}" for x in m) + " |")
        lines.append(f"| — its prior alone | {result['sample_users']} | "
                     + " | ".join(f"{r['prior_alone'][x]:.4f}" for x in m) + " |")
    if result["intervals"]:
        lines += ["", "| difference (paired, 95% bootstrap over users) | " + " | ".join(x.upper() for x in m) + " |",
                  "|---|" + "---|" * len(m)]
        for n, v in result["intervals"].items():
            lines.append(f"| {n} | " + " | ".join(f"{v[x]['diff']:+.4f} [{v[x]['low']:+.4f}, {v[x]['high']:+.4f}]"
                                                  for x in m) + " |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mtrec.bench friends", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="a data set with a social graph (lastfm-2k, ciao, epinions)")
    p.add_argument("--data-dir", help="data folder (default $MTREC_DATA_DIR)")
    p.add_argument("--run", type=Path, action="append", default=[], help="a run trained with the friends task (repeatable)")
    p.add_argument("--users", type=int, default=500, help="users in the runs' seeded sample (default 500)")
    p.add_argument("--seed", type=int, default=0, help="the hold-out's (data.split_seed), sample's and bootstrap's seed")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", type=Path, help="write the JSON here (and the markdown beside it)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.users < 1 or args.batch_size < 1 or args.resamples < 1:
        print("error: --users, --batch-size and --resamples must be at least 1", file=sys.stderr)
        return 2
    from mtrec.data import DataError, load_dataset
    from mtrec.run import RunFolderError

    try:
        ds = load_dataset(args.dataset, args.data_dir)
        if not ds.num_social_edges:
            raise ValueError(f"{ds.name} has no social graph: nothing to recommend friends from")
        result = run_bench(ds, args.run, args.users, args.seed, args.batch_size, args.resamples, args.device,
                           progress=True)
    except (DataError, RunFolderError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = markdown(result)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
        print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0
