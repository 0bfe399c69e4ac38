"""Outputs of the accuracy benchmark: table rows, the JSON with every number and setting, a
markdown table and a bar plot (matplotlib, optional: the plot is skipped with a note without it)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

# Table columns: (key in a row, header). Rows hold None where a model does not define a metric.
COLUMNS = (
    ("rmse", "RMSE"),
    ("mae", "MAE"),
    ("auc", "AUC"),
    ("log_loss", "log-loss"),
    ("hr@10", "HR@10"),
    ("ndcg@10", "NDCG@10"),
    ("mrr@10", "MRR@10"),
    ("cat_ndcg@5", "categories NDCG@5"),
)
# mtrec's metric names (`pipeline.summarise`) -> table keys; baselines already use the table keys.
MTREC_KEYS = {
    "rating/rmse": "rmse",
    "rating/mae": "mae",
    "like/auc": "auc",
    "like/log_loss": "log_loss",
    "recommendation/hr@10": "hr@10",
    "recommendation/ndcg@10": "ndcg@10",
    "recommendation/mrr@10": "mrr@10",
    "categories/ndcg@5": "cat_ndcg@5",
}


def _number(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def baseline_row(label: str, entry: dict) -> dict:
    """A table row for one tuned baseline (or a skipped one)."""
    if "skipped" in entry:
        return {
            "model": label,
            **{k: None for k, _ in COLUMNS},
            "train_seconds": None,
            "epochs_or_steps": None,
            "notes": f"skipped: {entry['skipped']}",
            "kind": "baseline",
        }
    test, info = entry["test"], entry["info"]
    shown = ", ".join(f"{k}={v}" for k, v in _grid_point(entry).items() if k != "device") or "nothing to tune"
    notes = [
        shown
        + (
            f" (best of {len(entry['grid'])} on validation {entry['select_by']})"
            if len(entry["grid"]) > 1
            else ""
        )
    ]
    if info.get("budget_stopped"):
        notes.append("CUT SHORT by the time budget")
    elif info.get("epoch_capped"):
        still = ", still improving" if info.get("best_epoch") == info.get("epochs_run") else ""
        notes.append(f"CUT SHORT at the epoch limit ({entry.get('max_epochs', info['epochs_run'])}{still})")
    elif info.get("stopped_early"):
        notes.append("early-stopped")
    return {
        "model": label,
        **{k: _number(test.get(k)) for k, _ in COLUMNS},
        "train_seconds": info.get("fit_seconds"),
        "epochs_or_steps": _epochs_text(entry["class"], info),
        "notes": "; ".join(notes),
        "kind": "baseline",
    }


def _grid_point(entry: dict) -> dict:
    """The grid point (as given, without defaults) whose hyper-parameters were selected."""
    for g in entry["grid"]:
        if all(entry["selected"].get(k) == v for k, v in g["hparams"].items()):
            return g["hparams"]
    return {}


def _epochs_text(cls: str, info: dict) -> str:
    if cls in ("Popularity", "ItemKNN"):
        return "closed form"
    if cls == "BiasBaseline":
        return f"{info['epochs_run']} ALS sweeps"
    return f"{info['epochs_run']} epochs (best {info['best_epoch']})"


def mtrec_row(label: str, report: dict, heldout: bool = False) -> dict:
    """A table row for one mtrec variant (its held-out-paraphrase evaluation with `heldout`)."""
    test = report["test_heldout" if heldout else "test"]
    train, cfg = report["train"], report["config"]["train"]
    notes = [report["note"]] if report["note"] else []
    if heldout:
        notes = ["same model, first held-out paraphrase of each prompt kind (unseen in training)"]
    minutes = cfg["max_minutes"]
    if minutes is not None and train["seconds"] >= 60 * minutes and train["steps"] < cfg["max_steps"]:
        notes.append(f"CUT SHORT by train.max_minutes={minutes}")
    steps = f"{train['steps']} step{'s' * (train['steps'] != 1)} (best at {train['best']['step']})"
    row = {
        "model": label + (" (unseen prompts)" if heldout else ""),
        **{k: None for k, _ in COLUMNS},
        "train_seconds": train["seconds"],
        "epochs_or_steps": steps,
        "notes": "; ".join(notes),
        "kind": "mtrec",
    }
    for name, key in MTREC_KEYS.items():
        # cold-items protocol: the ranking columns are the ranks among the held-out items
        held = name.replace("recommendation/", "recommendation/heldout/")
        row[key] = _number(test.get(held if held in test else name))
    return row


def table_rows(baselines: dict, mtrec: dict, comparisons: list[dict] = ()) -> list[dict]:
    """The table's rows; with `comparisons` (`mtrec.bench.accuracy.comparisons`) each row names its
    reference row and its NDCG@10 (else AUC, else RMSE) difference against it, with the interval."""
    rows = [baseline_row(label, entry) for label, entry in baselines.items()]
    for label, report in mtrec.items():
        rows.append(mtrec_row(label, report))
        if "test_heldout" in report:
            rows.append(mtrec_row(label, report, heldout=True))
    users = {label: e["test"].get("n") for label, e in baselines.items() if "test" in e}
    users |= {label: r["test"].get("users") for label, r in mtrec.items()}
    for row in rows:
        row["users"] = users.get(row["model"])
        mine = [c for c in comparisons if c["row"] == row["model"] and c["reference"] == _reference(row, comparisons)
                and c.get("group") is None]
        first = next((c for m in ("ndcg@10", "auc", "rmse") for c in mine if c["metric"] == m), None)
        row["reference"] = first and first["reference"]
        row["vs_reference"] = first and _interval_text(first)
    return rows


def _reference(row: dict, comparisons: list[dict]) -> str | None:
    """The row's own reference: the first pair listed for it (the extra pairs come after)."""
    return next((c["reference"] for c in comparisons if c["row"] == row["model"]), None)


