"""Use a trained run folder.

  python infer.py --run runs/NAME --show-user 42          one user's top-K (each with "because ..."), ratings, P(like), categories
  python infer.py --run runs/NAME --chat                  a prompt-style session (type help)
  python infer.py --run runs/NAME --task recommend --all-users -k 10 --out recs.jsonl
  python infer.py --run runs/NAME --task recommend --input users.csv --out recs.csv
  python infer.py --run runs/NAME --task rate 42:50 42:181          (USER:ITEM on the command line)
  python infer.py --run runs/NAME --task explain --input pairs.csv -k 3 --out why.jsonl
  python infer.py --run runs/NAME --task friends 42 7 -k 5          (a run trained with the friends task)
  python infer.py --run runs/NAME --check recs.jsonl -k 10 --all-users

Batch input (--input): CSV with a header (a user/user_id column; rate, prefer and explain also
need item/item_id), JSONL objects with the same keys, or text (user ids, or "USER ITEM" per line).
explain writes, per pair, the score, its priors' and language model's parts and the k shown prompt
entries whose removal lowers it most (occlusion; 1 + shown entries prompts per user, shared by
that user's pairs in one batch).
Unusable lines and unknown ids are reported on stderr as file:line and skipped; the rest is scored.
Output is JSONL (default) or CSV, to --out or stdout; time and users/s (rows/s) go to stderr.
Exit status: 0 when anything was scored, 2 when the input is unusable (missing file, bad header,
no valid row) or the run folder is.

Several processes (`accelerate launch --num_processes N infer.py --task ... --out FILE`, or
torchrun): the requests are cut into N contiguous runs of whole batches, each process scores one
into FILE.part-<rank>, and the first process joins them into FILE in input order, the same rows as
one process writes.
"""

import argparse
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from mtrec.cli import exit_with
from mtrec.inference import (PAIR_TASKS, TASKS, USER_TASKS, BadInputError, Recommender, Request, ResultWriter,
                             UnknownIdError, check_ids, check_recommendations, read_requests, requests_from_args,
                             run_batch)
from mtrec.run import RunFolderError


def show_user(rec: Recommender, user: str, k: int, explain: bool = True) -> None:
    """One user's top-k with predicted ratings and P(like), each item followed by a "because ..."
    line (`Recommender.explain_items`: the occluded prompts serve every listed item at once, so the
    lines cost 1 + shown entries prompts in all, ~15 on MovieLens-100K, whatever k), then categories."""
    ds = rec.dataset
    top = rec.recommend(user, k=k)[0]
    items = [i for i, _ in top]
    ratings = rec.rate(user, items) if ds.explicit else [None] * len(items)
    likes = rec.prefer(user, items)
    whys = rec.explain_items(user, items, k=3) if explain and items else [None] * len(items)
    seen = len(rec.split.user_sequence(rec.user_index(user)))
    print(f"user {user} ({seen} known interactions) - top {k} unseen items of {ds.num_items}:")
    print(f"{'#':>3}  {'item':<48} {'score':>7} {'rating':>7} {'P(like)':>8}")
    for n, ((item, score), r, p, why) in enumerate(zip(top, ratings, likes, whys), 1):
        title = ds.items[ds.item_index[item]].title
        shown = f"{r:.2f}" if r is not None else "-"
        print(f"{n:>3}  {title[:48]:<48} {score:>7.2f} {shown:>7} {p:>8.2f}")
        if why is not None:
            print(f"     {why.because}")
    if ds.categories:
        cats = rec.categories(user, k=5)[0]
        print("preferred categories: " + ", ".join(f"{c} ({p:.2f})" for c, p in cats))


def read_inputs(args) -> list:
    """Requests from --input and the command line, read before the model loads so that bad input
    fails in a second, not after loading a backbone."""
    requests = read_requests(args.input, args.task, args.input_format) if args.input else []
    return requests + requests_from_args(args.ids, args.task)


