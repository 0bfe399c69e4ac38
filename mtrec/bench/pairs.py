"""`python -m mtrec.bench pairs A.json:ROW B.json:ROW [...]`: paired 95% bootstrap intervals between
rows of *different* accuracy-bench result files of the same split, e.g. the multi-task model trained
with one setting (`--out results/warm-seq`) against another (`--out results/warm-hybrid`). Each
argument names a result file and a row label; the first row is compared with each of the others, on
the targets both were scored on (`mtrec.bench.intervals.compare`, the accuracy table's own pairs).
The files must come from the same split (their fingerprints are checked)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtrec.bench import intervals
from mtrec.bench.accuracy import row_records


def parse_row(spec: str) -> tuple[Path, str]:
    path, sep, label = spec.partition(":")
    if not sep or not label:
        raise ValueError(f"{spec!r}: expected RESULT.json:ROW LABEL, e.g. results/warm-seq/accuracy_movielens-100k_quick.json:"
                         "'mtrec multi-task'")
    return Path(path), label


def load_row(path: Path, label: str) -> tuple[dict, str]:
    """The records of row `label` of result file `path`, and the file's split fingerprint."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such result file")
    result = json.loads(path.read_text(encoding="utf-8"))
    records = row_records(result)
    if label not in records:
        raise KeyError(f"{path}: no row {label!r} (rows: {', '.join(sorted(records))})")
    return records[label], json.dumps(result["split"], sort_keys=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtrec.bench pairs", description=__doc__.split("\n\n")[0])
    p.add_argument("rows", nargs="+", metavar="RESULT.json:ROW", help="the reference row first, then the others")
    p.add_argument("--metrics", nargs="+", default=list(intervals.COMPARED), choices=list(intervals.COMPARED))
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    try:
        if len(args.rows) < 2:
            raise ValueError("give at least two rows: the reference, then one or more to compare with it")
        loaded = [(spec, *load_row(*parse_row(spec))) for spec in args.rows]
        (ref_spec, ref, split), others = loaded[0], loaded[1:]
        for spec, _, their_split in others:
            if their_split != split:
                raise ValueError(f"{spec}: another split than {ref_spec}'s: rows of different splits do not pair")
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    for spec, rec, _ in others:
        for metric in args.metrics:
            c = intervals.compare(rec, ref, metric, args.resamples, args.seed)
            if c is not None:
                print(intervals.reading(c, spec, ref_spec, metric))
    return 0
