"""Accuracy benchmark: classic baselines and mtrec variants trained and scored on one split.

    python -m mtrec.bench accuracy --dataset movielens-100k|lastfm-2k|ciao [--quick] [--seed 0]
        [--out results/] [--backbone SPEC] [--repeat-check] [--test-users N]
        [--protocol warm|cold-items|short-history] [--lm-rows all|controls|multi|tasks] [--text-control SPEC]
        [--recipe cpu|gpu] [--set section.key=value ...]

Everything is built from one base config (the library defaults, the profile's overrides, then
`--set`), so the baselines and every mtrec variant see the same split (checked by fingerprint).
Rows without a backbone (the baselines, mtrec's priors alone, content kNN, the user like-ratio) are
tested on every test user; the language-model rows on the profile's seeded sample (`lm_users`),
the same for every variant; `--test-users N` (smoke runs, labelled so) puts every row on one seeded
subset. Every row names its reference row, and each comparison is a paired bootstrap interval
(`mtrec.bench.intervals`) on the targets both rows were scored on: in the markdown and the JSON.
Resumable: each finished row is a file under ``<out>/rows/<stem>/`` (`mtrec.bench.resume`); the same
command run again loads those and computes only the rest, then writes the whole table.

Writes ``accuracy_<dataset>[_quick].json`` (every number and setting, each row's per-target
records), ``.md`` (the table and the paired differences) and ``.png`` (NDCG@10 and RMSE bars) into
`--out`; run folders go to
``<out>/runs/<dataset>[-quick]/``. Same seed, same numbers on a CPU (`--repeat-check` checks one
model in the run; the tests check whole runs).

Profiles: `FULL` is sized for one GPU (it mirrors configs/*-gpu.yaml; hours per data set, most of
it in the mtrec trainings). `QUICK` (``--quick``) is sized for a 2-core CPU with the bundled
SmolLM2-135M: 30 multi-task steps of 8 prompts (LoRA on the attention projections), single-task
models with the same examples, the ablations, 20 validation users and a 500-user test sample for
the language-model rows; the README records
its measured wall time per data set. The quick profile stops nothing by the clock (steps and epochs
only), so a second run with the same seed gives the same numbers; FULL keeps a time budget per
baseline fit as a guard, and a fit it cuts is marked in the table.

`--recipe cpu` (with ``--quick``): the CPU profile of the language-model rows, ``RECIPES["cpu"]``: the
fastest CPU recipe (the bundled MiniLM, top 2 of 6 layers over cached activations, 2 epochs over
fixed batches) with stacked priors, the data set's ranking prior, on MovieLens-100K the item table
from the backbone's encoding of item text (``model.item_init=backbone``) and, on Last.fm-2k, the like
head's text term (``model.like_text``); under 90 minutes per data set
with ``--lm-rows controls`` on 2 cores (README). Its overrides come after the profile's and before
``--set``; the rows' keys read the resulting config only, so the same settings spelled with ``--set``
find the same rows. `--recipe gpu` (without ``--quick``): the full profile with the same modelling
choices (``model.stack_tail=5``, the data set's ranking prior and like text term), as
``configs/*-gpu.yaml`` now set them; not yet measured.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mtrec.bench import baseline_suite, intervals, mtrec_suite, report
from mtrec.bench.baselines import user_set_sha256
from mtrec.bench.resume import RowStore
from mtrec.config import ConfigError, load_config
from mtrec.data.splits import TEST
from mtrec.pipeline import eval_specs
from mtrec.tasks import example_options
from mtrec.training import load_split

DATASETS = ("movielens-100k", "lastfm-2k", "ciao", "synthetic")  # synthetic: tests and smoke runs


@dataclass(frozen=True)
class Profile:
    """How big the benchmark is. Every field goes into the JSON."""

    name: str
    mtrec_overrides: tuple[str, ...]  # applied to the defaults for every mtrec variant
    dataset_overrides: dict  # dataset -> extra overrides
    lm_users: int  # test users the language-model rows are scored on, a seeded sample (0 = all)
    baseline_max_epochs: int
    baseline_patience: int
    baseline_seconds: float | None  # time budget per baseline fit; a fit cut by it is marked in the table


FULL = Profile(
    name="full (one GPU)",
    mtrec_overrides=(
        "data.max_history=50",  # the design's history length
        "data.max_social=20",  # friends' items (ignored without a social graph)
        "prompt.max_length=384",
        "model.lora_r=16",
        "model.lora_alpha=32",
        "train.batch_size=64",
        "train.max_steps=3000",  # an upper bound: early stopping ends most runs before it
        "train.warmup_steps=100",
        "train.lr=5e-4",
        "train.head_lr=2e-3",
        "train.eval_every=250",
        "train.eval_users=0",  # validate on every user
        "train.eval_batch_size=256",
        "train.patience=4",
        "train.early_stopping_metric=valid/recommendation/ndcg@10",  # single-task runs use their task's
        "train.mixed_precision=auto",  # bf16 on the GPU
        "train.tensorboard=false",  # the benchmark's JSON holds the numbers
    ),
    dataset_overrides={
        "movielens-100k": ("data.max_social=0",),  # no social graph
        "lastfm-2k": ("model.item_dim=256", "train.max_steps=4000"),  # 17,632 artists: a narrower item table
        "ciao": ("model.item_dim=256", "train.max_steps=6000"),  # 105,096 items, 268k training ratings
    },
    lm_users=0,  # every test user
    baseline_max_epochs=200,
    baseline_patience=10,
    baseline_seconds=1800.0,
)

QUICK = Profile(
    name="quick (2-core CPU)",
    mtrec_overrides=(
        "data.max_history=10",  # short prompts: a CPU step costs ~linear in tokens
        "data.max_social=5",
        "prompt.max_length=128",
        "prompt.max_title_tokens=12",
        "prompt.max_text_tokens=24",
        "model.lora_r=8",
        "model.lora_alpha=16",
        "model.lora_targets=attention",  # attention projections only: ~2x faster CPU steps than all
        # Items start random: encoding a catalog with the backbone takes ~3 min for MovieLens' 1,682
        # items on such a CPU and hours for Last.fm's 17,632 or Ciao's 105,096, and the random-init
        # variant could not reuse the cache. `--set model.item_init=backbone` restores it.
        "model.item_init=random",
        "train.batch_size=8",
        "train.max_steps=30",  # per multi-task model; single-task models get its examples per task
        "train.warmup_steps=4",
        "train.lr=1e-3",  # higher rates for a short run (as configs/quickstart.yaml)
        "train.head_lr=3e-3",
        "train.eval_every=0",  # validate before training and at the end only
        "train.eval_users=20",  # evaluating one prompt costs ~0.2 s on such a CPU
        "train.eval_batch_size=32",
        "train.patience=0",
        "train.early_stopping_metric=valid/loss",  # defined for every task subset
        "train.tensorboard=false",
        "train.log_every=10",
    ),
    dataset_overrides={
        "movielens-100k": ("data.max_social=0",),
        "lastfm-2k": ("model.item_dim=128",),  # a small item table for the big catalogs
        "ciao": ("model.item_dim=128",),
    },
    # a seeded sample for the language-model rows (~3.5 prompts a user); every row without a
    # backbone is scored on every user, and each comparison is made on the users both rows have
    lm_users=500,
    baseline_max_epochs=50,
    baseline_patience=5,
    # no clock anywhere in this profile (steps and epochs only): a second run gives the same numbers
    baseline_seconds=None,
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mtrec.bench accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset", required=True, choices=DATASETS, help="data set (synthetic: tests and smoke runs)"
    )
    p.add_argument("--quick", action="store_true", help="CPU-sized profile (~30 min per data set on 2 cores)")
    p.add_argument("--seed", type=int, default=0, help="training seed of every model (the split stays fixed)")
    p.add_argument("--out", default="results", help="folder for the JSON, markdown, plot and run folders")
    p.add_argument(
        "--backbone", help="model.backbone of the mtrec variants (default: the bundled SmolLM2-135M)"
    )
    p.add_argument(
        "--repeat-check", action="store_true", help="refit one cheap model and require equal numbers"
    )
    p.add_argument(
        "--test-users", type=int,
        help="smoke runs: score every row on this seeded subset of test users (0 = all); default: rows "
             "without a backbone on every user, language-model rows on the profile's seeded sample",
    )
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of users per interval")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="warm",
                   help="warm: leave-one-out; cold-items: a seeded 20%% of the items held out, each user's "
                        "newest held-out interaction the test target, ranked among the held-out items")
    p.add_argument("--lm-rows", choices=mtrec_suite.ROW_SETS,
                   help="language-model rows to train: all (single-task models and ablations too), controls "
                        "(multi-task, random-init backbone, MiniLM backbone), multi (the multi-task model alone, "
                        "no unseen-prompt pass) or tasks (multi-task and single-task models, no unseen-prompt "
                        "pass); default: all on warm, controls on the other protocols. Rows "
                        "finished by one set are reused by the others")
    p.add_argument("--text-control", default=mtrec_suite.TEXT_CONTROL, metavar="SPEC",
                   help="backbone of the item-text control row (default: the bundled all-MiniLM-L6-v2; "
                        "none: no such row)")
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="cpu (with --quick): the language-model rows' CPU profile (the fastest CPU recipe with "
                        "stacked priors; under 90 min per data set with --lm-rows controls on 2 cores); gpu "
                        "(without --quick): the full profile with the same stacked priors, ranking prior and "
                        "like text term")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="extra config override for every mtrec variant and the split (repeatable)",
    )
    args = p.parse_args(argv)
    if args.recipe and RECIPES[args.recipe][0] != args.quick:
        p.error(f"--recipe {args.recipe} goes " + ("with --quick" if RECIPES[args.recipe][0] else "without --quick"))
    return args


# the modelling choices both recipes make per data set: the sequential prior where the split has an
# order to read (Last.fm's has none: README; Ciao unmeasured); the like text term on Last.fm, whose
# like rows are an observed artist against an unobserved one (on MovieLens, rating >= 4, the history's
# text similarity does not predict a like: README; Ciao unmeasured); on MovieLens the item table from
# the backbone's encoding of each movie's text (the quick profile starts it random; like AUC +0.008 on
# MovieLens-100K: README; on Last.fm's 17,632 artists it was tried and not kept)
DATASET_CHOICES = {"movielens-100k": ("model.ranking_prior=both", "model.item_init=backbone"),
                   "lastfm-2k": ("model.ranking_prior=factors", "model.like_text=10"),
                   "ciao": ("model.ranking_prior=factors",)}

# --recipe -> (its profile: quick or not, overrides after the profile's and the protocol's, per-data-set
# overrides after those)
RECIPES = {
    # the fastest CPU recipe (README, "Learning per CPU hour") with stacked priors
    "cpu": (True, ("model.backbone=bundled:minilm-l6", "model.lora_targets=[query,value]", "model.train_top_layers=2",
                   "train.max_steps=1772", "train.fixed_batches=886", "train.eval_users=200", "model.stack_tail=5"),
            DATASET_CHOICES),
    # the full profile (configs/*-gpu.yaml: every layer, longer prompts, early-stopped) with the same
    # modelling choices; not yet measured (no session has had a GPU)
    "gpu": (False, ("model.stack_tail=5",), DATASET_CHOICES),
}

# protocol -> (overrides after the profile's, what the table says about it)
PROTOCOLS = {
    "warm": ((), "warm: leave-one-out, full-catalog ranking"),
    # the item table from the backbone's encoding of item text: a held-out item has nothing else
    "cold-items": (("data.split=cold_items", "model.item_init=backbone"),
                   "cold items: a seeded 20% of the catalog held out with all its interactions (absent from "
                   "training, every prior and every prompt); per user the newest held-out interaction is the "
                   "test target, ranked among the held-out items (HR/NDCG/MRR; full catalog in the JSON); "
                   "like AUC with negatives from held-out items only. Popularity and every collaborative "
                   "prior carry no information among held-out items (all tie: ranked last)"),
    "short-history": (("data.split=short_history",),
                      "short history: leave-one-out, then a seeded 30% of the users keep only their first 3-5 "
                      "training interactions (the rest of their training rows dropped); those users are "
                      "reported apart from the others"),
}


def lm_rows_of(args: argparse.Namespace) -> str:
    """`--lm-rows`, or its default: every row on the warm protocol, the controls on the others."""
    return args.lm_rows or ("all" if args.protocol == "warm" else "controls")


def base_overrides(args: argparse.Namespace, profile: Profile) -> list[str]:
    """Profile, then data set, then protocol, then command line: later overrides win."""
    out = [f"data.dataset={args.dataset}", f"run.seed={args.seed}", f"run.name=bench-{args.dataset}"]
    out += list(profile.mtrec_overrides) + list(profile.dataset_overrides.get(args.dataset, ()))
    out += list(PROTOCOLS[getattr(args, "protocol", "warm")][0])
    recipe = getattr(args, "recipe", None)
    if recipe:
        _, common, per_dataset = RECIPES[recipe]
        out += list(common) + list(per_dataset.get(args.dataset, ()))
    if args.backbone:
        out.append(f"model.backbone={args.backbone}")
    return out + list(args.overrides)


def test_user_set(split, cfg, n: int) -> np.ndarray:
    """The users whose TEST targets are evaluated: the same seeded subset `pipeline.eval_specs` picks
    for the mtrec variants, so baselines and mtrec are scored on the very same targets."""
    specs = eval_specs(split, ["recommendation"], example_options(cfg), TEST, n, cfg.run.seed)
    return np.unique(split.dataset.user_idx[specs.interaction]).astype(np.int64)


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": _cpus(),
        # the vector kernels torch dispatched to (AVX2, AVX512, ...): they set the order of float sums,
        # so same-seed runs agree bit for bit only on the same level (and thread count)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _cpus() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def summary_lines(mtrec: dict) -> list[str]:
    """Multi-task vs single-task wall time and budgets, in words for the markdown."""
    multi = mtrec.get("mtrec multi-task")
    singles = {k: v for k, v in mtrec.items() if k.startswith("mtrec single-task")}
    if not multi or not singles:
        return []
    drawn = multi["drawn_examples"]
    single_train = sum(v["train"]["seconds"] for v in singles.values())
    budgets = ", ".join(
        f"{k.removeprefix('mtrec single-task ')}: {v['extra']['examples_budget']} budgeted, "
        f"{sum(v['drawn_examples'].values())} drawn"
        for k, v in singles.items()
    )
    line = (
        f"Multi-task model: {multi['train']['seconds']:.1f} s of training for all tasks, examples drawn "
        f"per prompt kind {drawn}. Single-task models: {single_train:.1f} s of training in total, each "
        f"given as many examples of its task as the multi-task model drew ({budgets})."
    )
    return [line]


def run(args: argparse.Namespace) -> dict:
    """The benchmark: split, baselines, mtrec variants, table. Returns the result dict."""
    profile = QUICK if args.quick else FULL
    base = load_config(None, base_overrides(args, profile))
    if base.train.num_threads:
        torch.set_num_threads(base.train.num_threads)
    split = load_split(base)
    smoke = args.test_users is not None
    lm_users = args.test_users if smoke else profile.lm_users
    users = test_user_set(split, base, args.test_users if smoke else 0)  # rows without a backbone
    lm_set = test_user_set(split, base, lm_users)
    lm_rows = lm_rows_of(args)
    out_dir = Path(args.out)
    stem = f"accuracy_{args.dataset}" + ("_quick" if args.quick else "")
    stem += "" if args.protocol == "warm" else f"_{args.protocol}"
    result = {
        "benchmark": "accuracy",
        "dataset": args.dataset,
        "protocol": args.protocol,
        "protocol_note": PROTOCOLS[args.protocol][1],
        "seed": args.seed,
        "command": sys.argv,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": environment(),
        "settings": {
            **asdict(profile),
            "profile": profile.name,
            "quick": args.quick,
            "test_users": args.test_users,  # smoke runs only; None: the protocol below
            "lm_users": lm_users,
            "cli_overrides": list(args.overrides),
            "recipe": args.recipe,
            "lm_rows": lm_rows,
            "base_config": base.to_dict(),
        },
        "split": {
            "method": split.method,
            "order_rule": split.order_rule,
            "sizes": split.sizes(),
            "fingerprint": mtrec_suite.split_fingerprint(split),
            "test_users_evaluated": len(users),
            "test_users_sha256": user_set_sha256(users),
            "lm_users_evaluated": len(lm_set),
            "lm_users_sha256": user_set_sha256(lm_set),
        },
    }
    # one file per finished row: a rerun of the same command skips what an earlier run finished; the
    # baselines' rows are keyed by what they read, so a knob of mtrec's own does not refit them
    store = RowStore(out_dir / "rows" / stem, row_key(result, args))
    baseline_store = RowStore(store.folder, baseline_key(result, args, base))
    started = time.perf_counter()
    print(f"[baselines] {args.dataset}: {len(users)} test users (rows stored in {store.folder})")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kw = {"seed": args.seed, "max_epochs": profile.baseline_max_epochs, "patience": profile.baseline_patience}
    result["baselines"] = baseline_suite.run_baselines(
        split,
        users,
        example_options(base),
        quick=args.quick,
        max_seconds=profile.baseline_seconds,
        device=device,
        prior=prior_settings(base),
        store=baseline_store,
        **kw,
    )
    if args.repeat_check:
        result["repeat_check"] = baseline_suite.repeat_check(
            result["baselines"], split, users, seed=args.seed, patience=profile.baseline_patience
        )
    run_root = out_dir / "runs" / (stem.removeprefix("accuracy_").replace("_", "-"))
    control = mtrec_suite.text_control(args.text_control)
    result["text_control_row"] = control.label if control else None
    result["mtrec"] = mtrec_suite.run_all(base, split, run_root, lm_users, store=store, rows=lm_rows,
                                        control=args.text_control,
                                        # the unseen-prompt row reads warm data; elsewhere it would double the
                                        # multi-task model's test time (~30 min of a 2-core CPU at 500 users)
                                        # (and "multi" is the quick look: no second pass)
                                        unseen_prompts=args.protocol == "warm" and lm_rows not in ("multi", "tasks"))
    result["row_commits"] = baseline_store.commits | store.commits
    _check_same_split(result, lm_set)
    groups = user_groups(split)
    result["comparisons"] = comparisons(result, args.resamples, args.seed, groups)
    if groups:
        result["groups"] = group_tables(result, groups)
    result["rows"] = report.table_rows(result["baselines"], result["mtrec"], result["comparisons"])
    result["summary"] = summary_lines(result["mtrec"])
    result["total_seconds"] = time.perf_counter() - started  # this invocation's; rows loaded from earlier runs not counted
    result["peak_rss_kib"] = peak_rss_kib()
    _write(result, out_dir, stem)
    return result


# Config knobs added after rows were first stored, at the value that computes what those rows were
# computed with: left out of the row key at that value, so adding a knob does not orphan finished rows.
# model.stack_ranking's default (off) is not what stored stacked rows did (they stacked the ranking
# priors), so its neutral value is on; without stacking it means nothing and leaves the key. Likewise
# train.rank_blend: on by default, off in every stored row.
KEY_NEUTRAL = {("model", "train_top_layers"): None, ("train", "fixed_batches"): 0,
               ("train", "activation_cache"): True, ("train", "activation_cache_dir"): None,
               ("train", "activation_cache_gb"): 4.0, ("train", "keep"): "best",
               ("model", "ranking_prior"): "factors", ("model", "sequence_len"): 50,
               ("prompt", "item_tokens"): "text", ("prompt", "item_token_curriculum"): 0,
               ("model", "stack_tail"): 0, ("model", "stack_ranking"): True, ("train", "rank_blend"): False,
               ("model", "like_text"): 0, ("model", "sequence_init"): "random", ("model", "sequence_seeds"): 1}


def row_key(result: dict, args: argparse.Namespace) -> dict:
    """What a stored row must have been computed with to be reused: the settings (less the command
    line's spelling and the row set), the split, seed and data set."""
    settings = {k: v for k, v in result["settings"].items() if k not in ("cli_overrides", "recipe", "lm_rows")}
    config = {sec: dict(values) for sec, values in settings["base_config"].items()}
    if not config.get("model", {}).get("stack_tail"):  # means nothing without stacking
        config.get("model", {}).pop("stack_ranking", None)
    for (sec, name), neutral in KEY_NEUTRAL.items():
        if config.get(sec, {}).get(name, neutral) == neutral:
            config.get(sec, {}).pop(name, None)
    return {"settings": settings | {"base_config": config}, "split": result["split"], "seed": args.seed,
            "dataset": args.dataset}


def baseline_key(result: dict, args: argparse.Namespace, base) -> dict:
    """The key of the baselines' rows: what they read — the profile, the test users, the split, the
    example options (like threshold, negatives, history) — and not the rest of the base config, so a
    run with another backbone, prompt or training knob reuses the fitted baselines of the same split.
    The prior alone's row is further versioned by the priors' settings
    (`mtrec.bench.baseline_suite.row_version`): a change of those refits it alone."""
    settings = {k: v for k, v in result["settings"].items()
                if k not in ("cli_overrides", "recipe", "lm_rows", "lm_users", "base_config")}
    split = {k: v for k, v in result["split"].items() if not k.startswith("lm_users")}
    # the history width the like text term asks for is not read by any baseline
    examples = asdict(example_options(replace(base, model=replace(base.model, like_text=0))))
    return {"settings": settings | {"examples": examples}, "split": split, "seed": args.seed, "dataset": args.dataset}


def peak_rss_kib() -> int | None:
    """This process's peak resident memory in KiB (None where the platform does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def prior_settings(cfg) -> dict:
    """`PriorAlone`'s settings: those of the compared mtrec runs."""
    out = {"collab_dim": cfg.model.collab_dim, "like_threshold": cfg.data.like_threshold,
           "negatives": cfg.data.negatives_per_positive}
    if cfg.model.ranking_prior != "factors":  # stored rows of factor-only runs keep their settings
        out |= {"ranking_prior": cfg.model.ranking_prior, "sequence_len": cfg.model.sequence_len}
    if cfg.model.sequence_init == "text":  # the prior's network starts from the runs' backbone's encodings
        from mtrec.bench.prior import encoder_settings

        out |= {"sequence_init": "text", "encoder": encoder_settings(cfg)}
    if cfg.model.sequence_seeds > 1:  # the runs' seed ensemble of the sequential prior
        out |= {"sequence_seeds": cfg.model.sequence_seeds}
    return out


# Each row's reference (its "vs" column) and the extra pairs the reading needs. A pair is compared on
# every metric of `intervals.COMPARED` both rows have, on the targets both were scored on.
MULTI = "mtrec multi-task"
EXTRA_PAIRS = tuple((MULTI, ref) for ref in (
    "mtrec multi-task, random-init backbone", "content kNN (TF-IDF)", "SASRec", "BPR-MF", "biased MF",
    "user like-ratio"))


def reference_of(label: str, kind: str) -> str | None:
    if label == "prior alone":
        return None
    if kind == "baseline" or label == MULTI:
        return "prior alone"  # what the backbone (or another model) adds to mtrec's priors
    return MULTI


def row_records(result: dict) -> dict[str, dict]:
    records = {label: intervals.from_json(e["records"]) for label, e in result["baselines"].items() if "records" in e}
    return records | {label: intervals.from_json(r["test"]["records"]) for label, r in result["mtrec"].items()}


def comparisons(result: dict, resamples: int, seed: int, groups: dict | None = None) -> list[dict]:
    """Paired bootstrap intervals (`mtrec.bench.intervals.compare`) of every row against its
    reference and of the extra pairs, each on the targets both rows were scored on; with `groups`
    (name -> user indices), once per group on its users, each entry naming its group."""
    records = row_records(result)
    kinds = {label: "baseline" for label in result["baselines"]} | {label: "mtrec" for label in result["mtrec"]}
    pairs = [(label, reference_of(label, kinds[label])) for label in records]
    control = result.get("text_control_row")  # compared with content kNN and the priors too
    extra = EXTRA_PAIRS + tuple((control, ref) for ref in ("content kNN (TF-IDF)", "prior alone") if control)
    pairs += [p for p in extra if p not in pairs and p[::-1] not in pairs]  # each pair once
    out = []
    for group, users in ({None: None} | (groups or {})).items():  # all users, then each group
        mine = records if users is None else {k: intervals.restrict(v, users) for k, v in records.items()}
        for a, b in pairs:
            if b is None or a not in mine or b not in mine:
                continue
            for metric in intervals.COMPARED:
                c = intervals.compare(mine[a], mine[b], metric, resamples, seed)
                if c is not None:
                    out.append({"row": a, "reference": b, "metric": metric, **c, "group": group,
                                "reading": intervals.reading(c, a, b, metric)})
    return out


def user_groups(split) -> dict | None:
    """The short-history protocol's two groups of users (None otherwise)."""
    if split.short_users is None:
        return None
    return {"short history (3-5 training interactions)": np.flatnonzero(split.short_users),
            "other users": np.flatnonzero(~split.short_users)}


def group_tables(result: dict, groups: dict) -> dict:
    """Per group, each row's metrics on that group's users (`intervals.summarise`)."""
    records = row_records(result)
    return {group: {label: {"users": users_in(intervals.restrict(rec, users)),
                            **intervals.summarise(intervals.restrict(rec, users))}
                    for label, rec in records.items()}
            for group, users in groups.items()}


def users_in(records: dict) -> int:
    """Distinct users a row's records score, whichever targets it has (a like-only row has no ranks)."""
    cols = [records[k] for k in ("rank_user", "like_user", "rating_user") if k in records]
    return len(np.unique(np.concatenate(cols))) if cols else 0


def _check_same_split(result: dict, lm_set: np.ndarray) -> None:
    """Every mtrec variant trained on the baselines' split and was tested on the very same users
    (the set's fingerprint, not only its size), a subset of the baselines' users."""
    want, users = result["split"]["fingerprint"], result["split"]["lm_users_sha256"]
    for label, r in result["mtrec"].items():
        if r["split_fingerprint"] != want:
            raise AssertionError(f"{label} trained on a different split than the baselines")
        if r["test"]["users_sha256"] != users:
            raise AssertionError(
                f"{label} was tested on other users ({r['test']['users']} users, set {r['test']['users_sha256']}) "
                f"than the language-model rows' sample ({len(lm_set)} users, set {users})"
            )
    users = result["split"]["test_users_sha256"]
    for label, r in result["baselines"].items():
        if "test" in r and r["test"]["users_sha256"] != users:
            raise AssertionError(f"baseline {label} was tested on other users (set {r['test']['users_sha256']}) "
                                 f"than the split's test set (set {users})")


def _write(result: dict, out_dir: Path, stem: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{result['dataset']} ({result['settings']['profile']}, seed {result['seed']})"
    note = report.plot(result["rows"], out_dir / f"{stem}.png", title)
    result["files"] = {
        "json": str(out_dir / f"{stem}.json"),
        "markdown": str(out_dir / f"{stem}.md"),
        "plot": None if note else str(out_dir / f"{stem}.png"),
    }
    if note:
        result["summary"].append(f"Plot: {note}.")
        print(note)
    (out_dir / f"{stem}.md").write_text(report.markdown(result), encoding="utf-8")
    report.write_json(result, out_dir / f"{stem}.json")
    print(f"wrote {', '.join(v for v in result['files'].values() if v)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        run(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0
