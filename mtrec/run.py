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

This module writes it (`save_run`) and reads it back (`load_run`), building the model through the
same builders as training (`mtrec.model.build`); an export folder (`python -m mtrec.export`) is read
here too.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

import mtrec
from mtrec.data.friends import FriendHoldout
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
            row = {"id": it.id, "title": it.title, "text": it.text, "categories": list(it.categories)}
            if not it.described:  # written only where it says something: older folders read as described
                row["described"] = False
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    meta = {"name": ds.name, "categories": list(ds.categories), "explicit": ds.explicit,
            "rating_scale": ds.rating_scale, "social_kind": ds.social_kind, "order_rule": split.order_rule,
            "method": split.method, "seed": split.seed, "too_few_users": split.too_few_users,
            "friends_seed": split.friends.seed if split.friends is not None else None}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    arrays = dict(user_idx=ds.user_idx, item_idx=ds.item_idx, values=ds.values, social_src=ds.social_src,
                  social_dst=ds.social_dst, role=split.role, seq=split.seq, offsets=split.offsets,
                  position=split.position)
    if ds.timestamps is not None:
        arrays["timestamps"] = ds.timestamps
    if split.friends is not None:
        arrays.update(friends_valid=split.friends.valid, friends_test=split.friends.test)
    if split.heldout_items is not None:
        arrays["heldout_items"] = split.heldout_items
    if split.short_users is not None:
        arrays["short_users"] = split.short_users
    np.savez_compressed(folder / "dataset.npz", **arrays)


def load_catalog(folder: Path) -> Split:
    """Rebuild the data set and split exactly as trained (indices included)."""
    meta = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    with open(folder / "users.jsonl", encoding="utf-8") as f:
        users = [User(d["id"], d["attributes"]) for d in map(json.loads, f)]
    with open(folder / "items.jsonl", encoding="utf-8") as f:
        items = [Item(d["id"], d["title"], d["text"], tuple(d["categories"]), d.get("described", True))
                 for d in map(json.loads, f)]
    a = np.load(folder / "dataset.npz")
    scale = tuple(meta["rating_scale"]) if meta["rating_scale"] else None
    ds = RecDataset(meta["name"], users, items, a["user_idx"], a["item_idx"], a["values"],
                    a["timestamps"] if "timestamps" in a else None, explicit=meta["explicit"],
                    social_src=a["social_src"], social_dst=a["social_dst"], social_kind=meta["social_kind"],
                    categories=meta["categories"], rating_scale=scale)
    friends = (FriendHoldout(a["friends_valid"], a["friends_test"], meta.get("friends_seed") or 0)
               if "friends_test" in a else None)
    return Split(ds, a["role"], a["seq"], a["offsets"], a["position"], meta["order_rule"], meta["too_few_users"],
                 meta["seed"], meta["method"], friends, a["heldout_items"] if "heldout_items" in a else None,
                 a["short_users"] if "short_users" in a else None)


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


def save_run(run_dir: Path, *, model, tokenizer, cfg, ref, split: Split, metrics: dict, token_ids: dict[str, int],
             pooling: str) -> None:
    """Write a trained model's run folder: the peft `model`'s adapter (LoRA, token rows, heads), the
    tokenizer, the resolved `cfg`, the templates it was trained on, the base backbone `ref`, the
    catalog and split, the `metrics`, and the manifest."""
    from mtrec.prompts import DEFAULT_PROMPTS_DIR

    run_dir = Path(run_dir)
    model.save_pretrained(run_dir / "adapter")
    tokenizer.save_pretrained(run_dir / "tokenizer")
    save_config(run_dir, cfg.to_dict())
    src = Path(cfg.prompt.prompts_dir) if cfg.prompt.prompts_dir else DEFAULT_PROMPTS_DIR
    shutil.copytree(src, run_dir / "prompts", dirs_exist_ok=True)
    (run_dir / "backbone.json").write_text(json.dumps(ref.to_dict(), indent=1), encoding="utf-8")
    save_catalog(run_dir / "catalog", split)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    write_manifest(run_dir, {"token_ids": token_ids, "pooling": pooling})


# ---- reading a run (or export) folder back --------------------------------------------------
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}  # int8: quantised after loading


@dataclasses.dataclass
class LoadedRun:
    """What `load_run` gives back: the model in eval mode on `device`, and everything around it."""

    run_dir: Path
    manifest: dict
    cfg: object
    split: Split
    prompts: dict
    tokenizer: object
    model: torch.nn.Module
    device: torch.device


