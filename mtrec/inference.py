"""Serving a run folder: `Recommender.from_run(run_dir)` answers every task through the same heads.

Ids are the data set's own ids as strings. At serving time a user's whole known sequence is their
history, and friends' interactions are used without a time cut ("now").
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from transformers import AutoTokenizer

from mtrec.config import from_dict
from mtrec.data.splits import TRAIN, Split
from mtrec.model.backbone import BackboneRef, load_backbone, resolve_backbone
from mtrec.model.multitask import RecModel, TaskHeads
from mtrec.prompts import PromptRenderer, load_prompts
from mtrec.run import check_run_dir, load_catalog
from mtrec.tasks import EXAMPLE_TYPES, KIND_TASK, ExampleFactory
from mtrec.training import example_options, render_options

import yaml

KIND_OF_TYPE = {cls: kind for kind, cls in EXAMPLE_TYPES.items()}

def serving_split(split: Split) -> Split:
    """The same data with every interaction usable as context (serving happens after all of them)."""
    return dataclasses.replace(split, role=np.full_like(split.role, TRAIN))


class UnknownIdError(KeyError):
    """A user or item id the run folder does not know."""

    def __str__(self) -> str:
        return str(self.args[0])


class Recommender:
    """Rate, prefer, categories and full-catalog top-K for a trained run folder."""

    def __init__(self, run_dir: Path, model, tokenizer, split: Split, prompts, cfg, device: torch.device):
        self.run_dir, self.model, self.tokenizer, self.cfg, self.device = run_dir, model, tokenizer, cfg, device
        self.split = split
        self.dataset = split.dataset
        self.prompts = prompts
        self.factory = ExampleFactory(serving_split(split), example_options(cfg))
        self.renderer = PromptRenderer(tokenizer, {t: p.instruction_token for t, p in prompts.items()}, render_options(cfg))
        ds = self.dataset
        self._seen = torch.zeros(ds.num_users, ds.num_items, dtype=torch.bool)
        self._seen[torch.as_tensor(ds.user_idx, dtype=torch.long), torch.as_tensor(ds.item_idx, dtype=torch.long)] = True
        self._seen = self._seen.to(device)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | None = None) -> Recommender:
        """Load a run folder (and its base backbone, rebuilt if bundled). GPU + bf16 when available."""
        run_dir = Path(run_dir)
        manifest = check_run_dir(run_dir)
        cfg = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")), str(run_dir / "config.yaml"))
        split = load_catalog(run_dir / "catalog")
        prompts = load_prompts(run_dir / "prompts")
        ref = BackboneRef.from_dict(json.loads((run_dir / "backbone.json").read_text(encoding="utf-8")))
        if ref.kind == "bundled":
            ref = resolve_backbone(ref.spec)  # rebuilds the converted folder if this machine lacks it
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        backbone, _ = load_backbone(ref, dtype=dtype)
        if cfg.model.random_init:
            from transformers import AutoModel

            torch.manual_seed(cfg.run.seed)
            backbone = AutoModel.from_config(backbone.config, attn_implementation="sdpa").to(dtype)
        tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
        backbone.resize_token_embeddings(len(tokenizer))
        heads = _empty_heads(backbone.config.hidden_size, split, cfg)
        model = PeftModel.from_pretrained(RecModel(backbone, heads, manifest["pooling"]), run_dir / "adapter")
        return cls(run_dir, model.to(dev).eval(), tokenizer, split, prompts, cfg, dev)

    # ---- ids --------------------------------------------------------------------------------
    def user_index(self, user: str) -> int:
        try:
            return self.dataset.user_index[str(user)]
        except KeyError:
            raise UnknownIdError(f"unknown user id {user!r} (this run knows {self.dataset.num_users} users)") from None

    def item_index(self, item: str) -> int:
        try:
            return self.dataset.item_index[str(item)]
        except KeyError:
            raise UnknownIdError(f"unknown item id {item!r} (this run knows {self.dataset.num_items} items)") from None

    # ---- tasks ------------------------------------------------------------------------------
    def rate(self, users: str | Sequence[str], items: str | Sequence[str], batch_size: int = 32) -> list[float]:
        """Predicted rating per (user, item) pair; a single user or item is broadcast."""
        out = self._pairs("rating", users, items, batch_size)
        return [float(x) for x in out["rating"]]

    def prefer(self, users: str | Sequence[str], items: str | Sequence[str], batch_size: int = 32) -> list[float]:
        """P(like) per (user, item) pair."""
        out = self._pairs("like", users, items, batch_size)
        return [float(x) for x in torch.sigmoid(out["like_logit"])]

    def categories(self, users: str | Sequence[str], k: int | None = None, batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """Each user's categories by affinity (softmax over the data set's categories), best first."""
        idx = [self.user_index(u) for u in _as_list(users)]
        out = self._forward([self.factory.make_now("categories", u) for u in idx], batch_size)
        probs = torch.softmax(out["category_logits"].float(), -1)
        names = self.dataset.categories
        k = min(k or len(names), len(names))
        top = torch.topk(probs, k, dim=-1)
        return [[(names[j], float(p)) for p, j in zip(ps.tolist(), js.tolist())] for ps, js in zip(top.values, top.indices)]

    def recommend(self, users: str | Sequence[str], k: int = 10, exclude_seen: bool = True,
                  batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """Top-k items per user over the full catalog (one forward pass + one matrix product per
        batch), seen items masked on the device."""
        idx = [self.user_index(u) for u in _as_list(users)]
        results = []
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            out = self._forward([self.factory.make_now("recommendation", u) for u in chunk], batch_size)
            scores = out["item_logits"].float()
            if exclude_seen:
                scores = scores.masked_fill(self._seen[torch.as_tensor(chunk, device=self.device)], float("-inf"))
            top = torch.topk(scores, min(k, scores.shape[1]), dim=-1)
            for vals, cols in zip(top.values.tolist(), top.indices.tolist()):
                results.append([(self.dataset.items[c].id, v) for c, v in zip(cols, vals) if v != float("-inf")])
        return results

    # ---- plumbing ---------------------------------------------------------------------------
    def _pairs(self, kind: str, users, items, batch_size: int) -> dict[str, torch.Tensor]:
        us, its = _as_list(users), _as_list(items)
        if len(us) == 1 and len(its) > 1:
            us = us * len(its)
        if len(its) == 1 and len(us) > 1:
            its = its * len(us)
        if len(us) != len(its):
            raise ValueError(f"{len(us)} users and {len(its)} items: give equal lengths, or one of either")
        examples = [self.factory.make_now(kind, self.user_index(u), self.item_index(i)) for u, i in zip(us, its)]
        return self._forward(examples, batch_size)

    @torch.no_grad()
    def _forward(self, examples: list, batch_size: int) -> dict[str, torch.Tensor]:
        outs = []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            rendered = [self.renderer.render(ex, self._template(ex)) for ex in chunk]
            width = max(r.num_tokens for r in rendered)
            ids = torch.full((len(chunk), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rendered):
                ids[i, : r.num_tokens] = torch.tensor(r.input_ids)
                mask[i, : r.num_tokens] = 1
            items = torch.tensor([getattr(ex, "item_index", -1) for ex in chunk], device=self.device)
            outs.append(self.model(ids.to(self.device), mask.to(self.device), None, items))
        return {k: torch.cat([o[k] for o in outs]) for k in ("rating", "like_logit", "category_logits", "item_logits")}

    def _template(self, example):
        kind = KIND_OF_TYPE[type(example)]
        return self.prompts[KIND_TASK[kind]].train(kind)[0]


def _as_list(x) -> list[str]:
    return [str(x)] if isinstance(x, (str, int)) else [str(v) for v in x]


def _empty_heads(hidden: int, split: Split, cfg) -> TaskHeads:
    """Heads of the right shapes; their values come from the adapter."""
    ds = split.dataset
    dim = cfg.model.item_dim or hidden
    mean = float(ds.values.mean()) if ds.explicit else None
    return TaskHeads(hidden, len(ds.categories), torch.zeros(ds.num_items, dim), torch.zeros(ds.num_items),
                     ds.rating_scale, mean)
