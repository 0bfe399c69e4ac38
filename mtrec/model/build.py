"""Builders: backbone + instruction tokens + heads + LoRA, for training and for reloading a run."""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tqdm.auto import tqdm

from mtrec import paths
from mtrec.config import ModelConfig
from mtrec.data.records import RecDataset
from mtrec.model.backbone import BackboneRef, default_pooling, load_backbone, lora_target_modules
from mtrec.model.multitask import RecModel, TaskHeads
from mtrec.prompts import TaskPrompts, add_instruction_tokens


def build_backbone(cfg: ModelConfig, prompts: dict[str, TaskPrompts], ref: BackboneRef, seed: int = 0):
    """Load the backbone and tokenizer, add the instruction tokens, resize the embeddings.

    Returns:
        (backbone, tokenizer, token_ids: task -> id, pooling mode).
    """
    backbone, tokenizer = load_backbone(ref)
    if cfg.random_init:  # ablation: same architecture, no pretraining
        from transformers import AutoModel

        torch.manual_seed(seed)
        backbone = AutoModel.from_config(backbone.config, attn_implementation="sdpa").eval()
    token_ids = add_instruction_tokens(tokenizer, prompts)
    if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
        backbone.resize_token_embeddings(len(tokenizer))
    pooling = default_pooling(backbone.config) if cfg.pooling == "auto" else cfg.pooling
    return backbone, tokenizer, token_ids, pooling


@torch.no_grad()
def encode_texts(backbone, tokenizer, texts: list[str], pooling: str, batch_size: int = 64,
                 max_length: int = 32, desc: str = "encoding items", bf16: bool = False) -> torch.Tensor:
    """Pooled final hidden states of `texts` [len(texts), hidden], batched, with a progress bar.

    `bf16` runs under bf16 autocast (about twice as fast on CPUs with native bf16 and on GPUs)."""
    from mtrec.model.backbone import pool_hidden

    out = []
    device = next(backbone.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths -> little padding
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False, disable=len(texts) < 2 * batch_size):
        chunk = [texts[i] for i in order[start : start + batch_size]]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(device)
        with autocast:
            hidden = backbone(**enc).last_hidden_state
        out.append(pool_hidden(hidden, enc["attention_mask"], pooling).float().cpu())
    pooled = torch.cat(out) if out else torch.zeros(0, backbone.config.hidden_size)
    result = torch.empty_like(pooled)
    result[torch.as_tensor(order)] = pooled
    return result


def cached_encodings(key_parts: list[str], compute) -> torch.Tensor:
    """`compute()`, cached in ``$MTREC_CACHE_DIR/item-encodings/<sha256 of key_parts>.pt``.

    Encoding a catalog costs minutes on a CPU and depends only on the base weights, the texts and
    the pooling, so a second run (or another process) reuses it. Written atomically."""
    key = hashlib.sha256("\x00".join(key_parts).encode("utf-8")).hexdigest()[:32]
    path = paths.cache_dir() / "item-encodings" / f"{key}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(value, tmp)
    os.replace(tmp, path)
    return value


def initial_item_table(ds: RecDataset, cfg: ModelConfig, backbone, tokenizer, prompts: dict[str, TaskPrompts],
                       pooling: str, hidden: int, seed: int, backbone_hash: str | None = None,
                       bf16: bool = False) -> torch.Tensor:
    """The item table's starting rows: the backbone's encoding of each item's text, standardised,
    projected to `item_dim` when it differs from the hidden size, plus a small per-item random part
    (so items that share their text, as in Ciao/Epinions, start apart)."""
    gen = torch.Generator().manual_seed(seed)
    dim = cfg.item_dim or hidden
    if cfg.item_init == "random":
        return torch.randn(ds.num_items, dim, generator=gen)
    texts = [prompts["recommendation"].render_item(it.title, it.text, it.categories) for it in ds.items]
    def compute():
        return encode_texts(backbone, tokenizer, texts, pooling, cfg.encode_batch_size, bf16=bf16)

    if backbone_hash and not cfg.random_init:
        enc = cached_encodings([backbone_hash, pooling, str(bf16), str(len(tokenizer)), *texts], compute)
    else:
        enc = compute()
    enc = (enc - enc.mean(-1, keepdim=True)) / enc.std(-1, keepdim=True).clamp(min=1e-6)  # as the heads' LayerNorm
    if dim != hidden:
        proj = torch.linalg.qr(torch.randn(hidden, dim, generator=gen))[0]  # orthonormal columns
        enc = enc @ proj
    return enc + cfg.item_noise * enc.std() * torch.randn(enc.shape, generator=gen)


