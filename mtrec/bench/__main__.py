"""`python -m mtrec.bench {accuracy,speed,learning,compare,pairs,prior,categories,export,update,serve,explain,friends} [options]`: dispatch to the benchmark's own `main(argv)`.

Each benchmark is imported only when asked for, so one that is missing or broken (or needs
optional packages) never stops the other from running."""

from __future__ import annotations

import importlib
import sys

from mtrec.cli import exit_with

BENCHMARKS = {
    "accuracy": ("mtrec.bench.accuracy", "models side by side on one split: baselines and mtrec variants"),
    "speed": ("mtrec.bench.speed", "training and ranking throughput (`speed recipes`: whole training recipes end to end)"),
    "learning": ("mtrec.bench.learning", "each training recipe's gain over step 0 at the step counts of 10, 20, 40 minutes"),
    "compare": ("mtrec.bench.compare", "two accuracy JSONs cell by cell: did a rerun give the same numbers?"),
    "pairs": ("mtrec.bench.pairs", "paired intervals between rows of two accuracy JSONs of the same split"),
    "prior": ("mtrec.bench.prior", "the like head's prior before training: AUC and log-loss on every user"),
    "categories": ("mtrec.bench.categories", "category preference of run folders against counting the history's categories"),
    "export": ("mtrec.bench.export", "the merged export against its run; int8 / bf16 speed and accuracy"),
    "update": ("mtrec.bench.update", "stale / priors-refit-only / updated models on the test split, with intervals"),
    "serve": ("mtrec.bench.serve", "a load test of the HTTP server: requests/s and latency at 1, 8, 32 clients"),
    "explain": ("mtrec.bench.explain", "faithfulness of occlusion explanations: removing the top-attributed items vs others"),
    "friends": ("mtrec.bench.friends", "friend recommendation: graph baselines and mtrec runs on held-out friends"),
}


def usage() -> str:
    lines = [
        "usage: python -m mtrec.bench {accuracy,speed,learning,compare,pairs,prior,categories,export,update,serve,explain,friends} [options]   (--help after the name for its options)",
        "",
    ]
    lines += [f"  {name:<9} {text}" for name, (_, text) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        choices = ", ".join(BENCHMARKS)
        print(f"{usage()}\n\nerror: unknown benchmark {name!r}; choose from: {choices}", file=sys.stderr)
        return 2
    module_name = BENCHMARKS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:  # a dependency of the benchmark is missing: show the real error
            raise
        print(
            f"the {name} benchmark is not available: {module_name} is not installed in this tree",
            file=sys.stderr,
        )
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    exit_with(main)
