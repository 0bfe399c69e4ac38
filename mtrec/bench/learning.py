"""What more examples per CPU hour buy: each recipe's gain over step 0 at fixed step counts.

``python -m mtrec.bench learning --recipe "today=200" --recipe "minilm top-2 cached=4000"`` trains each
named recipe (`mtrec.bench.recipes.recipes`) from the config for the given number of steps (the
count it reaches in 40 minutes, measured once with ``bench speed recipes`` and then fixed, so the
run is deterministic), and scores its weights at a quarter, half and all of the steps (the counts
it reaches in 10, 20 and 40 minutes: the run's own checkpoints, with ``train.keep=last``) and
before training (step 0) on a fixed, seeded sample of validation users. For each point it reports
four figures — recommendation NDCG@10, like AUC, category NDCG@5 and the validation loss — as the
change from step 0 with a paired 95% bootstrap interval over users. One JSON file per recipe under
``--out``/rows (a rerun skips recipes already done), and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

from mtrec import metrics
from mtrec.bench import intervals
from mtrec.bench.harness import environment
from mtrec.bench.recipes import fixed_batches_for, fixed_run, recipes
from mtrec.kinds import Kind, NUM_KINDS

FIGURES = ("ndcg@10", "auc", "categories_ndcg@5", "loss")
LOWER_IS_BETTER = {"loss"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mtrec.bench learning", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--config", default="configs/quickstart.yaml", help="the training config every recipe starts from")
    a("--recipe", action="append", required=True, metavar="NAME=STEPS",
      help="a recipe of `bench speed recipes` and its step count at 40 minutes (a multiple of 4)")
    a("--fixed-batches", type=int, default=None,
      help="train.fixed_batches of cached recipes; default: half the steps (2 epochs, as the speed bench)")
    a("--users", type=int, default=500, help="seeded validation users scored (0 = all)")
    a("--resamples", type=int, default=1000, help="bootstrap resamples of users")
    a("--threads", type=int, default=None, help="torch CPU threads (train.num_threads)")
    a("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override for every recipe")
    a("--out", default="results/learning", help="output folder (rows/<recipe>.json, learning.json, learning.md)")
    return p


def parse_recipe(text: str, parser) -> tuple[str, int]:
    name, _, steps = text.rpartition("=")
    if not name or not steps.isdigit() or int(steps) < 4 or int(steps) % 4:
        parser.error(f"--recipe {text!r}: expected NAME=STEPS with STEPS a multiple of 4 (>= 4)")
    return name.strip(), int(steps)


def records_of(rows: dict, split, weights: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-row records for the four figures: ranking and like records (`intervals.from_eval_rows`),
    each category row's NDCG@5, and every row's loss with its kind and user."""
    rec = intervals.from_eval_rows(rows, split)
    kind = rows["kind"].long().numpy()
    user = rows["user"].long().numpy()
    cat = kind == int(Kind.CATEGORIES)
    if cat.any():
        rec["cat_user"] = user[cat]
        rec["cat_ndcg"] = np.array([metrics.ndcg_at_k(rows["cat_logits"][i : i + 1], (rows["cat_target"][i : i + 1] > 0).float(), 5)
                                    for i in np.flatnonzero(cat)])
    rec["loss_user"], rec["loss_kind"], rec["loss"] = user, kind, rows["loss"].double().numpy()
    rec["loss_weights"] = weights.double().numpy()
    return rec


def weighted_loss(loss: np.ndarray, kind: np.ndarray, weights: np.ndarray) -> float:
    """The validation loss as training reports it: the weighted sum of each kind's mean row loss."""
    return float(sum(weights[k] * loss[kind == k].mean() for k in range(NUM_KINDS) if (kind == k).any()))


def figures(rec: dict) -> dict[str, float]:
    s = intervals.summarise(rec)
    return {"ndcg@10": s.get("ndcg@10", float("nan")), "auc": s.get("auc", float("nan")),
            "categories_ndcg@5": float(np.mean(rec["cat_ndcg"])) if len(rec.get("cat_ndcg", ())) else float("nan"),
            "loss": weighted_loss(rec["loss"], rec["loss_kind"], rec["loss_weights"])}