def build_heads(ds: RecDataset, item_table: torch.Tensor, train_idx: np.ndarray, hidden: int,
                like_threshold: float, shrinkage: float = 10.0) -> TaskHeads:
    """Heads for `ds`, with priors from the *training* interactions only, all trained further:
    the recommendation bias starts at centred log popularity; the rating and like offsets start at
    each item's shrunken mean (``sum / (n + shrinkage)`` toward the global mean) in logit space."""
    items = ds.item_idx[train_idx]
    counts = np.bincount(items, minlength=ds.num_items).astype(np.float64)
    bias = torch.from_numpy(np.log1p(counts)).float()
    mean = rating_mean_of(ds, train_idx)
    rating_off = like_off = None
    if mean is not None:
        lo, hi = ds.rating_scale
        rating_off = _logit_offsets(items, ds.values[train_idx], counts, mean, shrinkage, lambda v: (v - lo) / (hi - lo))
        liked = (ds.values[train_idx] >= like_threshold).astype(np.float64)
        like_off = _logit_offsets(items, liked, counts, float(liked.mean()), shrinkage, lambda v: v)
    return TaskHeads(hidden, len(ds.categories), item_table, bias - bias.mean(), ds.rating_scale, mean,
                     rating_off, like_off)


def _logit_offsets(items, values, counts, mean, shrinkage, to_unit) -> torch.Tensor:
    """logit(to_unit(shrunken item mean)) - logit(to_unit(global mean)), per item."""
    sums = np.bincount(items, weights=values - mean, minlength=len(counts))
    shrunk = mean + sums / (counts + shrinkage)
    logit = lambda p: np.log(np.clip(p, 1e-3, 1 - 1e-3) / (1 - np.clip(p, 1e-3, 1 - 1e-3)))  # noqa: E731
    return torch.from_numpy(logit(to_unit(shrunk)) - logit(to_unit(np.float64(mean)))).float()


def input_embedding_name(backbone) -> str:
    """The module name of the backbone's input embedding (found from structure, e.g. ``embed_tokens``)."""
    emb = backbone.get_input_embeddings()
    for name, module in backbone.named_modules():
        if module is emb:
            return name.split(".")[-1]
    raise ValueError("cannot find the input embedding module")


def lora_config(cfg: ModelConfig, backbone, token_ids: dict[str, int]) -> LoraConfig:
    """LoRA on the backbone's projections; heads fully trained; instruction-token rows trained."""
    targets = lora_target_modules(backbone) if cfg.lora_targets == "auto" else list(cfg.lora_targets)
    # Restrict targets to the backbone so head layers named like projections are never LoRA-wrapped.
    pattern = r"^backbone\..*\.(" + "|".join(targets) + r")$"
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=pattern,
        modules_to_save=["heads"],
        trainable_token_indices={input_embedding_name(backbone): sorted(token_ids.values())},
    )


def wrap_model(backbone, heads: TaskHeads, pooling: str, lcfg: LoraConfig) -> PeftModel:
    """RecModel wrapped by peft: base frozen, LoRA + heads + instruction-token rows trainable."""
    return get_peft_model(RecModel(backbone, heads, pooling), lcfg)


def count_parameters(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}


def rating_mean_of(ds: RecDataset, train_idx: np.ndarray) -> float | None:
    if not ds.explicit or len(train_idx) == 0:
        return None
    m = float(ds.values[train_idx].mean())
    return m if math.isfinite(m) else None