def _interval_text(c: dict) -> str:
    verdict = "no measurable difference" if c["better"] is None else ("better" if c["better"] == "a" else "worse")
    return f"{c['metric']} {c['diff']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}], {verdict}"


def _cell(x, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _header(result: dict) -> list[str]:
    """What was compared and how: split, test users, profile, budgets, command-line overrides."""
    s, split = result["settings"], result["split"]
    title = "QUICK (CPU-sized, not headline numbers)" if s["quick"] else "full"
    if s.get("test_users") is not None:  # a smoke run: every row on one subset
        who = "SMOKE RUN: every row on " + ("all of them" if not s["test_users"] else
                                             f"a seeded subset of {s['test_users']}")
    else:
        lm = split.get("lm_users_evaluated", split["test_users_evaluated"])
        who = ("every row without a backbone on all of them; the language-model rows on "
               + ("all of them too" if not s.get("lm_users") else f"a seeded sample of {lm}"))
    cli = " ".join(s["cli_overrides"])
    return [
        f"# Accuracy on {result['dataset']}: {title}",
        "",
        (
            f"Split: {split['method']} ({split['order_rule']} order), {split['sizes']}, fingerprint "
            f"`{split['fingerprint'][:12]}`; every model below trained on its TRAIN part and tuned / "
            "early-stopped on VALID."
        ),
        (
            f"Protocol: {result.get('protocol_note', 'warm: leave-one-out, full-catalog ranking')}. "
            f"Test: {split['test_users_evaluated']} users ({who}), the user's earlier "
            f"items excluded, ties counted against the target. Seed {result['seed']}."
        ),
        (
            f"Profile `{s['profile']}`: mtrec overrides `{' '.join(s['mtrec_overrides'])}`; baselines: max "
            f"{s['baseline_max_epochs']} epochs, patience {s['baseline_patience']}, time budget "
            f"{s['baseline_seconds']} s per fit."
        ),
        f"Command-line overrides (they win over the profile): `{cli}`." if cli else "",
        "",
    ]


def markdown(result: dict) -> str:
    """The markdown report: a header with the settings that matter, the table, footnotes."""
    lines = _header(result) + [
        "| model | " + " | ".join(h for _, h in COLUMNS)
        + " | users | vs (paired 95% interval) | train time (s) | epochs / steps | notes |",
        "|---" * (len(COLUMNS) + 6) + "|",
    ]
    for row in result["rows"]:
        vs = f"{row['reference']}: {row['vs_reference']}" if row.get("reference") else "—"
        cells = [
            row["model"],
            *(_cell(row[k]) for k, _ in COLUMNS),
            _cell(row.get("users")),
            vs,
            _cell(row["train_seconds"], 1),
            _cell(row["epochs_or_steps"]),
            row["notes"],
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines += ["", *result["summary"]]
    if result.get("comparisons"):
        c0 = result["comparisons"][0]
        for group, table in (result.get("groups") or {}).items():
            lines += ["", f"Users: {group}.", "", "| model | users | RMSE | AUC | HR@10 | NDCG@10 |", "|---|---|---|---|---|---|"]
            for label, m in table.items():
                lines.append(f"| {label} | {m['users']} | " + " | ".join(_cell(m.get(k)) for k in ("rmse", "auc", "hr@10", "ndcg@10")) + " |")
        lines += ["", f"Paired differences, row - reference, on the targets both were scored on ({c0['level']:.0%} "
                  f"percentile bootstrap over users, {c0['resamples']} resamples, seed {result['seed']}; an "
                  "interval holding 0 is no measurable difference):", "",
                  "| users | row | reference | metric | difference [interval] | users compared | reading |",
                  "|---|---|---|---|---|---|---|"]
        for c in result["comparisons"]:
            verdict = "no measurable difference" if c["better"] is None else (
                "row better" if c["better"] == "a" else "reference better")
            lines.append(f"| {c.get('group') or 'all'} | {c['row']} | {c['reference']} | {c['metric']} | {c['diff']:+.4f} "
                         f"[{c['low']:+.4f}, {c['high']:+.4f}] | {c['n']} | {verdict} |")
    commits = sorted({str(c) for c in result.get("row_commits", {}).values()})
    if commits:
        lines += ["", f"Rows computed at commit{'s' * (len(commits) > 1)} {', '.join(commits)} "
                      "(a rerun loads finished rows from the run's `rows/` folder)."]
    if result.get("repeat_check"):
        rc = result["repeat_check"]
        lines.append(
            f"Repeat check: {rc['model']} refitted with seed {result['seed']}: identical test numbers."
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> str | None:
    """NDCG@10 and RMSE bars per model into `path` (PNG). Returns a note when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: plot skipped (pip install matplotlib)"
    panels = [
        (k, h)
        for k, h in (("ndcg@10", "NDCG@10 (test, full catalog)"), ("rmse", "RMSE (test)"))
        if any(r[k] is not None for r in rows)
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 0.35 * len(rows) + 1.5), squeeze=False)
    for ax, (key, header) in zip(axes[0], panels):
        shown = [r for r in rows if r[key] is not None]
        colours = ["tab:blue" if r["kind"] == "mtrec" else "tab:gray" for r in shown]
        ax.barh(np.arange(len(shown)), [r[key] for r in shown], color=colours)
        ax.set_yticks(np.arange(len(shown)), [r["model"] for r in shown], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(header)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def jsonable(x):
    """Plain JSON: numpy scalars to Python, tuples to lists, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(result: dict, path: Path) -> None:
    path.write_text(json.dumps(jsonable(result), indent=1), encoding="utf-8")


# Keys whose values change from run to run on the same seed (clock, machine, paths).
VOLATILE_KEYS = {
    "run_dir",
    "environment",
    "created",
    "out_dir",
    "files",
    "command",
    "summary",
    "tokens_per_second",
    "phases",  # seconds per training phase
    "peak_rss_kib",
    "row_commits",  # a row computed by another commit holds the same numbers
}


def strip_volatile(x):
    """`x` without timings, paths and machine details: what must be equal between two runs of one seed."""
    if isinstance(x, dict):
        return {
            k: strip_volatile(v)
            for k, v in x.items()
            if k not in VOLATILE_KEYS and not k.endswith("seconds") and not k.endswith("_per_second")
        }
    if isinstance(x, list):
        return [strip_volatile(v) for v in x]
    return x