def change(a: dict, b: dict, figure: str, resamples: int, seed: int) -> dict | None:
    """Paired bootstrap interval of figure(a) - figure(b) over the users both were scored on (the
    same rows: the same specs), with ``better`` from its direction."""
    if figure in ("ndcg@10", "auc"):
        return intervals.compare(a, b, figure, resamples, seed)
    if figure == "categories_ndcg@5":
        if "cat_ndcg" not in a:
            return None
        out = metrics.paired_bootstrap(a["cat_ndcg"], b["cat_ndcg"], resamples, seed)
    else:
        w = a["loss_weights"]
        stat = lambda loss, kind: weighted_loss(loss, kind.astype(np.int64), w)  # noqa: E731
        out = metrics.paired_bootstrap_groups(stat, a["loss"], b["loss"], a["loss_kind"], a["loss_user"], resamples, seed)
    out["better"] = intervals.better(out["low"], out["high"], figure not in LOWER_IS_BETTER)
    return out


PARTS = ("rank", "like", "rating", "cat", "loss")


def _resampled(rec: dict, counts: np.ndarray) -> dict:
    """`rec` with each user's rows repeated as often as the user was drawn (`counts[user]`)."""
    out = {"loss_weights": rec["loss_weights"]}
    for part in PARTS:
        users = rec.get(f"{part}_user")
        if users is None:
            continue
        idx = np.repeat(np.arange(len(users)), counts[np.asarray(users, np.int64)])
        out |= {n: np.asarray(v)[idx] for n, v in rec.items() if n.startswith(part) and n != "loss_weights"}
    return out


