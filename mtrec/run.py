"""The run folder: everything inference needs, and nothing else.

Layout::

    manifest.json     format version, mtrec version, what each file is
    config.yaml       the resolved config
    backbone.json     which base model (spec, kind, content hash); inference loads or rebuilds it
    adapter/          peft adapter: LoRA weights, heads + item table (modules_to_save), token rows
    tokenizer/        the tokenizer with its instruction tokens
    prompts/          a copy of the templates used
    catalog/          users.jsonl, items.jsonl, categories.json, dataset.npz (interactions, social
                      edges, the split: every interaction each user had, for history and seen items)
    metrics.json      validation metrics (and the training curve)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import yaml

import mtrec
from mtrec.data.records import Item, RecDataset, User
from mtrec.data.splits import Split

FORMAT_VERSION = 2  # 2: collaborative factors in the heads
REQUIRED = ("manifest.json", "config.yaml", "backbone.json", "adapter", "tokenizer", "prompts", "catalog", "metrics.json")
# `python -m mtrec.export`: the adapter merged into a backbone of its own (see mtrec.export)
EXPORT_FORMAT = "mtrec-export"
EXPORT_REQUIRED = ("manifest.json", "config.yaml", "backbone", "heads.safetensors", "tokenizer", "prompts", "catalog")


class RunFolderError(ValueError):
    """A run folder that is missing, incomplete, or from an incompatible version."""


def prepare_run_dir(path: Path, overwrite: bool = False) -> Path:
    """Create the run folder; an existing non-empty one is an error unless `overwrite`."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise RunFolderError(f"{path} exists and is not empty; choose another --run-dir or pass --overwrite")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_catalog(folder: Path, split: Split) -> None:
    ds = split.dataset
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "users.jsonl", "w", encoding="utf-8") as f:
        for u in ds.users:
            f.write(json.dumps({"id": u.id, "attributes": dict(u.attributes)}, ensure_ascii=False) + "\n")
    with open(folder / "items.jsonl", "w", encoding="utf-8") as f:
        for it in ds.items:
            f.write(json.dumps({"id": it.id, "title": it.title, "text": it.text, "categories": list(it.categories)},
                               ensure_ascii=False) + "\n")
    meta = {"name": ds.name, "categories": list(ds.categories), "explicit": ds.explicit,
            "rating_scale": ds.rating_scale, "social_kind": ds.social_kind, "order_rule": split.order_rule,
            "method": split.method, "seed": split.seed, "too_few_users": split.too_few_users}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    arrays = dict(user_idx=ds.user_idx, item_idx=ds.item_idx, values=ds.values, social_src=ds.social_src,
                  social_dst=ds.social_dst, role=split.role, seq=split.seq, offsets=split.offsets,
                  position=split.position)
    if ds.timestamps is not None:
        arrays["timestamps"] = ds.timestamps
    np.savez_compressed(folder / "dataset.npz", **arrays)


def load_catalog(folder: Path) -> Split:
    """Rebuild the data set and split exactly as trained (indices included)."""
    meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    with open(folder / "users.jsonl", encoding="utf-8") as f:
        users = [User(d["id"], d["attributes"]) for d in map(json.loads, f)]
    with open(folder / "items.jsonl", encoding="utf-8") as f:
        items = [Item(d["id"], d["title"], d["text"], tuple(d["categories"])) for d in map(json.loads, f)]
    a = np.load(folder / "dataset.npz")
    scale = tuple(meta["rating_scale"]) if meta["rating_scale"] else None
    ds = RecDataset(meta["name"], users, items, a["user_idx"], a["item_idx"], a["values"],
                    a["timestamps"] if "timestamps" in a else None, explicit=meta["explicit"],
                    social_src=a["social_src"], social_dst=a["social_dst"], social_kind=meta["social_kind"],
                    categories=meta["categories"], rating_scale=scale)
    return Split(ds, a["role"], a["seq"], a["offsets"], a["position"], meta["order_rule"], meta["too_few_users"],
                 meta["seed"], meta["method"])


def write_manifest(run_dir: Path, extra: dict | None = None) -> None:
    manifest = {"format_version": FORMAT_VERSION, "mtrec_version": mtrec.__version__, "files": list(REQUIRED)}
    manifest.update(extra or {})
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def check_run_dir(run_dir: Path) -> dict:
    """The manifest of a complete, compatible run folder; otherwise a clear `RunFolderError`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: no such run folder")
    manifest = None
    if (run_dir / "manifest.json").is_file():
        try:
            manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunFolderError(f"{run_dir}/manifest.json: unreadable ({e})") from None
    export = isinstance(manifest, dict) and manifest.get("format") == EXPORT_FORMAT
    missing = [name for name in (EXPORT_REQUIRED if export else REQUIRED) if not (run_dir / name).exists()]
    if missing:
        what = "export folder" if export else "run folder"
        raise RunFolderError(f"{run_dir}: incomplete {what}, missing {', '.join(missing)} (did training finish?)")
    if not isinstance(manifest, dict):
        raise RunFolderError(f"{run_dir}/manifest.json: expected a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RunFolderError(f"{run_dir}: run folder format {manifest.get('format_version')!r}, this mtrec reads "
                             f"{FORMAT_VERSION} (written by mtrec {manifest.get('mtrec_version')})")
    return manifest


def save_config(run_dir: Path, cfg_dict: dict) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False), encoding="utf-8")
