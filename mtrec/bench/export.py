"""`python -m mtrec.bench export --run RUN`: the export against its run, and its int8 / bf16 variants.

Every user's test target is scored by each model over the full catalog (the run's own prompts,
one fixed paraphrase), and the models are compared with the run's adapter model in fp32:

- **equivalence** of the merged export: max |Δscore| over every user's full-catalog scores, and
  whether each user's top-10 is the same up to items whose scores tie within `--tie`;
- **variants** (bf16 weights, int8 dynamic quantisation) against the fp32 export: max |Δscore|,
  mean top-10 overlap, test NDCG@10 with a paired bootstrap interval over the same users (every
  user for the variants in `--full`, the first `--timing-users` users for the others: bf16 runs
  several times slower than fp32 on a CPU without fast bf16 kernels);
- **speed**: batch top-10 users/s through the shipped path (`Recommender.recommend`: prompts,
  tokenisation, seen-item mask, top-k), on the first `--timing-users` users.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mtrec import metrics
from mtrec.data.splits import TEST

VARIANTS = ("fp32", "bf16", "int8")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mtrec.bench export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", type=Path, required=True, help="a training run folder")
    p.add_argument(
        "--export", type=Path, default=None, help="its export (default RUN-export; written if missing)"
    )
    p.add_argument("--timing-users", type=int, default=128, help="users timed per model (default 128)")
    p.add_argument("--batch-size", type=int, default=8, help="users per forward pass (default 8)")
    p.add_argument("--full", default="fp32,int8", help="variants scored on every user (default fp32,int8)")
    p.add_argument("--tie", type=float, default=1e-3, help="score gap counted as a tie in top-10 checks")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of users (default 1000)")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from mtrec.export import export_run
    from mtrec.inference import Recommender
    from mtrec.run import RunFolderError

    export = args.export or args.run.with_name(args.run.name + "-export")
    try:
        if not (export / "manifest.json").exists():
            export_run(args.run, export)
        # the adapter as peft runs it (the separate low-rank products), not merged on load
        models = {"adapter fp32": Recommender.from_run(args.run, device="cpu", precision="fp32", merge=False)}
        models |= {f"export {v}": Recommender.from_run(export, device="cpu", precision=v) for v in VARIANTS}
    except RunFolderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scored, full = {}, {"adapter fp32", *(f"export {v}" for v in args.full.split(","))}
    for name, rec in models.items():
        limit = None if name in full else args.timing_users
        scored[name] = test_scores(rec, args.batch_size, limit)
        scored[name]["users_per_s"] = top10_speed(rec, args.timing_users, args.batch_size)
        print(
            f"{name}: NDCG@10 {scored[name]['ndcg'].mean():.4f} on {len(scored[name]['ndcg'])} users, "
            f"top-10 {scored[name]['users_per_s']:.2f} users/s",
            flush=True,
        )
    report = {
        "run": str(args.run),
        "export": str(export),
        "users": len(scored["adapter fp32"]["ndcg"]),
        "timing_users": args.timing_users,
        "equivalence": compare(scored["adapter fp32"], scored["export fp32"], args.tie, args.resamples),
    }
    report["variants"] = {
        v: compare(scored["export fp32"], scored[f"export {v}"], args.tie, args.resamples)
        for v in VARIANTS[1:]
    }
    report["speed"] = {name: round(s["users_per_s"], 2) for name, s in scored.items()}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


def split_batcher(rec):
    """A training-style `Batcher` over `rec`'s own split (histories cut at each target, not the
    serving "now"), with the run's renderer and prompts, and the example options it was trained with."""
    from mtrec.pipeline import Batcher
    from mtrec.tasks import ExampleFactory
    from mtrec.tasks import example_options

    opts = example_options(rec.cfg)
    factory = ExampleFactory(rec.split, opts)
    return Batcher(factory, rec.renderer, rec.prompts, rec.tokenizer.pad_token_id, len(rec.dataset.categories))


def test_scores(rec, batch_size: int, users: int | None = None) -> dict:
    """Every user's (or the first `users` users') full-catalog scores for their test target
    (history: everything before it) and its rank among the unseen items, through the evaluation
    path of training."""
    from mtrec.pipeline import eval_specs, evaluate_rows

    batcher = split_batcher(rec)
    opts = batcher.factory.opts
    specs = eval_specs(rec.split, ["recommendation"], opts, TEST)
    if users is not None:
        specs = specs.take(np.flatnonzero(rec.dataset.user_idx[specs.interaction] < users))
    start = time.perf_counter()
    rows = evaluate_rows(rec.model, batcher, specs, rec.split, TEST, batch_size, item_logits=True)
    order = torch.argsort(rows["user"])  # one row per user, in user order, whatever the specs' order
    return {
        "users": rows["user"][order].long(),
        "scores": rows["item_logits"][order],
        "ndcg": metrics.ndcg_rows(rows["rank"][order].long(), 10).numpy(),
        "seconds": time.perf_counter() - start,
    }


def top10_speed(rec, users: int, batch_size: int) -> float:
    """Users/s of `Recommender.recommend(k=10)` on the first `users` users (one warm-up batch first)."""
    ids = [u.id for u in rec.dataset.users[:users]]
    rec.recommend(ids[:batch_size], k=10, batch_size=batch_size)
    start = time.perf_counter()
    rec.recommend(ids, k=10, batch_size=batch_size)
    return len(ids) / (time.perf_counter() - start)


def compare(ref: dict, other: dict, tie: float, resamples: int) -> dict:
    """Score differences, top-10 agreement and the paired NDCG@10 interval of `other` against `ref`."""
    keep = torch.isin(ref["users"], other["users"])  # a variant scored on the first users only
    ref = {"users": ref["users"][keep], "scores": ref["scores"][keep], "ndcg": ref["ndcg"][keep.numpy()]}
    if not torch.equal(ref["users"], other["users"]):
        raise ValueError("the two models were scored on different users")
    a, b = ref["scores"], other["scores"]
    top_a, top_b = torch.topk(a, 10, dim=1), torch.topk(b, 10, dim=1)
    overlap = [len(set(x.tolist()) & set(y.tolist())) / 10 for x, y in zip(top_a.indices, top_b.indices)]
    # a top-10 "differs" only where an item in one list and not the other is clear of the 10th score by > tie
    differs = 0
    for row, (x, y) in enumerate(zip(top_a.indices.tolist(), top_b.indices.tolist())):
        tenth = float(top_a.values[row, -1])
        odd = set(x) ^ set(y)
        differs += any(abs(float(a[row, j]) - tenth) > tie for j in odd)
    return {
        "max_abs_score_diff": float((a - b).abs().max()),
        "mean_top10_overlap": float(np.mean(overlap)),
        "users_with_a_different_top10": differs,
        "ndcg_ref": float(ref["ndcg"].mean()),
        "ndcg": float(other["ndcg"].mean()),
        "users": len(other["ndcg"]),
        "ndcg_diff": metrics.paired_bootstrap(other["ndcg"], ref["ndcg"], resamples),
    }


if __name__ == "__main__":
    sys.exit(main())
