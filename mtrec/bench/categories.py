"""`python -m mtrec.bench categories RUN [RUN ...]`: category preference on the test split, run folders
against counting the history's categories, with paired intervals.

The category head ("which categories does this user prefer?", the label being the categories of
the user's next liked item) has no collaborative prior: whatever it knows, the backbone read from
the prompt. So the accuracy bench's "prior alone" says nothing here; what does is a content baseline
that reads the same history, and the random-init backbone. This scores each run folder on the test
category rows of the accuracy bench's seeded user sample (`--users`, default its 500; the same
users as its language-model rows) and, on the same rows, **history categories**: each category
scored by how many of the user's earlier items (training and validation: everything before the test
target, more than the prompt's `data.max_history`) carry it, ties broken by the category's share of
all training interactions. NDCG@5 per row (`mtrec.metrics.ndcg_at_k`, ties against the scorer), and
the paired 95% bootstrap interval of the first run minus each other row.

    python -m mtrec.bench categories results/warm-blend/runs/lastfm-2k-quick/multi-task \\
        results/warm-blend/runs/lastfm-2k-quick/random-init-backbone [--users 500] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from mtrec import metrics
from mtrec.data.splits import TEST, TRAIN, VALID, Split

K = 5


def per_row_ndcg(scores: torch.Tensor, relevance: torch.Tensor, k: int = K) -> np.ndarray:
    """NDCG@k of each row (`metrics.ndcg_at_k` row by row)."""
    return np.array([metrics.ndcg_at_k(scores[i : i + 1], relevance[i : i + 1], k) for i in range(len(scores))])


def history_scores(split: Split, users: np.ndarray, role: int = TEST) -> torch.Tensor:
    """[len(users), categories]: per user, the count of their items before `role`'s targets (training,
    and validation for the test role) carrying each category, plus the category's share of all
    training interactions (< 1: it only breaks ties)."""
    ds = split.dataset
    n_cat = len(ds.categories)
    item_cats = [[ds.category_index[c] for c in it.categories if c in ds.category_index] for it in ds.items]
    before = (split.role == TRAIN) | ((split.role == VALID) if role == TEST else False)
    counts = np.zeros((ds.num_users, n_cat))
    popularity = np.zeros(n_cat)
    for idx in np.flatnonzero(before):
        cats = item_cats[ds.item_idx[idx]]
        counts[ds.user_idx[idx], cats] += 1
        if split.role[idx] == TRAIN:
            popularity[cats] += 1
    share = popularity / max(popularity.sum(), 1.0)
    return torch.as_tensor(counts[users] + share[None, :])


def score_runs(runs: list[Path], users: int, seed: int | None = None) -> dict:
    """Every run's and the history baseline's per-row NDCG@5 on the test category rows of `users`
    seeded users (the first run's split, checked against the others'), and the paired intervals."""
    from mtrec.bench import mtrec_suite
    from mtrec.inference import Recommender
    from mtrec.pipeline import Batcher, eval_specs, evaluate_rows
    from mtrec.tasks import ExampleFactory
    from mtrec.training import example_options

    rows, fingerprint, specs, base, target = {}, None, None, None, None
    for run in runs:
        rec = Recommender.from_run(run, device="cpu", merge=False)
        split, opts = rec.split, example_options(rec.cfg)
        fp = mtrec_suite.split_fingerprint(split)
        if fingerprint is None:
            fingerprint, base = fp, split
            specs = eval_specs(split, ["categories"], opts, TEST, users, rec.cfg.run.seed if seed is None else seed)
            if not len(specs):
                raise ValueError(f"{run}: no test category rows (items without categories?)")
        elif fp != fingerprint:
            raise ValueError(f"{run}: another split than {runs[0]}'s (fingerprint {fp} != {fingerprint})")
        batcher = Batcher(ExampleFactory(split, opts), rec.renderer, rec.prompts, rec.tokenizer.pad_token_id,
                          len(split.dataset.categories))
        out = evaluate_rows(rec.model, batcher, specs, split, TEST)
        if target is None:  # the same rows for every run
            target = (out["cat_target"] > 0).float()
        rows[str(run)] = per_row_ndcg(out["cat_logits"], target)
        del rec
    users_of = base.dataset.user_idx[specs.interaction]
    rows["history categories"] = per_row_ndcg(history_scores(base, users_of), target)
    first = str(runs[0])
    return {"k": K, "rows": len(specs), "users": len(np.unique(users_of)), "split_fingerprint": fingerprint,
            f"ndcg@{K}": {name: float(v.mean()) for name, v in rows.items()},
            "pairs": {f"{first} - {name}": metrics.paired_bootstrap(rows[first], v)
                      for name, v in rows.items() if name != first}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtrec.bench categories", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run folders; the first is the reference")
    p.add_argument("--users", type=int, default=500, help="seeded test users (the accuracy bench's sample; 0 = all)")
    p.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = p.parse_args(argv)
    for run in args.runs:
        if not (run / "config.yaml").exists():
            p.error(f"{run}: not a run folder (no config.yaml)")
    result = score_runs(args.runs, args.users)
    print(f"test category rows: {result['rows']} ({result['users']} users); NDCG@{K}")
    for name, value in result[f"ndcg@{K}"].items():
        print(f"  {value:.4f}  {name}")
    for name, c in result["pairs"].items():
        print(f"  {name}: {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
