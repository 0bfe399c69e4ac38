"""Learn from new interactions: `python -m mtrec.update --run RUN --data NEW --out OUT`.

`NEW` is a folder in the local format (see docs/data-format.md) holding what happened after RUN was
trained: an ``interactions`` file (required), and ``items`` / ``users`` files for items and users
the run does not know yet (new users may also appear in interactions alone; rows of a users file
for users the run knows are ignored). The update

1. grows the run's own catalog (``RUN/catalog``) by NEW: its interactions become training data
   (one that repeats a held-out interaction of the run, same user, item and time, moves that
   interaction to training rather than being added twice); new users and items join the catalog;
2. refits every prior (biases, offsets, collaborative factors, the sequential prior) on the grown training data;
3. starts the model from RUN's weights: LoRA and instruction-token rows as trained, the heads'
   learned layers and the item table rows of known items as trained, new items' rows from their
   text, the refitted priors where the heads keep them;
4. fine-tunes for `--steps` steps (0: the refit alone) and writes the **new** run folder `OUT`
   (RUN is never touched). `--resume` continues an interrupted update from OUT's checkpoint.

The held-out roles of RUN are kept: what was validation or test stays so unless NEW names it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from mtrec.cli import exit_with
from mtrec.data.friends import FriendHoldout
from mtrec.data.errors import DataError
from mtrec.data.local import _open, _read_interactions, _read_items, _read_users
from mtrec.data.records import RecDataset
from mtrec.data.splits import TRAIN, Split, user_order
from mtrec.model.blend import OFF
from mtrec.model.build import heads_of
# head parameters that hold priors are refitted on the grown data; every other one is carried over
from mtrec.model.stacking import is_prior
from mtrec.run import RunFolderError, check_run_dir, load_catalog

RECORD = "update.json"  # in OUT: what it was updated from, so that --resume rebuilds the same start
PER_ITEM = ("item_table",)


@dataclasses.dataclass(frozen=True)
class Growth:
    """What NEW added: counts for the log and metrics.json."""

    new_users: int
    new_items: int
    added: int  # interactions appended
    moved: int  # held-out interactions of the run that NEW names, now training data

    def __str__(self) -> str:
        return (
            f"{self.added} new interactions, {self.moved} held-out ones moved to training, "
            f"{self.new_users} new users, {self.new_items} new items"
        )


def grow_split(split: Split, folder: str | Path) -> tuple[Split, Growth]:
    """`split` with NEW's interactions (and users, items) as training data; see the module docstring.

    Raises:
        DataError: a file of NEW is malformed (file and line named), names an unknown item, lists
            an item the run already has, or does not match the run's data (ratings vs. weights,
            timestamps).
    """
    folder = Path(folder)
    ds = split.dataset
    if not folder.is_dir():
        raise DataError(folder, "no such folder (expected the new interactions in the local format)")
    new_items, items_src = [], None
    if any((folder / f"items{ext}").is_file() for ext in (".csv", ".jsonl")):
        new_items, items_src = _read_items(folder)
        known = [it.id for it in new_items if it.id in ds.item_index]
        if known:
            raise DataError(
                items_src,
                f"item_id {known[0]!r} is already in the run's catalog ({len(known)} such "
                "items); list only new items",
            )
    users = {u.id: u for u in ds.users}
    file_users, _ = _read_users(folder)
    users |= {uid: u for uid, u in file_users.items() if uid not in users}
    items = list(ds.items) + new_items
    if items_src is None:
        items_src = _open(folder, "interactions", (("user_id", "item_id"), ()), required=True)[0]
    cols, explicit = _read_interactions(folder, items, users, items_src)
    where = next(
        folder / f"interactions{e}" for e in (".csv", ".jsonl") if (folder / f"interactions{e}").is_file()
    )
    if explicit != ds.explicit:
        raise DataError(
            where,
            f"the run's data has {'ratings' if ds.explicit else 'implicit weights'}; "
            f"NEW gives {'ratings' if explicit else 'weights'}",
        )
    if ds.timestamps is not None and cols["timestamp"] is None:
        raise DataError(where, "the run's data is timed: give every new interaction a timestamp")
    grown = _grown_split(split, _grown_dataset(ds, list(users.values()), items, cols))
    return grown, Growth(len(users) - ds.num_users, len(new_items), *_counts(split, grown))


def _grown_dataset(ds: RecDataset, users: list, items: list, cols: dict) -> RecDataset:
    user_pos = {u.id: k for k, u in enumerate(users)}
    item_pos = {it.id: k for k, it in enumerate(items)}
    user_map = np.array([user_pos[u.id] for u in ds.users], np.int64)  # old index -> position in `users`
    item_map = np.array([item_pos[it.id] for it in ds.items], np.int64)
    old_u, old_i = user_map[ds.user_idx], item_map[ds.item_idx]
    new_u = np.array([user_pos[u] for u in cols["user"]], np.int64)
    new_i = np.asarray(cols["item"], np.int64)
    ts = None
    if ds.timestamps is not None:
        ts = np.concatenate([ds.timestamps, cols["timestamp"]])
    new_cats = sorted({c for it in items for c in it.categories} - set(ds.categories))
    src, dst = user_map[ds.social_src], user_map[ds.social_dst]
    notes = dict(ds.notes) | {"updated with": str(len(new_u)) + " interactions"}
    return RecDataset(
        ds.name,
        users,
        items,
        np.concatenate([old_u, new_u]),
        np.concatenate([old_i, new_i]),
        np.concatenate([ds.values, np.asarray(cols["value"], np.float32)]),
        ts,
        explicit=ds.explicit,
        social_src=src,
        social_dst=dst,
        social_kind=ds.social_kind,
        categories=list(ds.categories) + new_cats,
        rating_scale=ds.rating_scale,
        notes=notes,
    )


def _grown_split(split: Split, grown: RecDataset) -> Split:
    """Roles: the run's, NEW's rows training; a NEW row repeating a held-out one moves it instead."""
    n_old = split.dataset.num_interactions
    role = np.concatenate([split.role, np.full(grown.num_interactions - n_old, TRAIN, np.int8)])
    keep = np.ones(grown.num_interactions, bool)
    key = (
        (lambda j: (int(grown.user_idx[j]), int(grown.item_idx[j]), int(grown.timestamps[j])))
        if grown.timed
        else (lambda j: (int(grown.user_idx[j]), int(grown.item_idx[j])))
    )
    held = {key(j): j for j in np.flatnonzero(split.role != TRAIN)}
    for j in range(n_old, grown.num_interactions):
        match = held.pop(key(j), None)
        if match is not None:
            role[match], keep[j] = TRAIN, False
    grown = _subset(grown, np.flatnonzero(keep))
    role = role[keep]
    if grown.timed:
        seq, offsets, rule = user_order(grown)
    else:  # no time: each user's known order, then NEW's rows in file order
        rank = np.concatenate([split.position, np.arange(grown.num_interactions - n_old) + len(role)])
        seq = np.lexsort((rank, grown.user_idx)).astype(np.int64)
        offsets = np.zeros(grown.num_users + 1, np.int64)
        np.cumsum(np.bincount(grown.user_idx, minlength=grown.num_users), out=offsets[1:])
        rule = split.order_rule
    position = np.empty(grown.num_interactions, np.int64)
    position[seq] = np.arange(len(seq)) - np.repeat(offsets[:-1], np.diff(offsets))
    friends = split.friends
    if friends is not None:  # the friend hold-out keeps its users, by id (new users may shift indices)
        at = np.array([grown.user_index[u.id] for u in split.dataset.users], np.int64)
        friends = FriendHoldout(at[friends.valid], at[friends.test], friends.seed)
    return Split(grown, role, seq, offsets, position, rule, split.too_few_users, split.seed, split.method, friends)


def _subset(ds: RecDataset, rows: np.ndarray) -> RecDataset:
    if len(rows) == ds.num_interactions:
        return ds
    return RecDataset(
        ds.name,
        ds.users,
        ds.items,
        ds.user_idx[rows],
        ds.item_idx[rows],
        ds.values[rows],
        None if ds.timestamps is None else ds.timestamps[rows],
        explicit=ds.explicit,
        social_src=ds.social_src,
        social_dst=ds.social_dst,
        social_kind=ds.social_kind,
        categories=ds.categories,
        rating_scale=ds.rating_scale,
        notes=ds.notes,
    )


def _counts(old: Split, grown: Split) -> tuple[int, int]:
    added = grown.dataset.num_interactions - old.dataset.num_interactions
    moved = int((old.role != TRAIN).sum() - (grown.role[: old.dataset.num_interactions] != TRAIN).sum())
    return added, moved


def write_interactions(folder: str | Path, ds: RecDataset, rows: np.ndarray) -> Path:
    """Interactions `rows` of `ds` as a local-format ``interactions.csv`` in `folder` (e.g. a run's
    validation interactions, as the new data of an update)."""
    import csv

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    value = "rating" if ds.explicit else "weight"
    with open(folder / "interactions.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", value] + (["timestamp"] if ds.timed else []))
        for j in rows:
            tail = [int(ds.timestamps[j])] if ds.timed else []
            w.writerow([ds.users[ds.user_idx[j]].id, ds.items[ds.item_idx[j]].id, float(ds.values[j]), *tail])
    return folder


# ---- the model ------------------------------------------------------------------------------------
def carry_over(model, run_dir: Path, old: Split, grown: Split) -> dict[str, int]:
    """Load RUN's trained weights into `model` (built for `grown`): LoRA and token rows as they are;
    of the heads, every learned parameter except the priors (`mtrec.model.stacking.is_prior`, refitted), with per-item and
    per-category rows moved to the items' and categories' places in the grown catalog.

    Returns:
        counts of the tensors loaded, for the log.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    prefix = "base_model.model.heads."
    backbone = {k: v for k, v in state.items() if not k.startswith(prefix)}
    mine = get_peft_model_state_dict(model)  # the grown model's own heads (shapes of the grown catalog)
    foreign = sorted(set(backbone) - set(mine))
    if foreign:
        raise RunFolderError(
            f"{run_dir}/adapter: {len(foreign)} weights fit no module of the rebuilt model "
            f"(e.g. {foreign[0]}); was the backbone changed?"
        )
    set_peft_model_state_dict(model, mine | backbone)
    heads = heads_of(model)
    params = dict(heads.named_parameters())
    item_rows = _rows(old.dataset.items, grown.dataset.item_index)
    cat_rows = _rows(old.dataset.categories, grown.dataset.category_index)
    carried = 0
    with torch.no_grad():
        for key, value in state.items():
            name = key.removeprefix(prefix)
            if not key.startswith(prefix) or is_prior(name) or name not in params:
                continue
            target = params[name]
            if name in PER_ITEM:
                target[item_rows] = value.to(target.dtype)
            elif name.startswith("categories.") and len(cat_rows) != target.shape[0]:
                target[cat_rows] = value.to(target.dtype)  # new categories keep their zero start
            else:
                target.copy_(value)
            carried += 1
        # a ranking blend that switched the backbone's ranking term off (`mtrec.model.blend.OFF`) would
        # leave it without a gradient for good: the update trains it from its initial scale, and its
        # own blend decides again
        if float(heads.log_scale) <= OFF + 1:
            heads.log_scale.zero_()
    return {"backbone_tensors": len(backbone), "head_tensors": carried}