def gain_difference(a: tuple[dict, dict], b: tuple[dict, dict], resamples: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap of (figure(a_t) - figure(a_0)) - (figure(b_t) - figure(b_0)) for each figure: how
    much more recipe a gained over its step 0 than recipe b over its own, users resampled together
    (all four scored on the same validation rows). ``better``: "a" or "b" where the interval excludes
    0 (for the loss, lower is better), else None."""
    recs = [*a, *b]
    users = np.unique(np.concatenate([np.asarray(r["loss_user"], np.int64) for r in recs]))
    size = int(users.max()) + 1
    gain = lambda rs: {f: (fa_t - fa_0) - (fb_t - fb_0) for f, fa_t, fa_0, fb_t, fb_0  # noqa: E731
                       in zip(FIGURES, *[[figures(r)[f] for f in FIGURES] for r in rs])}
    point = gain(recs)
    rng = np.random.default_rng(seed)
    draws = {f: [] for f in FIGURES}
    for _ in range(resamples):
        counts = np.bincount(rng.choice(users, size=len(users)), minlength=size)
        for f, v in gain([_resampled(r, counts) for r in recs]).items():
            draws[f].append(v)
    out = {}
    for f in FIGURES:
        low, high = np.nanpercentile(draws[f], [2.5, 97.5])
        out[f] = {"diff": float(point[f]), "low": float(low), "high": float(high), "n": len(users),
                  "resamples": resamples, "better": intervals.better(low, high, f not in LOWER_IS_BETTER)}
    return out


def versus(rows: list[dict], resamples: int, seed: int = 0) -> list[dict]:
    """Every recipe against the first one (today's, by convention), at each matched point (10, 20 and
    40 minutes): the difference of their gains over step 0, with paired intervals. Rows stored without
    per-row records (older runs) are left out."""
    ref = rows[0]
    out = []
    for r in rows[1:]:
        for share, label in ((4, "10"), (2, "20"), (1, "40")):
            pa, pb = r["points"].get(str(r["steps"] // share)), ref["points"].get(str(ref["steps"] // share))
            a0, b0 = r["points"]["0"], ref["points"]["0"]
            if not all(p and "records" in p for p in (pa, pb, a0, b0)):
                continue
            recs = [intervals.from_json(p["records"]) for p in (pa, a0, pb, b0)]
            out.append({"recipe": r["recipe"], "reference": ref["recipe"], "minutes": label,
                        "gain_difference": gain_difference(tuple(recs[:2]), tuple(recs[2:]), resamples, seed)})
    return out


def run_recipe(args, name: str, steps: int, extra: list[str], run_dir: Path) -> dict:
    """Train `name` for `steps` steps, score step 0 and the weights at steps/4, steps/2 and steps."""
    from mtrec.config import load_config
    from mtrec.data.splits import VALID
    from mtrec.pipeline import eval_specs, evaluate_rows
    from mtrec.checkpoint import PREFIX, checkpoint_dir, load_trainable_state
    from mtrec.training import build_setup, train

    quarter = steps // 4
    own = ["train.keep=last", f"train.checkpoint_every={quarter}", "train.keep_checkpoints=3"]
    cfg = load_config(args.config, [*fixed_run(steps, own, args.set, args.threads), *extra])
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    set_seed(cfg.run.seed)  # as train() seeds before it builds: the same start as `bench speed recipes`
    s = build_setup(cfg)
    specs = eval_specs(s.split, s.kinds, s.example_options, VALID, args.users, cfg.run.seed)

    def score() -> tuple[dict, float]:
        began = time.perf_counter()
        rows = evaluate_rows(s.model, s.batcher, specs, s.split, VALID, cfg.train.eval_batch_size)
        return records_of(rows, s.split, s.weights), time.perf_counter() - began

    print(f"[learning] {name}: step 0 on {len(specs)} validation rows", file=sys.stderr)
    points = {0: score()}
    result = train(cfg, run_dir, overwrite=True, setup=s)
    points[steps] = score()
    for step in (quarter, 2 * quarter):
        load_trainable_state(s.model, load_file(checkpoint_dir(run_dir) / f"{PREFIX}{step}" / "trainable.safetensors"))
        points[step] = score()
    zero = points[0][0]
    out = {"recipe": name, "overrides": extra, "steps": steps, "training_seconds": result["phases"]["training"],
           "examples": result["examples_per_process"], "activation_cache": result.get("activation_cache"),
           "users": int(len(np.unique(s.split.dataset.user_idx[specs.interaction]))), "rows": len(specs),
           "points": {}}
    for step in sorted(points):
        rec, seconds = points[step]
        entry = {"figures": figures(rec), "eval_seconds": round(seconds, 1), "records": intervals.to_json(rec)}
        if step:
            entry["change"] = {f: change(rec, zero, f, args.resamples, cfg.run.seed) for f in FIGURES}
        out["points"][str(step)] = entry
    return out


def table(rows: list[dict], compared: list[dict] | None = None) -> str:
    lines = ["| recipe | steps (minutes) | NDCG@10 | Δ vs step 0 [95% CI] | like AUC | Δ | category NDCG@5 | Δ | valid loss | Δ |",
             "|---|---|---:|---|---:|---|---:|---|---:|---|"]
    for r in rows:
        for step, entry in r["points"].items():
            minutes = {0: "0", r["steps"] // 4: "10", r["steps"] // 2: "20", r["steps"]: "40"}[int(step)]
            cells = []
            for f in FIGURES:
                cells.append(f"{entry['figures'][f]:.4f}")
                c = (entry.get("change") or {}).get(f)
                cells.append("–" if c is None else f"{c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
                             + (" ✓" if c["better"] == "a" else " ✗" if c["better"] == "b" else ""))
            lines.append(f"| {r['recipe']} | {step} ({minutes}) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("✓: better than step 0, interval excluding 0; ✗: worse; neither: no measurable difference.")
    if compared:
        lines += ["", "Gain over step 0, recipe minus reference, at matched minutes (paired 95% intervals):", "",
                  "| recipe | reference | minutes | " + " | ".join(FIGURES) + " |", "|---|---|---|" + "---|" * len(FIGURES)]
        for c in compared:
            cells = [f"{g['diff']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]"
                     + (" (recipe)" if g["better"] == "a" else " (reference)" if g["better"] == "b" else "")
                     for g in (c["gain_difference"][f] for f in FIGURES)]
            lines.append(f"| {c['recipe']} | {c['reference']} | {c['minutes']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen = [parse_recipe(r, parser) for r in args.recipe]
    out = Path(args.out)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    rows = []
    for name, steps in chosen:
        known = recipes(fixed_batches_for(steps, args.fixed_batches))
        if name not in known:
            parser.error(f"--recipe {name!r}: unknown; choose from {list(known)}")
        path = out / "rows" / f"{name.replace(' ', '-')}-{steps}.json"
        if path.exists():
            print(f"[learning] {name}: done before ({path})", file=sys.stderr)
            rows.append(json.loads(path.read_text()))
            continue
        row = run_recipe(args, name, steps, known[name], out / "runs" / path.stem)
        row["environment"] = environment(torch.device("cpu"))
        path.write_text(json.dumps(row, indent=1, default=float), encoding="utf-8")
        rows.append(row)
    compared = versus(rows, args.resamples)
    result = {"argv": argv, "rows": rows, "versus": compared}
    (out / "learning.json").write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
    (out / "learning.md").write_text(table(rows, compared) + "\n", encoding="utf-8")
    print(table(rows, compared))
    return 0


if __name__ == "__main__":
    sys.exit(main())