def batch(rec: Recommender, args, requests: list, state=None) -> int:
    """Score the requests, report rejected lines, timing and throughput on stderr."""
    if args.all_users:
        requests = requests + [Request("all users", u.id) for u in rec.dataset.users]
    if args.task == "rate" and not rec.dataset.explicit:
        raise BadInputError(f"--task rate: data set {rec.dataset.name!r} has implicit feedback only; use --task prefer")
    if args.task == "friends" and "friends" not in rec.prompts:
        raise BadInputError(f"--task friends: {args.run} was not trained with the friends task (train.tasks)")
    good, bad = check_ids(rec.dataset, requests)
    for r in bad if state is None or state.is_main_process else ():  # once, not once per process
        print(f"rejected {r}", file=sys.stderr)
    if not good:
        raise BadInputError(f"no valid rows to score ({len(bad)} rejected)")
    fmt = args.format or ("csv" if args.out and args.out.suffix.lower() == ".csv" else "jsonl")
    if state is not None:
        return sharded_batch(rec, args, good, bad, fmt, state)
    # the output file is opened only now: bad input never truncates an earlier result
    with open(args.out, "w", encoding="utf-8", newline="") if args.out else nullcontext(sys.stdout) as out:
        seconds = run_batch(rec, args.task, good, ResultWriter(out, fmt, args.task), k=args.k,
                            exclude_seen=not args.include_seen, batch_size=args.batch_size,
                            progress=not args.no_progress)
    report(args.task, len(good), len(bad), seconds)
    return 0


def report(task: str, rows: int, rejected: int, seconds: float) -> None:
    unit = "users" if task in USER_TASKS else "rows"
    print(f"{task}: {rows} {unit} in {seconds:.2f} s ({rows / max(seconds, 1e-9):.1f} {unit}/s); "
          f"{rejected} rejected", file=sys.stderr)


