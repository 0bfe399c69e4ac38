"""mtrec variants for the accuracy benchmark: each is `mtrec.training.train` on a config built from
the benchmark's base config plus overrides, then one evaluation on the TEST role.

- multi-task: rating + preference + recommendation (rating is dropped on implicit data);
- single-task: one model per task, each trained on as many examples of its task as the multi-task
  model drew (as counted by training, `examples_per_kind`);
- no social context (`prompt.social=false`), where the data set has a social graph;
- random-init backbone (`model.random_init=true`): same architecture, no pretraining;
- the text control (`text_control`): the multi-task model on all-MiniLM-L6-v2, a sentence encoder.

`rows="controls"` trains only the multi-task model, the random-init one and the text control: the
rows the cold-items and short-history readings need; `rows="tasks"` the multi-task and single-task
models; `rows="multi"` the multi-task model alone.

Test evaluation uses `mtrec.pipeline.evaluate` on the Setup the model was trained in (the best
weights are loaded back at the end of training): full-catalog ranking with the user's earlier items
excluded, the first training paraphrase, and for the multi-task model the first held-out
paraphrase too ("unseen prompt").
"""

from __future__ import annotations

import gc
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed

from mtrec.bench import intervals
from mtrec.bench.baselines import user_set_sha256
from mtrec.config import Config, apply_overrides, from_dict
from mtrec.data.splits import TEST, Split
from mtrec.pipeline import eval_specs, evaluate_rows, kinds_for, summarise
from mtrec.training import Setup, build_setup, train

ALL_TASKS = ("rating", "preference", "recommendation")
# Early-stopping metric of a single-task model when the base config stops on a metric of another task.
TASK_METRIC = {
    "rating": "valid/rating/rmse",
    "preference": "valid/like/auc",
    "recommendation": "valid/recommendation/ndcg@10",
}


@dataclass(frozen=True)
class Variant:
    """One mtrec row of the table: a label, the overrides on top of the base config, and a note."""

    label: str
    overrides: tuple[str, ...]
    note: str = ""
    tasks: tuple[str, ...] = ALL_TASKS
    heldout: bool = False  # also evaluate with the held-out paraphrases
    extra: dict = field(default_factory=dict)


def split_fingerprint(split: Split) -> str:
    """sha256 of the split's roles and order: equal fingerprints = the very same split."""
    h = hashlib.sha256()
    for a in (split.role, split.seq, split.dataset.user_idx, split.dataset.item_idx):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def tasks_override(tasks: tuple[str, ...]) -> str:
    return "train.tasks=[" + ", ".join(tasks) + "]"


def stopping_override(cfg: Config, tasks: tuple[str, ...], split: Split) -> tuple[str, ...]:
    """Keep the base early-stopping metric when this variant reports it, else use its task's own.

    A single-task rating model has no validation NDCG; stopping it on one would raise."""
    metric = cfg.train.early_stopping_metric
    if metric == "valid/loss" or len(tasks) > 1:
        return ()
    wanted = {k for k in kinds_for(list(tasks), split)}
    kind_of_metric = metric.removeprefix("valid/").split("/")[0]
    return () if kind_of_metric in wanted else (f"train.early_stopping_metric={TASK_METRIC[tasks[0]]}",)


def single_task_overrides(
    cfg: Config, task: str, split: Split, drawn: dict[str, int]
) -> tuple[tuple[str, ...], int]:
    """Overrides giving a single-task model the multi-task run's examples of its task.

    Returns (overrides, examples budget). Steps = examples / (batch_size * grad_accum) rounded to
    the nearest whole step, so the single-task model sees the budget within half a batch."""
    t = cfg.train
    budget = sum(drawn.get(k, 0) for k in kinds_for([task], split))
    steps = max(1, math.floor(budget / (t.batch_size * t.grad_accum) + 0.5))
    warmup = min(t.warmup_steps, steps - 1)  # the config requires warm-up below the step count
    eval_every = min(t.eval_every, steps) if t.eval_every else 0
    out = (
        tasks_override((task,)),
        f"train.max_steps={steps}",
        f"train.warmup_steps={warmup}",
        f"train.eval_every={eval_every}",
    )
    return out + stopping_override(cfg, (task,), split), budget


class _OneDevice:
    """What `pipeline.evaluate` needs from an Accelerator, for one process on the model's device."""

    num_processes, process_index = 1, 0

    def __init__(self, model) -> None:
        self.device = next(model.parameters()).device

    @staticmethod
    def gather(x):
        return x


def test_metrics(setup: Setup, cfg: Config, test_users: int, heldout: bool = False) -> dict:
    """`pipeline.evaluate` on the TEST role for a seeded subset of `test_users` users (0 = all)."""
    specs = eval_specs(setup.split, setup.kinds, setup.example_options, TEST, test_users, cfg.run.seed)
    started = time.perf_counter()
    rows = evaluate_rows(setup.model, setup.batcher, specs, setup.split, TEST, cfg.train.eval_batch_size,
                         _OneDevice(setup.model), heldout=heldout)
    out = summarise(rows, setup.weights, 10)
    out["records"] = intervals.to_json(intervals.from_eval_rows(rows, setup.split))
    out["rows"] = len(specs)
    out["users"] = len(np.unique(setup.split.dataset.user_idx[specs.interaction]))
    out["users_sha256"] = user_set_sha256(setup.split.dataset.user_idx[specs.interaction])
    out["seconds"] = time.perf_counter() - started
    return out


