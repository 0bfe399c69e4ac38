"""`python -m mtrec.bench explain --run RUN --users 200 [--seed 0] --out results/explain-<ds>.json`:
are the occlusion explanations faithful?

For a fixed seeded sample of users whose recommendation prompt shows at least `--min-shown` (6)
history entries, each user's top-1 recommended item (seen items excluded) is the target. Then
`--remove` (3) of the shown history entries are left out of the prompt, chosen four ways:

- **occlusion**: the 3 with the largest score change in `Recommender.explain` (history entries
  only: every method picks from the same pool, and friends' items stay in every variant);
- **random**: 3 drawn uniformly (seeded per user);
- **recent**: the 3 newest;
- **knn**: the 3 most similar to the target by item-kNN cosine on the run's training interactions
  (`mtrec.bench.baselines.ItemKNN`'s similarity code: the binary training matrix and
  `_top_k_similar`, all neighbours kept), ties to the newer entry.

and the prompt is re-scored over the full catalog: the drop in the target's score (full − removed)
and the change in its full-catalog rank (removed − full, 0-based, seen items excluded, ties
pessimistic: `mtrec.ranking.ranks`). A faithful attribution removes what the score rests on, so its
drops should exceed the alternatives'. Reported: each method's means, the paired bootstrap 95%
interval over users of (occlusion − each alternative) for both (`mtrec.metrics.paired_bootstrap`),
and the score's split into the priors' and the language model's parts (the LM share,
|lm| / (|lm| + |prior|) per user, is how much of the score occlusion can reach at all).

Cost: per user 1 + shown entries prompts (explanation) + 5 (the full prompt and the four removals),
about 20 prompts per user on MovieLens-100K (14 history entries shown at the median).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

METHODS = ("occlusion", "random", "recent", "knn")
ALTERNATIVES = METHODS[1:]


class TargetSimilarity:
    """Item-kNN cosine of a target to other items on the training interactions (`ItemKNN`'s code)."""

    def __init__(self, split) -> None:
        from mtrec.bench.baselines import _binary_matrix
        from mtrec.data.splits import TRAIN

        self.X = _binary_matrix(split, split.role == TRAIN)
        self.xt = self.X.T.tocsr()
        self.norms = np.sqrt(np.asarray(self.X.sum(0)).ravel())
        self.num_items = split.dataset.num_items

    def __call__(self, target: int, items) -> np.ndarray:
        """cos(target, item) for each of `items` (0 for no co-occurrence, and for the target itself)."""
        from mtrec.bench.baselines import _top_k_similar

        _, cols, sims = _top_k_similar(self.xt[target : target + 1] @ self.X, self.norms, target, self.num_items)
        sim = dict(zip(cols.tolist(), sims.tolist()))
        return np.array([sim.get(int(j), 0.0) for j in items], dtype=np.float64)


def sample_users(rec, n: int, min_shown: int = 6, seed: int = 0) -> list[str]:
    """Up to `n` user ids in a seeded random order whose recommendation prompt shows at least
    `min_shown` history entries (after the token budget cut)."""
    from mtrec.explain import shown_prompt

    users = rec.dataset.users
    picked = []
    for u in np.random.default_rng(seed).permutation(len(users)).tolist():
        if len(shown_prompt(rec, users[u].id).history_items) >= min_shown:
            picked.append(users[u].id)
            if len(picked) == n:
                break
    return picked


def choose_removals(changes: np.ndarray, sims: np.ndarray, m: int, rng: np.random.Generator) -> dict[str, list[int]]:
    """Positions (0 = newest shown history entry) each method leaves out.

    Args:
        changes: the occlusion score change of each shown history entry.
        sims: each entry's item-kNN similarity to the target.
        m: how many to leave out.
        rng: the random method's generator.
    """
    n = len(changes)

    def by(key: np.ndarray) -> list[int]:  # largest first; ties: the newer entry
        return sorted(range(n), key=lambda i: (-key[i], i))[:m]

    return {
        "occlusion": by(changes),
        "random": sorted(rng.choice(n, size=min(m, n), replace=False).tolist()),
        "recent": list(range(min(m, n))),
        "knn": by(sims),
    }


def bench_users(rec, users: list[str], remove: int = 3, seed: int = 0, batch_size: int = 8,
                similarity: TargetSimilarity | None = None, progress: bool = False) -> list[dict]:
    """One row per user: target, its score split, and per method the positions removed, the score
    and rank after removal, the score drop and the rank change."""
    import torch

    from mtrec.explain import HISTORY, shown_prompt
    from mtrec.ranking import ranks

    similarity = similarity or TargetSimilarity(rec.split)
    ds = rec.dataset
    rows = []
    step = 16
    for a in range(0, len(users), step):
        chunk = users[a : a + step]
        tops = rec.recommend(chunk, k=1, batch_size=batch_size)
        targets = [top[0][0] for top in tops]
        explanations = rec.explain_pairs(chunk, targets, k=10**6, batch_size=batch_size)
        examples, meta = [], []
        for user, target, e in zip(chunk, targets, explanations):
            p = shown_prompt(rec, user)
            n = len(p.history_items)
            changes = np.zeros(n)
            for c in e.contributions:
                if c.source == HISTORY:
                    changes[c.position] = c.change
            j = ds.item_index[target]
            u = ds.user_index[user]
            chosen = choose_removals(changes, similarity(j, p.history_items), remove,
                                     np.random.default_rng([seed, u]))
            examples += [p.shown] + [p.without(history=chosen[m]) for m in METHODS]
            meta.append((user, u, j, e, chosen, p.history_items))
        scores, got = [], []
        for start, out in rec._batches(examples, batch_size, full_catalog=True):
            logits = out["item_logits"].float()
            owner = [meta[(start + r) // (1 + len(METHODS))] for r in range(len(logits))]
            rows_users = torch.as_tensor([m[1] for m in owner])
            rows_targets = torch.as_tensor([m[2] for m in owner])
            scores.append(logits.gather(1, rows_targets[:, None].to(logits.device))[:, 0].double().cpu().numpy())
            got.append(ranks(logits, rows_targets, rows_users, rec.seen).numpy())
        scores, got = np.concatenate(scores), np.concatenate(got)
        for n, (user, u, j, e, chosen, shown) in enumerate(meta):
            at = n * (1 + len(METHODS))
            full, rank0 = float(scores[at]), int(got[at])
            row = {"user": user, "target": ds.items[j].id, "score": e.score, "prior_part": e.prior_part,
                   "lm_part": e.lm_part, "rank": rank0, "history_shown": e.history_shown,
                   "social_shown": e.social_shown, "score_check": abs(full - e.score), "methods": {}}
            for k, m in enumerate(METHODS, 1):
                s, r = float(scores[at + k]), int(got[at + k])
                row["methods"][m] = {"removed": [ds.items[shown[i]].id for i in chosen[m]],
                                     "positions": chosen[m], "score": s, "rank": r,
                                     "score_drop": full - s, "rank_change": r - rank0}
            rows.append(row)
        if progress:
            print(f"explain bench: {len(rows)}/{len(users)} users", file=sys.stderr, flush=True)
    return rows


def summarize(rows: list[dict], resamples: int = 1000, seed: int = 0) -> dict:
    """Means per method, paired bootstrap intervals of occlusion − each alternative, the score split."""
    from mtrec.metrics import paired_bootstrap

    def col(method: str, key: str) -> np.ndarray:
        return np.array([r["methods"][method][key] for r in rows], dtype=np.float64)

    methods = {m: {"score_drop": float(col(m, "score_drop").mean()), "rank_change": float(col(m, "rank_change").mean()),
                   "median_rank_change": float(np.median(col(m, "rank_change"))),
                   "rank_after": float(col(m, "rank").mean())} for m in METHODS}
    versus = {alt: {key: paired_bootstrap(col("occlusion", key), col(alt, key), resamples, seed)
                    for key in ("score_drop", "rank_change")} for alt in ALTERNATIVES}
    lm, prior = (np.array([r[k] for r in rows], dtype=np.float64) for k in ("lm_part", "prior_part"))
    share = np.abs(lm) / np.maximum(np.abs(lm) + np.abs(prior), 1e-12)
    return {
        "methods": methods,
        "occlusion_minus": versus,
        "score": {"mean": float((lm + prior).mean()), "prior_part": float(prior.mean()), "lm_part": float(lm.mean()),
                  "lm_share": float(share.mean()), "lm_share_median": float(np.median(share))},
        "history_shown_mean": float(np.mean([r["history_shown"] for r in rows])),
        "score_check_max": float(max(r["score_check"] for r in rows)),
    }


def run_bench(rec, users: int = 200, remove: int = 3, min_shown: int = 6, seed: int = 0, batch_size: int = 8,
              resamples: int = 1000, progress: bool = False) -> dict:
    """The whole bench on a loaded `Recommender` (see the module docstring)."""
    if min_shown < remove:
        raise ValueError(f"--min-shown ({min_shown}) must be at least --remove ({remove})")
    start = time.perf_counter()
    picked = sample_users(rec, users, min_shown, seed)
    if not picked:
        raise ValueError(f"no user's prompt shows {min_shown} or more history entries")
    rows = bench_users(rec, picked, remove, seed, batch_size, progress=progress)
    return {
        "run": str(rec.run_dir),
        "dataset": rec.dataset.name,
        "users": len(picked),
        "users_asked": users,
        "seed": seed,
        "remove": remove,
        "min_shown": min_shown,
        **summarize(rows, resamples, seed),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }


def report_lines(result: dict) -> list[str]:
    """A readable summary of `run_bench`'s result."""
    lines = [(f"explain bench: {result['dataset']}, {result['users']} users (seed {result['seed']}), "
              f"{result['remove']} of >= {result['min_shown']} shown history entries removed, {result['seconds']} s"),
             f"{'method':<10} {'score drop':>11} {'rank change':>12} {'median':>7} {'rank after':>11}"]
    if result["users"] < result["users_asked"]:
        lines.insert(1, f"note: {result['users_asked']} users asked, only {result['users']} prompts show "
                        f">= {result['min_shown']} history entries")
    for m, v in result["methods"].items():
        lines.append(f"{m:<10} {v['score_drop']:>11.4f} {v['rank_change']:>12.2f} {v['median_rank_change']:>7.1f} "
                     f"{v['rank_after']:>11.2f}")
    for alt, v in result["occlusion_minus"].items():
        sd, rc = v["score_drop"], v["rank_change"]
        lines.append(f"occlusion - {alt:<7} score drop {sd['diff']:+.4f} [{sd['low']:+.4f}, {sd['high']:+.4f}]  "
                     f"rank change {rc['diff']:+.2f} [{rc['low']:+.2f}, {rc['high']:+.2f}]")
    s = result["score"]
    lines.append(f"score {s['mean']:.4f} = prior {s['prior_part']:.4f} + LM {s['lm_part']:+.4f}; "
                 f"LM share |lm|/(|lm|+|prior|) mean {s['lm_share']:.3f}, median {s['lm_share_median']:.3f}")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mtrec.bench explain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="the run (or export) folder")
    p.add_argument("--users", type=int, default=200, help="users in the sample (default 200)")
    p.add_argument("--seed", type=int, default=0, help="the sample's, the random method's and the bootstrap's seed")
    p.add_argument("--remove", type=int, default=3, help="shown history entries each method leaves out (default 3)")
    p.add_argument("--min-shown", type=int, default=6, help="users need this many shown history entries (default 6)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default 8)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"], help="as Recommender.from_run")
    p.add_argument("--out", type=Path, help="write the JSON here (e.g. results/explain-movielens-100k.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.users < 1 or args.remove < 1 or args.batch_size < 1 or args.resamples < 1:
        print("error: --users, --remove, --batch-size and --resamples must be at least 1", file=sys.stderr)
        return 2
    from mtrec.inference import Recommender
    from mtrec.run import RunFolderError

    try:
        rec = Recommender.from_run(args.run, device=args.device, precision=args.precision)
        result = run_bench(rec, args.users, args.remove, args.min_shown, args.seed, args.batch_size, args.resamples,
                           progress=True)
    except (RunFolderError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(result)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0