def _rows(old: tuple, index: dict) -> torch.Tensor:
    ids = [getattr(x, "id", x) for x in old]
    return torch.as_tensor([index[i] for i in ids], dtype=torch.long)


def _content_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def update(
    run_dir: str | Path,
    data: str | Path,
    out: str | Path,
    steps: int = 50,
    resume: bool = False,
    overrides: list[str] = (),
) -> dict:
    """The update of `run_dir` by the new interactions in `data`, written to the new run folder `out`
    (`overrides`: ``section.key=value`` on top of the run's config, e.g. train.checkpoint_every=10).

    Returns:
        the training result (as `mtrec.training.train`), with what was done under "update".
    """
    import yaml

    from mtrec.config import apply_overrides, from_dict
    from mtrec.run import prepare_run_dir
    from mtrec.training import build_setup, save_setup, train

    run_dir, data, out = Path(run_dir), Path(data), Path(out)
    check_run_dir(run_dir)
    if out.resolve() == run_dir.resolve():
        raise RunFolderError(f"--out {out} is the run folder itself: an update writes a new run folder")
    if resume:
        if not (out / RECORD).is_file():
            raise RunFolderError(f"{out}: not an update run folder (no {RECORD}); nothing to resume")
        record = json.loads((out / RECORD).read_text(encoding="utf-8"))
        if record["data_sha256"] != _content_hash(data):
            raise RunFolderError(
                f"{data}: its files changed since the update began; resume with the same data"
            )
        steps = record["steps"]
    cfg_dict = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    train_cfg = cfg_dict.setdefault("train", {})
    train_cfg |= {
        "max_steps": max(steps, 1),
        "warmup_steps": min(train_cfg.get("warmup_steps", 10), steps // 5),
        "max_minutes": None,
    }
    cfg_dict.setdefault("prompt", {})["prompts_dir"] = str(
        run_dir / "prompts"
    )  # the templates it was trained on
    cfg = from_dict(apply_overrides(cfg_dict, list(overrides)), str(run_dir / "config.yaml"))
    old = load_catalog(run_dir / "catalog")
    grown, growth = grow_split(old, data)
    print(f"update of {run_dir}: {growth}", file=sys.stderr)
    setup = build_setup(cfg, split=grown)
    loaded = carry_over(setup.model, run_dir, old, grown)
    record = {
        "run": str(run_dir.resolve()),
        "data": str(data.resolve()),
        "data_sha256": _content_hash(data),
        "steps": steps,
        "growth": dataclasses.asdict(growth),
        "loaded": loaded,
    }
    if steps == 0:  # the priors refitted into the run's weights, nothing trained
        prepare_run_dir(out)
        (out / RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        result = {"best": None, "final": None, "history": [], "steps": 0, "seconds": 0.0}
        save_setup(out, setup, setup.model, result)
    else:
        result = train(cfg, out, setup=setup, resume=resume, files={RECORD: record})
    result["update"] = record
    return result


def main(argv: list[str] | None = None) -> int:
    from mtrec.config import ConfigError

    p = argparse.ArgumentParser(
        prog="python -m mtrec.update",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--run", type=Path, required=True, help="the trained run folder to update (left untouched)"
    )
    p.add_argument("--data", type=Path, required=True, help="a local-format folder of new interactions")
    p.add_argument("--out", type=Path, required=True, help="the new run folder")
    p.add_argument(
        "--steps", type=int, default=50, help="fine-tuning steps (default 50; 0: refit the priors only)"
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted update of --out")
    p.add_argument("overrides", nargs="*", help="section.key=value on top of the run's config")
    args = p.parse_args(argv)
    if args.steps < 0:
        print(f"error: --steps {args.steps}: must be 0 or more", file=sys.stderr)
        return 2
    try:
        result = update(args.run, args.data, args.out, args.steps, args.resume, args.overrides)
    except (DataError, RunFolderError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"run folder: {args.out} ({result['update']['growth']}, {result['steps']} steps)")
    return 0


if __name__ == "__main__":
    exit_with(main)
