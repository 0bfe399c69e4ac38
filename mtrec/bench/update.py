"""`python -m mtrec.bench update --run RUN`: what an update buys, on the test split.

The pinned check of the update loop: RUN is the **stale** model (trained on the training split);
the new data is every user's validation interaction; then

- **priors refit only**: `mtrec.update --steps 0` (the new interactions refitted into the priors,
  RUN's weights otherwise);
- **updated**: `mtrec.update --steps N` (the same, then N fine-tuning steps);

and all three are scored on the same test rows (every user: the target's full-catalog rank with
earlier items excluded, the rating, P(like) against the seeded negatives), with paired bootstrap
intervals over users against the stale model, and of updated against refit-only (what the update's
fine-tuning adds on top of refitting).
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
from mtrec.kinds import Kind

ROWS = ("stale", "priors refit only", "updated")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mtrec.bench update",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", type=Path, required=True, help="the stale run folder")
    p.add_argument(
        "--work", type=Path, default=Path("results/update"), help="folder for the new data and runs"
    )
    p.add_argument("--steps", type=int, default=30, help="the update's fine-tuning steps (default 30)")
    p.add_argument(
        "--batch-size", type=int, default=8, help="prompts per forward pass in scoring (default 8)"
    )
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from mtrec.inference import Recommender
    from mtrec.run import load_catalog
    from mtrec.update import update, write_interactions

    old = load_catalog(args.run / "catalog")
    new = write_interactions(args.work / "new", old.dataset, old.valid)
    runs, seconds = {"stale": args.run}, {}
    for name, steps in (("priors refit only", 0), ("updated", args.steps)):
        out = args.work / name.replace(" ", "-")
        if not (out / "metrics.json").exists():
            start = time.perf_counter()
            update(args.run, new, out, steps=steps)
            seconds[name] = round(time.perf_counter() - start, 1)
        runs[name] = out
    specs, scored = None, {}
    for name, run in runs.items():
        rec = Recommender.from_run(run, device="cpu", precision="fp32")
        start = time.perf_counter()
        specs, scored[name] = score_test(rec, specs, args.batch_size)
        print(f"{name}: scored {len(specs)} test rows in {time.perf_counter() - start:.0f} s", flush=True)
    report = {
        "run": str(args.run),
        "steps": args.steps,
        "update_seconds": seconds,
        "users": len(np.unique(scored["stale"]["user"])),
        "rows": {},
        "intervals": {},
    }
    for name in ROWS:
        report["rows"][name] = summary(scored[name])
    for name, ref in (("priors refit only", "stale"), ("updated", "stale"), ("updated", "priors refit only")):
        report["intervals"][f"{name} - {ref}"] = intervals(scored[name], scored[ref], args.resamples)
    print(table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


def score_test(rec, specs, batch_size: int):
    """Per-row test outputs of `rec`; `specs` from the first model are reused, so that every model
    answers exactly the same rows (the interactions keep their indices in an update's catalog)."""
    from mtrec.bench.export import split_batcher
    from mtrec.pipeline import eval_specs, evaluate_rows

    batcher = split_batcher(rec)
    if specs is None:
        kinds = ["rating", "like", "recommendation"] if rec.dataset.explicit else ["like", "recommendation"]
        specs = eval_specs(rec.split, kinds, batcher.factory.opts, TEST)
    rows = evaluate_rows(rec.model, batcher, specs, rec.split, TEST, batch_size)
    return specs, {n: v.numpy() if torch.is_tensor(v) else v for n, v in rows.items()}


def _rmse(pred, label) -> float:
    return float(np.sqrt(np.mean((pred - label) ** 2)))


def _auc(score, label) -> float:
    return metrics.auc(score, label)


def _select(rows: dict, kind: int) -> dict:
    keep = rows["kind"] == kind
    return {n: v[keep] for n, v in rows.items() if isinstance(v, np.ndarray) and len(v) == len(keep)}


def summary(rows: dict) -> dict:

    out = {}
    rating, like, rec = (_select(rows, k) for k in (Kind.RATING, Kind.LIKE, Kind.RECOMMENDATION))
    if len(rating["kind"]):
        out["rmse"] = _rmse(rating["rating_pred"], rating["rating"])
    out["like_auc"] = _auc(like["like_logit"], like["like"])
    ranks = rec["rank"].astype(np.int64)
    out["ndcg@10"] = metrics.ndcg(ranks, 10)
    out["hr@10"] = metrics.hit_rate(ranks, 10)
    return out


def intervals(a: dict, b: dict, resamples: int) -> dict:
    """Paired intervals of a - b over users: RMSE and AUC by resampling users' rows, NDCG@10 per user."""

    out = {}
    ra, rb = _select(a, Kind.RATING), _select(b, Kind.RATING)
    if len(ra["kind"]):
        out["rmse"] = metrics.paired_bootstrap_groups(
            _rmse, ra["rating_pred"], rb["rating_pred"], ra["rating"], ra["user"], resamples
        )
    la, lb = _select(a, Kind.LIKE), _select(b, Kind.LIKE)
    out["like_auc"] = metrics.paired_bootstrap_groups(
        _auc, la["like_logit"], lb["like_logit"], la["like"], la["user"], resamples
    )
    na, nb = _select(a, Kind.RECOMMENDATION), _select(b, Kind.RECOMMENDATION)
    out["ndcg@10"] = metrics.paired_bootstrap(
        metrics.ndcg_rows(na["rank"].astype(np.int64), 10).numpy(),
        metrics.ndcg_rows(nb["rank"].astype(np.int64), 10).numpy(),
        resamples,
    )
    return out


def _ci(d: dict) -> str:
    verdict = "" if d["low"] <= 0 <= d["high"] else " *"
    return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]{verdict}"


def table(report: dict) -> str:
    keys = [k for k in ("rmse", "like_auc", "ndcg@10", "hr@10") if k in report["rows"]["stale"]]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
    lines += [
        "",
        "| difference (paired, 95%) | " + " | ".join(k for k in keys if k != "hr@10") + " |",
        "|---" * len(keys) + "|",
    ]
    for name, d in report["intervals"].items():
        lines.append(f"| {name} | " + " | ".join(_ci(d[k]) for k in keys if k != "hr@10") + " |")
    return "\n".join(lines) + "\n\n* the interval excludes 0"


if __name__ == "__main__":
    sys.exit(main())
