"""What the like head knows before any training: AUC and log-loss of its prior on every user.

    python -m mtrec.bench prior --dataset lastfm-2k [--collab-dim 32] [--negatives 1] [--seed 0]

The heads are built exactly as training builds them (`mtrec.model.build.build_heads`, leave-one-out
split, the training interactions only), with and without collaborative factors, and scored on every
validation and test user's like examples as the evaluation draws them (`mtrec.tasks.build_specs`:
on implicit data the held-out item against `--negatives` sampled unobserved ones). With factors on
implicit data the prior is calibrated on the fit's own hold-out; the raw (uncalibrated) log-odds are
shown beside it. No backbone is loaded: the like head reads nothing from the prompt at step 0.

The training split's own like rows (what the heads train on) are scored too: the priors were fit on
those interactions, so there they are in-sample. The gap between the training and the validation
column is how much better the prior looks on the rows the heads learn from than on new ones. With
`--stack-tail k` the rows stacking trains on are scored too (`model.stack_tail`: each user's newest k
training interactions, by the priors fitted without them): out-of-sample, like validation.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F

from mtrec import metrics
from mtrec.data.errors import DataError
from mtrec.data.registry import load_dataset
from mtrec.data.splits import ROLE_NAMES, TEST, TRAIN, VALID, Split, make_split
from mtrec.model.build import build_heads
from mtrec.model.collaborative import softmax_log_odds
from mtrec.model.stacking import prior_split, tail_mask
from mtrec.tasks import ExampleOptions, build_specs


CHUNK = 2048  # rows scored at once


def _chunked(score, n: int) -> torch.Tensor:
    """`score(rows)` over rows 0..n in slices of CHUNK, concatenated, without gradients: on implicit
    data each row's log-odds read a softmax over the whole catalog (the training role has ~100k rows)."""
    with torch.no_grad():  # one empty slice when there are no rows
        return torch.cat([score(slice(i, i + CHUNK)) for i in range(0, max(n, 1), CHUNK)])


def prior_rows(
    split: Split, collab_dim: int = 32, negatives: int = 1, like_threshold: float = 4.0, seed: int = 0,
    stack_tail: int = 0,
) -> list[dict]:
    """One row per prior (popularity/biases, factors, and on implicit data the raw factor log-odds):
    {"prior", "<role>/auc", "<role>/log_loss", "<role>/examples"} for the training (in-sample: the rows
    the heads train on), validation and test roles; with `stack_tail`, also "tail/…": the tail rows
    scored by the priors fitted without them (`mtrec.model.stacking`)."""
    ds = split.dataset
    table = torch.zeros(ds.num_items, 1)  # the item table plays no part in the like logit

    def heads_on(fit: Split) -> dict:
        return {dim: build_heads(ds, table, fit.train, 1, like_threshold, collab_dim=dim, split=fit, seed=seed,
                                 negatives_per_positive=negatives).eval()
                for dim in ((0, collab_dim) if collab_dim else (0,))}

    heads = heads_on(split)
    tail = tail_mask(split, stack_tail) if stack_tail else None
    opts = ExampleOptions(like_threshold=like_threshold, negatives_per_positive=negatives, seed=seed)
    plain = "user+item means and popularity" if ds.explicit else "popularity softmax"
    names = {0: f"{plain}, no factors"}
    if collab_dim:
        calibrated = "" if ds.explicit else ", calibrated"
        names[collab_dim] = f"collaborative factors (d={collab_dim}){calibrated}"
    rows = {name: {"prior": name} for name in names.values()}
    raw_name = f"collaborative factors (d={collab_dim}), raw log-odds"
    for role in (TRAIN, VALID, TEST) + (("tail",) if tail is not None else ()):
        if role == "tail":  # last: the stacked priors replace the others from here on
            specs = build_specs(split, TRAIN, ("like",), opts)
            specs, heads = specs.take(np.flatnonzero(tail[specs.interaction])), heads_on(prior_split(split, tail))
        else:
            specs = build_specs(split, role, ("like",), opts)
        users = torch.as_tensor(ds.user_idx[specs.interaction], dtype=torch.long)
        items = torch.as_tensor(specs.item, dtype=torch.long)
        labels = torch.as_tensor(specs.label, dtype=torch.float32)
        for dim, h in heads.items():
            logits = {names[dim]: _chunked(lambda c: h(torch.zeros(len(items[c]), 1), None, items[c], users[c])
                                           ["like_logit"], len(items))}
            if dim and not ds.explicit:
                factors = {"R": h.rec_user_factors, "T": h.rec_item_factors, "bias": h.item_bias}
                logits[raw_name] = _chunked(
                    lambda c: softmax_log_odds(factors, users[c], items[c, None], negatives)[:, 0], len(items))
            for name, zz in logits.items():
                row = rows.setdefault(name, {"prior": name})
                key = ROLE_NAMES.get(role, role)
                row[f"{key}/auc"] = metrics.auc(zz.numpy(), specs.label)
                row[f"{key}/log_loss"] = float(F.binary_cross_entropy_with_logits(zz, labels))
                row[f"{key}/examples"] = len(labels)
    order = [names[0], raw_name] + ([names[collab_dim]] if collab_dim else [])
    return [rows[n] for n in order if n in rows]


def markdown(rows: list[dict], dataset: str) -> str:
    lines = [
        f"Like prior on {dataset}, before any training (every user; AUC / log-loss):",
        "",
        "| prior | training rows (in-sample) AUC / log-loss | validation AUC / log-loss | test AUC / log-loss | "
        "examples (train / valid / test) |",
        "|---|---|---|---|---|",
    ]
    tail = "tail/auc" in rows[0]
    if tail:  # the stacking column
        lines[2] = lines[2].replace(" | examples (train", " | stacking's tail rows (priors fit without them) AUC / "
                                    "log-loss | examples (train").replace("test) |", "test / tail) |")
        lines[3] += "---|"
    roles = ("train", "valid", "test") + (("tail",) if tail else ())
    for r in rows:
        cells = [f"{r[f'{k}/auc']:.3f} / {r[f'{k}/log_loss']:.3f}" for k in roles]
        counts = " / ".join(f"{r[f'{k}/examples']:,}" for k in roles)
        lines.append(f"| {r['prior']} | " + " | ".join(cells) + f" | {counts} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtrec.bench prior", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a registered name (see `python -m mtrec.data list`)")
    p.add_argument("--collab-dim", type=int, default=32, help="width of the collaborative factors (0: none)")
    p.add_argument(
        "--negatives", type=int, default=1, help="implicit data: sampled unobserved items per held-out one"
    )
    p.add_argument(
        "--like-threshold", type=float, default=4.0, help="explicit data: rating >= this counts as a like"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stack-tail", type=int, default=0,
                   help="also score model.stack_tail's tail rows (each user's newest k training interactions) by "
                        "the priors fitted without them (0: off)")
    args = p.parse_args(argv)
    if args.collab_dim < 0 or args.negatives < 1 or args.stack_tail < 0:
        p.error("--collab-dim and --stack-tail must be >= 0 and --negatives >= 1")
    try:
        ds = load_dataset(args.dataset)
    except (DataError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    split = make_split(ds, "leave_one_out", seed=args.seed)
    rows = prior_rows(split, args.collab_dim, args.negatives, args.like_threshold, args.seed, args.stack_tail)
    print(markdown(rows, ds.name))
    return 0