def launched_processes():
    """accelerate's process state when this script runs as one of several processes (`accelerate
    launch --num_processes N`, torchrun: WORLD_SIZE > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # without CUDA, accelerate joins the processes (gloo) only when told the CPU: see training.py
    return PartialState(cpu=not torch.cuda.is_available())


def _default_device() -> str:
    """The device `Recommender.from_run` picks when none is given."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def shard(n: int, batch_size: int, rank: int, world: int) -> slice:
    """Process `rank`'s contiguous share of `n` requests, cut at batch boundaries: every batch is the
    one a single process forms, so the scores (padding included) are the single process's."""
    batches = -(-n // batch_size)
    lo, hi = rank * batches // world, (rank + 1) * batches // world
    return slice(min(lo * batch_size, n), min(hi * batch_size, n))


def sharded_batch(rec: Recommender, args, good: list, bad: list, fmt: str, state) -> int:
    """This process's share into ``<out>.part-<rank>``; the first process joins the parts into --out."""
    rank, world = state.process_index, state.num_processes
    mine = good[shard(len(good), args.batch_size, rank, world)]
    parts = [args.out.with_name(f"{args.out.name}.part-{r}") for r in range(world)]
    part = parts[rank]
    start = time.perf_counter()
    with open(part, "w", encoding="utf-8", newline="") as out:
        writer = ResultWriter(out, fmt, args.task, header=rank == 0)
        run_batch(rec, args.task, mine, writer, k=args.k, exclude_seen=not args.include_seen,
                  batch_size=args.batch_size, progress=not args.no_progress and rank == 0)
    state.wait_for_everyone()
    if rank == 0:
        tmp = args.out.with_name(f"{args.out.name}.joining")
        with open(tmp, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out)
        os.replace(tmp, args.out)
        for p in parts:
            p.unlink()
        print(f"{world} processes wrote {args.out}", file=sys.stderr)
        report(args.task, len(good), len(bad), time.perf_counter() - start)
    state.wait_for_everyone()
    return 0


def check(args) -> int:
    """--check: verify a recommend JSONL file against the run's catalog (no model is loaded)."""
    rows, problems = check_recommendations(args.run, args.check, args.k, not args.include_seen, args.all_users)
    for p in problems[:50]:
        print(p, file=sys.stderr)
    seen = "seen items allowed" if args.include_seen else "none seen"
    print(f"{args.check}: {rows} rows, {len(problems)} problems (k={args.k}, distinct known items, {seen}"
          f"{', every user once' if args.all_users else ''})")
    return 1 if problems else 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="run folder written by train.py")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--show-user", help="print one user's top-K (each with why), ratings, P(like) and categories")
    mode.add_argument("--task", choices=TASKS, help="batch mode: score the requests from --input / the command line")
    mode.add_argument("--chat", action="store_true", help="a prompt-style session on stdin/stdout (type help)")
    mode.add_argument("--check", type=Path, metavar="RECS.jsonl",
                      help="check a recommend JSONL file against the run (see -k, --all-users); loads no model")
    p.add_argument("ids", nargs="*",
                   help=f"batch ids: USER for {'/'.join(USER_TASKS)}, USER:ITEM for {'/'.join(PAIR_TASKS)}")
    p.add_argument("--input", "--users", type=Path, help="batch input file: .csv, .jsonl, or text (ids)")
    p.add_argument("--input-format", choices=["csv", "jsonl", "txt"], help="input format (default: from the suffix)")
    p.add_argument("--all-users", action="store_true", help="recommend/categories/friends for every user of the run")
    p.add_argument("--out", type=Path, help="output file (default stdout)")
    p.add_argument("--format", choices=["jsonl", "csv"],
                   help="output format (default: from --out's suffix, else jsonl)")
    p.add_argument("-k", type=int, default=None,
                   help="how many items / categories per user (default 10); for explain, contributions per pair (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass (default 32)")
    p.add_argument("--include-seen", action="store_true",
                   help="let top-K include items the user already has (friends: people they are already friends with)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--no-prompt", action="store_true", help="chat: do not print the 'mtrec> ' prompt")
    p.add_argument("--no-explain", action="store_true", help="--show-user: no 'because ...' line under each item")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8"],
                   help="backbone precision (default bf16 on a GPU that has it, else fp32; int8: dynamic "
                        "quantisation, CPU only, ~1.6x fp32's speed, scores move by up to ~0.1)")
    args = p.parse_args(argv)
    if args.k is None:
        args.k = 3 if args.task == "explain" else 10
    if args.k < 1 or args.batch_size < 1:
        p.error("-k and --batch-size must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.check:
            return check(args)
        if not (args.show_user or args.task or args.chat):
            print("error: give --show-user ID, --task TASK, --chat or --check FILE (see --help)", file=sys.stderr)
            return 2
        if args.task and not (args.input or args.ids or args.all_users):
            raise BadInputError(f"--task {args.task}: give ids, --input FILE or --all-users")
        requests = read_inputs(args) if args.task else []
        state = launched_processes() if args.task else None
        if state is not None and not args.out:
            raise BadInputError(f"--task {args.task} in {state.num_processes} processes: give --out FILE "
                                f"(the processes' parts are joined there)")
        device = args.device or (str(state.device) if state is not None else None)
        start = time.perf_counter()
        if args.precision == "int8" and not str(device or _default_device()).startswith("cpu"):
            raise BadInputError("--precision int8: dynamic int8 quantisation runs on the CPU only (add --device cpu)")
        rec = Recommender.from_run(args.run, device=device, precision=args.precision)
        if state is None or state.is_main_process:
            print(f"loaded {args.run} on {rec.device} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        if args.chat:
            from mtrec.chat import run_chat

            return run_chat(rec, prompt=not args.no_prompt)
        if args.task:
            return batch(rec, args, requests, state)
        show_user(rec, args.show_user, args.k, explain=not args.no_explain)
    except (RunFolderError, BadInputError, UnknownIdError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    exit_with(main)
