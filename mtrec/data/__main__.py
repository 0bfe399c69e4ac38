"""Command line for the data layer.

python -m mtrec.data describe movielens-100k [--data-dir DIR] [--download] [--seed N]
python -m mtrec.data describe local:path/to/folder     (or hf:path/to/saved-DatasetDict)
python -m mtrec.data list
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from mtrec.cli import exit_with
from mtrec.data.errors import DataError
from mtrec.data.records import RecDataset
from mtrec.data.registry import available, load_dataset


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input data)."""
    parser = argparse.ArgumentParser(prog="python -m mtrec.data", description="Inspect mtrec data sets.")
    commands = parser.add_subparsers(dest="command", required=True)
    describe = commands.add_parser(
        "describe", help="print sizes, rating scale, cleaning notes and split sizes"
    )
    describe.add_argument("name", help="a data set name (see `list`), local:<folder> or hf:<folder>")
    describe.add_argument("--data-dir", help="folder holding the data-set folders (default: $MTREC_DATA_DIR)")
    describe.add_argument(
        "--download", action="store_true", help="fetch the official archive if files are missing"
    )
    describe.add_argument(
        "--seed", type=int, default=0, help="seed of the random order for untimed data sets"
    )
    commands.add_parser("list", help="list the data set names")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join([n for n in available() if n != "local"] + ["local:<folder>", "hf:<folder>"]))
        return 0
    options = {"download": True} if args.download else {}
    try:
        ds = load_dataset(args.name, args.data_dir, **options)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    print(describe_dataset(ds, seed=args.seed))
    return 0


def describe_dataset(ds: RecDataset, seed: int = 0) -> str:
    """A human-readable summary: sizes, scale, categories, raw counts, cleaning notes, split sizes."""
    from mtrec.data.splits import leave_one_out  # imported here: only `describe` needs it

    sections: list[tuple[str, list]] = [
        (
            ds.name,
            [
                ("users", f"{ds.num_users:,}"),
                ("items", f"{ds.num_items:,}"),
                ("interactions", f"{ds.num_interactions:,}"),
                (
                    "social edges",
                    f"{ds.num_social_edges:,}" + (f" ({ds.social_kind})" if ds.num_social_edges else ""),
                ),
                ("density", _percent(ds.density)),
                ("ratings", _scale(ds)),
                ("timestamps", "yes" if ds.timed else "no"),
                ("categories", f"{len(ds.categories):,}"),
            ],
        )
    ]
    raw = ds.notes.get("raw")
    if isinstance(raw, dict) and raw:
        sections.append(("raw counts (before cleaning)", [(k, _number(v)) for k, v in raw.items()]))
    if ds.notes.get("cleaning"):
        sections.append(("cleaning", [str(note) for note in ds.notes["cleaning"]]))
    split = leave_one_out(ds, seed=seed)
    order = "chronological" if ds.timed else f"random order, seed {seed}"
    sections.append(
        (
            f"leave-one-out split ({order})",
            [
                ("train", f"{len(split.train):,}"),
                ("valid", f"{len(split.valid):,}"),
                ("test", f"{len(split.test):,}"),
                ("users with < 3", f"{split.too_few_users:,} (all their interactions in train)"),
            ],
        )
    )
    return "\n".join(_aligned(sections))


def _aligned(sections: list[tuple[str, list]]) -> list[str]:
    """Titled sections of (label, value) rows or bullet strings; one label column, numbers right-aligned."""
    rows = [row for _, section in sections for row in section if isinstance(row, tuple)]
    label_width = max(len(label) for label, _ in rows)
    number_width = max(len(value.split(" ")[0]) for _, value in rows if value[:1].isdigit())
    lines: list[str] = []
    for title, section in sections:
        lines += ([""] if lines else []) + [title]
        for row in section:
            if isinstance(row, str):
                lines.append(f"  - {row}")
                continue
            label, value = row
            if value[:1].isdigit():
                head, _, tail = value.partition(" ")
                value = f"{head:>{number_width}}" + (f" {tail}" if tail else "")
            lines.append(f"  {label:<{label_width}}  {value}")
    return lines


def _scale(ds: RecDataset) -> str:
    if not ds.explicit:
        return "implicit"
    if ds.rating_scale is None:
        return "explicit"
    low, high = ds.rating_scale
    return f"explicit {low:g}-{high:g}"


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.3f}%"


def _number(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


if __name__ == "__main__":
    exit_with(main)