def load_run(run_dir: str | Path, device: str | None = None, precision: str | None = None,
             merge: bool = True) -> LoadedRun:
    """Load a run folder or an export folder.

    Args:
        run_dir: the folder.
        device: torch device; default CUDA when available.
        precision: ``fp32``, ``bf16`` or ``int8`` (dynamic int8 quantisation of the backbone's linear
            layers, CPU only; see `quantize_int8`); default bf16 on a GPU that has it, else fp32.
            The heads stay fp32.
        merge: fold the LoRA adapter and the trained token rows into the backbone's weights
            (peft's `merge_and_unload`; scores move by rounding only, ~1e-6) so that a forward
            pass costs the base model's alone; False keeps the peft model (export merges it itself).
    """
    from transformers import AutoTokenizer

    from mtrec.config import from_dict
    from mtrec.prompts import load_prompts, prompt_tasks

    run_dir = Path(run_dir)
    manifest = check_run_dir(run_dir)
    cfg = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")), str(run_dir / "config.yaml"))
    split = load_catalog(run_dir / "catalog")
    prompts = load_prompts(run_dir / "prompts", prompt_tasks(cfg.train.tasks))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if precision is None:
        precision = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "int8" and dev.type != "cpu":
        raise ValueError(f"int8 dynamic quantisation runs on the CPU, not {dev.type}")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    load = _load_export if manifest.get("format") == EXPORT_FORMAT else _load_adapter
    model = load(run_dir, manifest, cfg, split, prompts, PRECISIONS[precision])
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if precision == "int8":
        model = quantize_int8(model)
    return LoadedRun(run_dir, manifest, cfg, split, prompts, tokenizer, model.to(dev).eval(), dev)


def _load_adapter(run_dir: Path, manifest: dict, cfg, split: Split, prompts: dict, dtype: torch.dtype):
    """A training run folder: the base backbone built as training built it (instruction tokens,
    random init for that ablation), then the peft adapter (LoRA, token rows, heads)."""
    from peft import PeftModel

    from mtrec.model.build import build_backbone, empty_heads, release_original_heads, wants_friends
    from mtrec.model.multitask import RecModel

    backbone, _, token_ids, pooling = build_backbone(cfg.model, prompts, base_backbone(run_dir), cfg.run.seed, dtype,
                                                     item_tokens=cfg.prompt.item_tokens)
    if token_ids != manifest.get("token_ids", token_ids) or pooling != manifest["pooling"]:
        raise RunFolderError(f"{run_dir}: the instruction tokens or pooling rebuilt here ({token_ids}, {pooling}) "
                             f"are not the run's ({manifest.get('token_ids')}, {manifest['pooling']})")
    heads = empty_heads(split.dataset, cfg.model, backbone.config.hidden_size, wants_friends(cfg, split.dataset),
                        cfg.prompt.item_tokens != "text")
    return release_original_heads(PeftModel.from_pretrained(RecModel(backbone, heads, pooling), run_dir / "adapter"))


def _load_export(run_dir: Path, manifest: dict, cfg, split: Split, prompts: dict, dtype: torch.dtype):
    """An export folder: the merged backbone and the heads, plain torch modules."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    from mtrec.model.build import empty_heads, wants_friends
    from mtrec.model.multitask import RecModel

    backbone = AutoModel.from_pretrained(run_dir / "backbone", dtype=dtype, attn_implementation="sdpa")
    heads = empty_heads(split.dataset, cfg.model, backbone.config.hidden_size, wants_friends(cfg, split.dataset),
                        cfg.prompt.item_tokens != "text")
    heads.load_state_dict(load_file(str(run_dir / "heads.safetensors")))
    return RecModel(backbone, heads, manifest["pooling"])


def quantize_int8(model):
    """Dynamic int8 quantisation of the backbone's `nn.Linear` layers (weights int8, activations
    quantised per batch on the fly; CPU kernels). The heads stay fp32: they are small, and the item
    scores are one matrix product whose precision sets the ranking. A peft model is merged first.

    The oneDNN engine is chosen where this torch has it (it is process-wide: the packed weights are
    the engine's): on a 2-core AVX2 CPU its dynamic int8 linear runs 1.27x the default x86 engine's
    speed, and a full Epinions prompt batch 1.29x, with the same top-10 overlap against fp32."""
    import warnings

    from torch.ao.quantization import quantize_dynamic

    if "onednn" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "onednn"
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with warnings.catch_warnings():  # torch 2.13 marks its quantised tensor types deprecated (still supported)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        model.backbone = quantize_dynamic(model.backbone.float(), {torch.nn.Linear}, dtype=torch.qint8)
    return model


def base_backbone(run_dir: Path):
    """The run's base backbone on this machine (a bundled one is rebuilt if missing), checked by
    content hash: an adapter applied to other base weights would answer silently wrong."""
    from mtrec.model.backbone import BackboneRef, resolve_backbone

    trained = BackboneRef.from_dict(json.loads((run_dir / "backbone.json").read_text(encoding="utf-8")))
    if trained.kind == "hub" and trained.sha256 is None:
        return trained  # nothing to compare against: a hub id that was not cached when training ran
    here = resolve_backbone(trained.spec if trained.kind != "path" else trained.path)
    if trained.sha256 is not None and here.sha256 != trained.sha256:
        raise RunFolderError(f"{run_dir}: the base backbone {trained.spec!r} on this machine ({here.path}) has content "
                             f"hash {str(here.sha256)[:12]}…, the run was trained on {trained.sha256[:12]}…")
    return here