def run_variant(
    base: Config, variant: Variant, run_dir: Path, test_users: int, count_draws: bool = False
) -> dict:
    """Train one variant into `run_dir` and evaluate it on TEST. Returns every number and setting."""
    cfg = from_dict(apply_overrides(base.to_dict(), list(variant.overrides)), f"variant {variant.label!r}")
    started = time.perf_counter()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    # train() seeds before it builds its own Setup; we build it here (to evaluate the trained model
    # in place), so seed first for the same initialisation on every run.
    set_seed(cfg.run.seed)
    setup = build_setup(cfg)
    result = train(cfg, run_dir, overwrite=True, setup=setup)
    out = {
        "label": variant.label,
        "note": variant.note,
        "overrides": list(variant.overrides),
        "config": cfg.to_dict(),
        "run_dir": str(run_dir),
        "kinds": setup.kinds,
        "split_fingerprint": split_fingerprint(setup.split),
        "train": result,
        "extra": dict(variant.extra),
    }
    if count_draws:
        # per process; each process draws its own examples
        drawn = result["examples_per_kind"]
        out["drawn_examples"] = {k: int(drawn.get(k, 0)) * result["num_processes"] for k in setup.kinds}
    out["test"] = test_metrics(setup, cfg, test_users)
    if variant.heldout:
        out["test_heldout"] = test_metrics(setup, cfg, test_users, heldout=True)
    out["wall_seconds"] = time.perf_counter() - started
    del setup
    gc.collect()  # one backbone at a time: the next variant builds its own
    return out


def variants_for(split: Split) -> list[Variant]:
    """The ablation variants after the multi-task and single-task runs (which depend on counts)."""
    out = []
    if split.dataset.social_src is not None and len(split.dataset.social_src):
        out.append(
            Variant(
                "mtrec multi-task, no social context",
                ("prompt.social=false",),
                "friends'/trusted users' items left out of the prompts",
            )
        )
    out.append(
        Variant(
            "mtrec multi-task, no collaborative factors",
            ("model.collab_dim=0",),
            "heads start from per-user/per-item means and popularity only: what the prompt alone adds",
        )
    )
    out.append(RANDOM_INIT)
    return out


RANDOM_INIT = Variant(
    "mtrec multi-task, random-init backbone",
    ("model.random_init=true",),
    "same architecture, random weights (no pretraining)",
)


TEXT_CONTROL = "bundled:minilm-l6"


def text_control(spec: str | None = TEXT_CONTROL) -> Variant | None:
    """The item-text control row: the multi-task model on another backbone (all-MiniLM-L6-v2 by
    default), which tells "text does not help here" apart from "this backbone encodes text weakly".
    None: no such row."""
    if not spec or spec == "none":
        return None
    name = "MiniLM" if spec == TEXT_CONTROL else Path(spec.removeprefix("bundled:")).name
    return Variant(f"mtrec multi-task, {name} backbone", (f"model.backbone={spec}",),
                   f"{spec} in place of the compared backbone, everything else the same: the item-text control")


# Which language-model rows a run trains. "controls" are the rows every protocol's reading needs
# (the pretrained multi-task model, its random-init twin, the MiniLM text control); "all" adds the
# single-task models and the ablations; "multi" is the multi-task model alone (a first look on a busy
# machine: a later run of a larger set reuses its row); "tasks" is the multi-task model and the
# single-task models of the same per-task budget (the multi-task against single-task reading alone).
ROW_SETS = ("all", "controls", "multi", "tasks")


def run_all(base: Config, split: Split, out_dir: Path, test_users: int, log=print, store=None,
            rows: str = "all", control: str | None = TEXT_CONTROL, unseen_prompts: bool = True) -> dict:
    """Multi-task, single-task (same examples per task), the ablations and the text control
    (`rows="all"`), or the multi-task model, its random-init twin and the text control
    (`rows="controls"`), or the multi-task model alone (`rows="multi"`), or the multi-task and
    single-task models (`rows="tasks"`); `control` is the text control's backbone (`text_control`). Returns label ->
    report. With `store` (`mtrec.bench.resume.RowStore`), a variant finished by an earlier run is
    loaded, whichever set asked for it. `unseen_prompts`: also test the multi-task model with the
    held-out paraphrases (a second pass over the test prompts)."""
    if rows not in ROW_SETS:
        raise ValueError(f"rows: {rows!r}; expected one of {ROW_SETS}")
    reports = {}

    def run(variant: Variant, run_dir: Path, count_draws: bool = False) -> dict:
        def compute() -> dict:
            log(f"[mtrec] {variant.label}")
            return run_variant(base, variant, run_dir, test_users, count_draws=count_draws)

        return compute() if store is None else store.row(variant.label, compute)

    multi = Variant(
        "mtrec multi-task", (tasks_override(ALL_TASKS),), "rating + preference + recommendation",
        heldout=unseen_prompts
    )
    reports[multi.label] = run(multi, out_dir / "multi-task", count_draws=True)
    if rows == "multi":
        return reports
    if rows == "controls":
        for variant in filter(None, (RANDOM_INIT, text_control(control))):
            reports[variant.label] = run(variant, out_dir / slug_of(variant))
        return reports
    drawn = reports[multi.label]["drawn_examples"]
    for task in ALL_TASKS:
        if not kinds_for([task], split):
            continue  # rating on implicit data
        overrides, budget = single_task_overrides(base, task, split, drawn)
        variant = Variant(
            f"mtrec single-task {task}",
            overrides,
            f"{budget} {task} examples, as drawn by the multi-task run",
            tasks=(task,),
            extra={"examples_budget": budget},
        )
        reports[variant.label] = run(variant, out_dir / f"single-{task}", count_draws=True)
    if rows == "tasks":
        return reports
    for variant in [*variants_for(split), *filter(None, [text_control(control)])]:
        reports[variant.label] = run(variant, out_dir / slug_of(variant))
    return reports


def slug_of(variant: Variant) -> str:
    return variant.label.split(", ")[-1].replace(" ", "-")
