"""Compare two accuracy results, cell by cell: did a second run with the same seed give the same numbers?

    python -m mtrec.bench compare results/a/accuracy_movielens-100k_quick.json \\
        results/b/accuracy_movielens-100k_quick.json [--tolerance 0]

Compares every table cell but the training time (metrics, epochs or steps, notes), then every
other number and setting in the two JSONs except timings, paths and machine details (see
`report.strip_volatile`). Prints each difference; exits 0 when there is none beyond `--tolerance`
(absolute, on numbers), 1 otherwise, 2 on unreadable input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from mtrec.bench.report import strip_volatile

TABLE_KEYS_SKIPPED = ("train_seconds",)


def _same(a, b, tolerance: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b):
            return True
        return abs(a - b) <= tolerance
    return a == b


def table_differences(first: dict, second: dict, tolerance: float = 0.0) -> tuple[int, list[str]]:
    """(cells compared, one line per differing cell) over the two results' table rows."""
    rows_b = {r["model"]: r for r in second["rows"]}
    cells, out = 0, []
    for row in first["rows"]:
        other = rows_b.pop(row["model"], None)
        if other is None:
            out.append(f"{row['model']}: only in the first")
            continue
        for key, value in row.items():
            if key in TABLE_KEYS_SKIPPED or key == "model":
                continue
            cells += 1
            if not _same(value, other.get(key), tolerance):
                out.append(f"{row['model']} / {key}: {value!r} against {other.get(key)!r}")
    out += [f"{name}: only in the second" for name in rows_b]
    return cells, out


def leaf_differences(a, b, tolerance: float = 0.0, path: str = "") -> list[str]:
    """Paths where two JSON trees (timings stripped) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in the {'first' if k in a else 'second'}")
            else:
                out += leaf_differences(a[k], b[k], tolerance, f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in leaf_differences(x, y, tolerance, f"{path}[{i}]")]
    return [] if _same(a, b, tolerance) else [f"{path}: {_short(a)} against {_short(b)}"]


# What must match for two same-seed CPU runs to agree bit for bit: torch's vector kernel level sets the
# order of float sums in reductions and matrix products, and the thread count how work is split.
BITWISE_KEYS = ("cpu_capability", "threads", "torch")


def machine_notes(first: dict, second: dict) -> list[str]:
    """One line per environment field that differs between the runs and changes float sums: there,
    late digits (and with them an early-stopping epoch) may differ although both runs are correct. A
    field one run did not record (older JSONs) is not noted."""
    a, b = first.get("environment") or {}, second.get("environment") or {}
    return [f"note: the runs differ in {key} ({a.get(key)!r} against {b.get(key)!r}): float sums run in another "
            "order, so cells may differ without any fault; compare runs made on one kind of machine"
            for key in BITWISE_KEYS if None not in (a.get(key), b.get(key)) and a.get(key) != b.get(key)]


def _short(x) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def _load(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: not a readable accuracy JSON ({e})") from None
    if not isinstance(data, dict) or "rows" not in data:
        raise SystemExit(f"{path}: no 'rows' table: expected a file written by `python -m mtrec.bench accuracy`")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtrec.bench compare", description=__doc__.split("\n\n")[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--tolerance", type=float, default=0.0, help="absolute difference allowed on numbers (default 0)")
    args = p.parse_args(argv)
    try:
        first, second = _load(args.first), _load(args.second)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    cells, table = table_differences(first, second, args.tolerance)
    first.pop("repeat_check", None)  # present only in a run asked for it
    second.pop("repeat_check", None)
    rest = [d for d in leaf_differences(strip_volatile(first), strip_volatile(second), args.tolerance)
            if not d.startswith("/rows")]
    for line in machine_notes(first, second):
        print(line)
    print(f"table: {cells - len(table)} of {cells} cells equal" + (f" (tolerance {args.tolerance})" if args.tolerance else ""))
    for line in table:
        print(f"  {line}")
    print(f"everything else (settings, grids, histories; timings and paths left out): {len(rest)} difference(s)")
    for line in rest[:50]:
        print(f"  {line}")
    if len(rest) > 50:
        print(f"  ... and {len(rest) - 50} more")
    return 0 if not table and not rest else 1
