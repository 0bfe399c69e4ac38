"""Use a trained run folder: `python infer.py --run runs/<name> --show-user 42`.

--show-user prints one user's top-K (with predicted rating and P(like) for each item) and
category affinities. --task recommend|rate|prefer|categories scores in batch (JSONL to --out).
"""

import argparse
import json
import sys
import time
from pathlib import Path

from mtrec.inference import Recommender, UnknownIdError
from mtrec.run import RunFolderError


def show_user(rec: Recommender, user: str, k: int) -> None:
    ds = rec.dataset
    top = rec.recommend(user, k=k)[0]
    items = [i for i, _ in top]
    ratings = rec.rate(user, items) if ds.explicit else [None] * len(items)
    likes = rec.prefer(user, items)
    seen = len(rec.split.user_sequence(rec.user_index(user)))
    print(f"user {user} ({seen} known interactions) - top {k} unseen items of {ds.num_items}:")
    print(f"{'#':>3}  {'item':<48} {'score':>7} {'rating':>7} {'P(like)':>8}")
    for n, ((item, score), r, p) in enumerate(zip(top, ratings, likes), 1):
        title = ds.items[ds.item_index[item]].title
        shown = f"{r:.2f}" if r is not None else "-"
        print(f"{n:>3}  {title[:48]:<48} {score:>7.2f} {shown:>7} {p:>8.2f}")
    if ds.categories:
        cats = rec.categories(user, k=5)[0]
        print("preferred categories: " + ", ".join(f"{c} ({p:.2f})" for c, p in cats))


def batch(rec: Recommender, args) -> None:
    users = [u.strip() for u in (Path(args.users).read_text().split() if args.users else args.user_ids)]
    start = time.perf_counter()
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    rejected = 0
    for u in users:
        try:
            if args.task == "recommend":
                row = {"user": u, "items": [{"item": i, "score": s} for i, s in rec.recommend(u, k=args.k)[0]]}
            elif args.task == "categories":
                row = {"user": u, "categories": [{"category": c, "p": p} for c, p in rec.categories(u, k=args.k)[0]]}
            else:
                raise SystemExit(f"--task {args.task}: batch mode supports recommend and categories")
        except UnknownIdError as e:
            print(f"skipped: {e}", file=sys.stderr)
            rejected += 1
            continue
        out.write(json.dumps(row) + "\n")
    seconds = time.perf_counter() - start
    print(f"{len(users) - rejected} users in {seconds:.1f} s ({(len(users) - rejected) / seconds:.1f} users/s); "
          f"{rejected} rejected", file=sys.stderr)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="run folder written by train.py")
    p.add_argument("--show-user", help="print one user's top-K, ratings, P(like) and categories")
    p.add_argument("--task", choices=["recommend", "categories"], help="batch mode")
    p.add_argument("--users", help="file of user ids (whitespace-separated) for batch mode")
    p.add_argument("user_ids", nargs="*", help="user ids for batch mode")
    p.add_argument("--out", help="JSONL output (default stdout)")
    p.add_argument("-k", type=int, default=10, help="how many items / categories")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    args = p.parse_args(argv)
    try:
        rec = Recommender.from_run(args.run, device=args.device)
        if args.show_user:
            show_user(rec, args.show_user, args.k)
        elif args.task:
            batch(rec, args)
        else:
            p.error("give --show-user ID or --task")
    except (RunFolderError, UnknownIdError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
