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
from mtrec.data.splits import Split
from mtrec.model.backbone import BackboneRef, attention_projections, default_pooling, load_backbone, lora_target_modules
from mtrec.model.layer_cut import top_layer_pattern
from mtrec.model.collaborative import FULL_SOFTMAX_ITEMS, fit_friends, fit_ranking, fit_rating, newest_per_user
from mtrec.model.multitask import RecModel, TaskHeads, freeze_sequence
from mtrec.prompts import TaskPrompts, add_instruction_tokens
from mtrec.prompts.render import ITEM_TOKEN


def build_backbone(cfg: ModelConfig, prompts: dict[str, TaskPrompts], ref: BackboneRef, seed: int = 0,
                   dtype: torch.dtype | None = None, item_tokens: str = "text"):
    """Load the backbone and tokenizer, add the instruction tokens (and with hybrid `item_tokens`,
    `ITEM_TOKEN`), resize the embeddings (training, and loading a run folder, whose adapter then
    fills in what was trained).

    Returns:
        (backbone, tokenizer, token_ids: task -> id (and `ITEM_TOKEN` -> its id), pooling mode).
    """
    backbone, tokenizer = load_backbone(ref, **({"dtype": dtype} if dtype is not None else {}))
    if cfg.random_init:  # ablation: same architecture, no pretraining
        from transformers import AutoModel

        torch.manual_seed(seed)
        backbone = AutoModel.from_config(backbone.config, attn_implementation="sdpa").eval()
        if dtype is not None:
            backbone = backbone.to(dtype)
    token_ids = add_instruction_tokens(tokenizer, prompts)
    if item_tokens != "text":
        if ITEM_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [ITEM_TOKEN]}, replace_extra_special_tokens=False)
        token_ids[ITEM_TOKEN] = tokenizer.convert_tokens_to_ids(ITEM_TOKEN)
    if len(tokenizer) > backbone.get_input_embeddings().num_embeddings:
        backbone.resize_token_embeddings(len(tokenizer))
    if ITEM_TOKEN in token_ids:  # never read (a projection is written in its place); zero, so every rebuild agrees
        with torch.no_grad():
            backbone.get_input_embeddings().weight[token_ids[ITEM_TOKEN]] = 0.0
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


def cached(folder: str, key_parts: list[str], compute):
    """`compute()`, cached in ``$MTREC_CACHE_DIR/<folder>/<sha256 of key_parts>.pt``.

    For results that cost minutes on a CPU and depend only on what the key names: a catalog's
    encodings (base weights, texts, pooling) and the collaborative fits (training split, settings).
    A second run, or another process, reuses them, memory-mapped (tensors are read from the file as
    they are used, not loaded whole). Written atomically."""
    key = hashlib.sha256("\x00".join(key_parts).encode("utf-8")).hexdigest()[:32]
    path = paths.cache_dir() / folder / f"{key}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(value, tmp)
    os.replace(tmp, path)
    return value


def item_texts(ds: RecDataset, prompts: dict[str, TaskPrompts]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """What the item table's starting rows are encoded from: the distinct texts, in first-seen order,
    and the (item, text) pairs as two index arrays.

    A described item has one text, its rendering by the recommendation template's
    ``item_encoding``; items whose renderings are identical share it. An item with
    ``described=False`` (its title and text only restate an id) has one text per category, the
    category's name, and none without categories: its id never reaches the backbone."""
    index: dict[str, int] = {}
    pair_item, pair_text = [], []
    render = prompts["recommendation"].render_item
    for i, it in enumerate(ds.items):
        for text in ([render(it.title, it.text, it.categories)] if it.described else it.categories):
            pair_item.append(i)
            pair_text.append(index.setdefault(text, len(index)))
    return list(index), np.asarray(pair_item, np.int64), np.asarray(pair_text, np.int64)


def initial_item_table(ds: RecDataset, cfg: ModelConfig, backbone, tokenizer, prompts: dict[str, TaskPrompts],
                       pooling: str, hidden: int, seed: int, backbone_hash: str | None = None,
                       bf16: bool = False) -> torch.Tensor:
    """The item table's starting rows: `item_text_encodings` (``model.item_init=backbone``), projected to
    `item_dim` when it differs from the hidden size, plus a small per-item random part (so items that
    share their text start apart); random rows with ``model.item_init=random``."""
    gen = torch.Generator().manual_seed(seed)
    dim = cfg.item_dim or hidden
    if cfg.item_init == "random":
        return torch.randn(ds.num_items, dim, generator=gen)
    rows = item_text_encodings(ds, cfg, backbone, tokenizer, prompts, pooling, seed, backbone_hash, bf16)
    if dim != hidden:
        proj = torch.linalg.qr(torch.randn(hidden, dim, generator=gen))[0]  # orthonormal columns
        rows = rows @ proj
    return rows + cfg.item_noise * rows.std() * torch.randn(rows.shape, generator=gen)


def item_text_encodings(ds: RecDataset, cfg: ModelConfig, backbone, tokenizer, prompts: dict[str, TaskPrompts],
                        pooling: str, seed: int, backbone_hash: str | None = None, bf16: bool = False) -> torch.Tensor:
    """[items, hidden] the backbone's encoding of each item's text (`item_texts`: each distinct text
    encoded once, cached by the backbone's hash, the texts and every setting that changes the result,
    the encode batch size too: it changes the padding, so the last float bits, and whichever run
    encoded first would otherwise decide them for all; an undescribed item's row is the mean of its
    categories' encodings, zeros without categories), each row standardised."""
    texts, pair_item, pair_text = item_texts(ds, prompts)
    def compute():
        return encode_texts(backbone, tokenizer, texts, pooling, cfg.encode_batch_size, bf16=bf16)

    if backbone_hash:
        # a random-init backbone is a function of its config (in the hash), the seed and torch's generator
        weights = [f"random-init:{seed}:{torch.__version__}"] if cfg.random_init else []
        enc = cached("item-encodings", [backbone_hash, *weights, pooling, str(bf16), str(len(tokenizer)),
                                        f"batch:{cfg.encode_batch_size}", *texts], compute)
    else:
        enc = compute()
    enc = (enc - enc.mean(-1, keepdim=True)) / enc.std(-1, keepdim=True).clamp(min=1e-6)  # as the heads' LayerNorm
    if len(pair_item) == ds.num_items and np.array_equal(pair_item, np.arange(ds.num_items)):
        rows = enc[torch.as_tensor(pair_text)]  # one text per item (the usual case)
    else:
        counts = np.bincount(pair_item, minlength=ds.num_items).astype(np.float32)
        rows = torch.zeros(ds.num_items, enc.shape[1]).index_add_(0, torch.as_tensor(pair_item), enc[torch.as_tensor(pair_text)])
        rows = rows / torch.as_tensor(counts).clamp(min=1)[:, None]
    return rows


def build_heads(ds: RecDataset, item_table: torch.Tensor, train_idx: np.ndarray, hidden: int,
                like_threshold: float, shrinkage: float = 10.0, collab_dim: int = 0, split: Split | None = None,
                seed: int = 0, negatives_per_positive: int = 1, friends: bool = False,
                friend_dim: int | None = None, ranking_prior: str = "factors", sequence_len: int = 50,
                item_tokens: dict | None = None, like_text: dict | None = None,
                sequence_text: torch.Tensor | None = None, sequence_seeds: int = 1,
                sequence_split: Split | None = None) -> TaskHeads:
    """Heads for `ds`, with priors from the *training* interactions only, all trained further.

    Without collaborative factors (`collab_dim` 0) the recommendation bias starts at centred log
    popularity, and the rating and like offsets start at each item's, then each user's (after the
    item's), shrunken mean deviation (``sum / (n + shrinkage)``) in logit space: at step 0 the
    rating head is the classic user+item bias model. With `collab_dim` > 0 (and `split`), biases,
    offsets and user/item factors are fitted together on the training split instead (see
    `mtrec.model.collaborative`). Either way the backbone learns what the prompt adds. With
    `friends`, the friend head too (`friend_head_start`, factors `friend_dim` wide: default `collab_dim`).

    `ranking_prior` is what the recommendation head starts from: ``factors`` (the bias and factors
    above), ``sequence`` (the sequential prior alone: `sequence_prior`, reading `sequence_len` history
    items; the bias and factors of the ranking head start at zero) or ``both`` (summed). With
    `sequence_text` (item text encodings) the sequence network's item table starts from them; with
    `sequence_seeds` > 1 the prior is a seed ensemble (`sequence_priors`). `sequence_split`: the split
    the sequential prior is fitted on, when not `split` (stacked heads whose ranking priors are not
    stacked hold the full fit: `mtrec.model.stacking.StackedPriors` copies it over theirs).

    `like_text` ({"table": `item_text_encodings`, "len": `model.like_text`}): the like head's text term."""
    if ranking_prior not in RANKING_PRIORS:
        raise ValueError(f"model.ranking_prior: {ranking_prior!r} is not one of {', '.join(RANKING_PRIORS)}")
    friend_dim = collab_dim if friend_dim is None else friend_dim
    items, users = ds.item_idx[train_idx], ds.user_idx[train_idx]
    counts = np.bincount(items, minlength=ds.num_items).astype(np.float64)
    bias = torch.from_numpy(np.log1p(counts)).float()
    bias = bias - bias.mean()
    mean = rating_mean_of(ds, train_idx)
    offsets: dict = {}
    if mean is not None:
        lo, hi = ds.rating_scale
        ratings = ds.values[train_idx].astype(np.float64)
        liked = (ratings >= like_threshold).astype(np.float64)
        for name, values, to_unit in (("rating", ratings, lambda v: (v - lo) / (hi - lo)), ("like", liked, lambda v: v)):
            m = float(values.mean())
            item_dev = _shrunk(items, values - m, ds.num_items, shrinkage)
            user_dev = _shrunk(users, values - m - item_dev[items], ds.num_users, shrinkage)
            item_z = _logit(to_unit(m + item_dev)) - _logit(to_unit(m))
            user_z = _logit(to_unit(m + user_dev)) - _logit(to_unit(m))
            offsets[name] = (torch.from_numpy(item_z).float(), torch.from_numpy(user_z).float())
    collab: dict = {}
    head_bias: dict = {}  # starting bias of the rating and like heads, where a fit or a prior gives one
    if collab_dim and split is not None and len(train_idx):
        holdout = newest_per_user(split, train_idx)
        key = [fit_version(ds.num_items), _split_key(split, train_idx), str(collab_dim), str(like_threshold), str(seed)]
        like_k = negatives_per_positive if mean is None else 0  # implicit: calibrate the like prior too
        ranking = cached("collab-fits", ["ranking", *key, str(like_k)],
                         lambda: fit_ranking(split, train_idx, holdout, collab_dim, bias, seed=seed,
                                             like_negatives=like_k))
        bias, collab["R"], collab["T"] = ranking["bias"], ranking["R"], ranking["T"]
        if mean is not None:
            rating = cached("collab-fits", ["rating", *key],
                            lambda: fit_rating(split, train_idx, holdout, collab_dim, like_threshold, seed=seed))
            offsets = {"rating": (rating["io"], rating["uo"]), "like": (rating["lio"], rating["luo"])}
            collab.update(P=rating["P"], Q=rating["Q"], a=rating["a"])
            head_bias = {"rating": float(rating["b"]), "like": float(rating["lb"])}
    if mean is None and len(train_idx):
        # implicit data: "like" is an observed item against `negatives_per_positive` uniformly sampled
        # unobserved ones, so the Bayes logit is log p(i | u) + log(N / k): the recommendation softmax
        # (popularity alone without factors) gives the like head its prior
        # (scaled by a logistic fit on the fit's own hold-out where there are factors: raw, they are over-confident)
        scale, offset = ranking.get("like_calibration", (1.0, 0.0)) if "R" in collab else (1.0, 0.0)
        item_z, user_z, like_b = implicit_like_prior(bias, collab.get("R"), collab.get("T"), ds.num_users,
                                                     negatives_per_positive, scale, offset)
        offsets = {"rating": (torch.zeros(ds.num_items), torch.zeros(ds.num_users)), "like": (item_z, user_z)}
        if "R" in collab:
            collab.update(P=collab["R"].clone(), Q=collab["T"].clone(), a=torch.tensor(float(scale)))
        head_bias = {"like": like_b}
    heads = TaskHeads(hidden, len(ds.categories), item_table, bias, ds.rating_scale, mean,
                      offsets.get("rating", (None,))[0], offsets.get("like", (None,))[0],
                      (offsets["rating"][1], offsets["like"][1]) if offsets else None, ds.num_users,
                      collab_dim=collab_dim, collab=collab,
                      friends=friend_head_start(ds, item_table, train_idx, friend_dim, seed) if friends else None,
                      sequence=(sequence_priors(sequence_split or split, sequence_len, sequence_seeds, seed,
                                                sequence_text) if ranking_prior != "factors" else None),
                      item_tokens=item_tokens, like_text=like_text)
    with torch.no_grad():
        for name, value in head_bias.items():
            getattr(heads, name).bias.fill_(value)
        if ranking_prior == "sequence":
            for t in (heads.item_bias, heads.rec_user_factors, heads.rec_item_factors):
                t.zero_()
        if split is not None and split.heldout_items is not None:
            # the cold-items protocol: a held-out item has no prior at all (the fits never saw it; a
            # factor left at its random start would rank it by noise, a bias at log(0 + 1) by absence)
            cold = torch.as_tensor(np.flatnonzero(split.heldout_items), dtype=torch.long)
            for name in COLD_ZEROED:
                getattr(heads, name)[cold] = 0.0
            if heads.has_sequence:  # row 0 of the network's item table is padding: item i is row i + 1
                for net in heads.sequence_nets():
                    net.item.weight[cold + 1] = 0.0
    return heads


RANKING_PRIORS = ("factors", "sequence", "both")
SEQUENCE_VERSION = "sequence-1"  # bump when `fit_sequence` changes: cached fits of another version are not reused
# the sequential prior's network and fit: SASRec's settings of the bench (`mtrec.bench.baseline_suite`)
SEQUENCE_NET = dict(hidden=64, blocks=2, heads=1)
# refit (the hold-out picks the epoch count, then every training item is a target) is off: over five
# seeds on MovieLens-100K no measurable difference (validation NDCG@10 +0.0049 [-0.0022, +0.0117], test
# +0.0005) for 78% more epochs (README, "The sequential prior refit, and seed ensembles in the heads")
SEQUENCE_FIT = dict(dropout=0.2, lr=3e-3, max_epochs=200, patience=10, refit=False)


def sequence_prior(split: Split | None, max_len: int, seed: int = 0, text: torch.Tensor | None = None,
                   fit: dict | None = None) -> dict:
    """The sequential prior of the ranking head (`mtrec.model.sequential.fit_sequence` on the
    training split), cached in ``collab-fits`` by the training interactions and the settings.

    `text` [items, d]: item text encodings (`item_text_encodings`) the network's item table starts
    from (``model.sequence_init=text``: `mtrec.model.sequential.text_start`); None: a random start.
    `fit`: `SEQUENCE_FIT` entries changed (the prior bench's ``--sequence-fit``; the runs use none)."""
    from mtrec.model.sequential import fit_sequence, text_start

    if split is None:
        raise ValueError("model.ranking_prior: the sequential prior is fitted on a split; none was given")
    start = None if text is None else text_start(text, SEQUENCE_NET["hidden"])
    if unknown := set(fit or {}) - set(SEQUENCE_FIT):
        raise ValueError(f"sequence fit settings: unknown {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(SEQUENCE_FIT)})")
    settings = SEQUENCE_FIT | (fit or {})
    key = [SEQUENCE_VERSION, _split_key(split, split.train), str(max_len), repr(sorted(SEQUENCE_NET.items())),
           repr(sorted(settings.items())), str(seed)]
    if start is not None:
        key.append("text:" + hashlib.sha256(start.numpy().tobytes()).hexdigest())
    return cached("collab-fits", ["sequence", *key],
                  lambda: fit_sequence(split, max_len=max_len, seed=seed, item_start=start, **SEQUENCE_NET,
                                       **settings))


def sequence_priors(split: Split | None, max_len: int, seeds: int = 1, seed: int = 0,
                    text: torch.Tensor | None = None) -> dict:
    """The sequential prior of `seeds` networks (``model.sequence_seeds``): `sequence_prior` fitted
    with seeds `seed`, `seed` + 1, ...; {"shape", "state": the first's, "more": the others' states}
    (`TaskHeads` scores their mean). Each fit is cached on its own, so one seed's fit is shared by
    runs of other ensemble sizes."""
    if seeds < 1:
        raise ValueError(f"model.sequence_seeds: must be >= 1, got {seeds}")
    fits = [sequence_prior(split, max_len, seed + k, text) for k in range(seeds)]
    return {"shape": fits[0]["shape"], "state": fits[0]["state"], "more": [f["state"] for f in fits[1:]]}


# per-item rows of the heads' priors, zeroed for a cold-items split's held-out items
COLD_ZEROED = ("item_bias", "rec_item_factors", "item_factors", "item_rating_offset", "item_like_offset")


def friend_head_start(ds: RecDataset, item_table: torch.Tensor, train_idx: np.ndarray, dim: int,
                      seed: int = 0) -> dict:
    """The friend head's starting values: each user's table row is the mean item-table row of their
    training items (zero without any); bias and factors are the user-embedding factor model fitted
    on `ds`'s graph, which the friend hold-out has already left out (`fit_friends`; cached)."""
    users = torch.as_tensor(ds.user_idx[train_idx], dtype=torch.long)
    rows = item_table.float().index_select(0, torch.as_tensor(ds.item_idx[train_idx], dtype=torch.long))
    table = torch.zeros(ds.num_users, item_table.shape[1]).index_add_(0, users, rows)
    table = table / torch.bincount(users, minlength=ds.num_users).clamp(min=1)[:, None].float()
    h = hashlib.sha256()
    for a in (ds.social_src, ds.social_dst, np.array([ds.num_users])):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    fit = cached("collab-fits", ["friends", fit_version(ds.num_users), h.hexdigest(), str(dim), str(seed)],
                 lambda: fit_friends(ds.social_src, ds.social_dst, ds.num_users, dim, seed=seed))
    return {"table": table, "bias": fit["bias"], "S": fit["R"], "D": fit["T"]}


def wants_friends(cfg, ds: RecDataset) -> bool:
    """Does a run of `cfg` on `ds` have the friend head? (It trains friends and `ds` has a graph.)"""
    return "friends" in cfg.train.tasks and ds.num_social_edges > 0


def empty_heads(ds: RecDataset, cfg: ModelConfig, hidden: int, friends: bool = False,
                item_tokens: bool = False) -> TaskHeads:
    """Heads of the shapes `build_heads` gives `ds` under `cfg`, every value zero: a run folder's
    adapter (or an export's weights) fills them in."""
    dim = cfg.item_dim or hidden
    zero_friends, width = None, cfg.collab_dim if cfg.friend_dim is None else cfg.friend_dim
    if friends:
        zero_friends = {"table": torch.zeros(ds.num_users, dim), "bias": torch.zeros(ds.num_users),
                        "S": torch.zeros(ds.num_users, width), "D": torch.zeros(ds.num_users, width)}
    sequence = None
    if cfg.ranking_prior != "factors":
        sequence = {"shape": dict(num_items=ds.num_items, max_len=cfg.sequence_len, **SEQUENCE_NET),
                    "more": [None] * (cfg.sequence_seeds - 1)}
    like_text = {"table": torch.zeros(ds.num_items, hidden), "len": cfg.like_text} if cfg.like_text else None
    return TaskHeads(hidden, len(ds.categories), torch.zeros(ds.num_items, dim), torch.zeros(ds.num_items),
                     ds.rating_scale, rating_mean_of(ds, np.arange(len(ds.values))), num_users=ds.num_users,
                     collab_dim=cfg.collab_dim, friends=zero_friends, sequence=sequence,
                     item_tokens={"embed_rms": 1.0} if item_tokens else None, like_text=like_text)


def embedded_items(split: Split) -> np.ndarray:
    """[items] bool: the items with a collaborative embedding (at least one training interaction);
    with hybrid item tokens only these are written as item tokens, the others keep their titles."""
    return np.bincount(split.dataset.item_idx[split.train], minlength=split.dataset.num_items) > 0


def token_embedding_rms(backbone) -> float:
    """The RMS of the backbone's input token embeddings (the scale hybrid item tokens are written at)."""
    return float(backbone.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt())


COLLAB_VERSION = "collab-1"  # bump when the fits change: cached fits of another version are not reused
LARGE_VERSION = "sparse-2"  # the large-catalog fits' own version (row-sparse updates, sampled hold-out loss)


def fit_version(columns: int) -> str:
    """The cache version of a fit over `columns` items (or users): large catalogs are fitted
    differently (`mtrec.model.collaborative`), and only their cached fits are invalidated by that."""
    return COLLAB_VERSION + (f"+{LARGE_VERSION}" if columns > FULL_SOFTMAX_ITEMS else "")


def _split_key(split: Split, train_idx: np.ndarray) -> str:
    """sha256 of the training interactions as the fits see them (users, items, values, order)."""
    ds = split.dataset
    h = hashlib.sha256()
    for a in (train_idx, ds.user_idx[train_idx], ds.item_idx[train_idx], ds.values[train_idx],
              split.position[train_idx], np.array([ds.num_users, ds.num_items])):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _shrunk(index: np.ndarray, values: np.ndarray, size: int, shrinkage: float) -> np.ndarray:
    """Per-index sum / (count + shrinkage) (shrinkage 0: the plain mean)."""
    sums = np.bincount(index, weights=values, minlength=size)
    counts = np.bincount(index, minlength=size)
    return sums / np.maximum(counts + shrinkage, 1e-9)


def _logit(p) -> np.ndarray:
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def input_embedding_name(backbone) -> str:
    """The module name of the backbone's input embedding (found from structure, e.g. ``embed_tokens``)."""
    emb = backbone.get_input_embeddings()
    for name, module in backbone.named_modules():
        if module is emb:
            return name.split(".")[-1]
    raise ValueError("cannot find the input embedding module")


def lora_config(cfg: ModelConfig, backbone, token_ids: dict[str, int]) -> LoraConfig:
    """LoRA on the backbone's projections; heads fully trained; instruction-token rows trained."""
    if cfg.lora_targets == "auto":
        targets = lora_target_modules(backbone)
    elif cfg.lora_targets == "attention":
        targets = attention_projections(backbone)
    else:
        targets = list(cfg.lora_targets)
    # Restrict targets to the backbone so head layers named like projections are never LoRA-wrapped;
    # with model.train_top_layers, to its top layers (see mtrec.model.layer_cut).
    if cfg.train_top_layers:
        pattern = top_layer_pattern(backbone, cfg.train_top_layers, targets)
    else:
        pattern = r"^backbone\..*\.(" + "|".join(targets) + r")$"
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=pattern,
        modules_to_save=["heads"],
        # the item token's row is never read (the model writes a projection in its place)
        trainable_token_indices={input_embedding_name(backbone): sorted(v for k, v in token_ids.items()
                                                                        if k != ITEM_TOKEN)},
    )


def implicit_like_prior(item_bias: torch.Tensor, user_factors: torch.Tensor | None, item_factors: torch.Tensor | None,
                        num_users: int, negatives_per_positive: int, scale: float = 1.0,
                        offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(item offsets, user offsets, head bias) of the like logit on implicit data such that
    ``b + item_z + user_z + scale <r_u, t_i> = scale (log softmax_i(bias + <r_u, t>) + log(N / k)) + offset``:
    the (calibrated) log-odds of an observed item against k uniformly sampled ones. The head bias
    holds the users' mean, so a user the run does not know (no offset, no factors) gets the
    popularity prior."""
    shift = math.log(len(item_bias) / max(negatives_per_positive, 1))
    if user_factors is None:
        item_z = item_bias - torch.logsumexp(item_bias, 0)
        return scale * item_z, torch.zeros(num_users), scale * shift + offset
    lse = torch.cat([torch.logsumexp(user_factors[a : a + 256] @ item_factors.T + item_bias, dim=1)
                     for a in range(0, num_users, 256)])
    return scale * item_bias, scale * (lse.mean() - lse), float(scale * (shift - lse.mean()) + offset)


def wrap_model(backbone, heads: TaskHeads, pooling: str, lcfg: LoraConfig) -> PeftModel:
    """RecModel wrapped by peft: base frozen, LoRA + heads + instruction-token rows trainable."""
    return release_original_heads(get_peft_model(RecModel(backbone, heads, pooling), lcfg))


def heads_of(model: PeftModel) -> TaskHeads:
    """The trained `TaskHeads` of a `wrap_model` model (peft's copy of them: the one that runs)."""
    return model.base_model.model.heads.modules_to_save["default"]


def release_original_heads(model: PeftModel) -> PeftModel:
    """Free the heads peft keeps beside the trained copy.

    peft's ``modules_to_save`` deep-copies the heads (item table, factors and offsets included) and
    keeps the original only for running with the adapter disabled, which mtrec never does. Its
    tensors are replaced by empty ones, so the tables are held once (the copy is what trains, is
    saved in ``adapter/`` and is loaded back). Returns `model`."""
    from peft.utils.other import ModulesToSaveWrapper

    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            for p in module.original_module.parameters():
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    return freeze_sequence(model)


def count_parameters(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}


def rating_mean_of(ds: RecDataset, train_idx: np.ndarray) -> float | None:
    if not ds.explicit or len(train_idx) == 0:
        return None
    m = float(ds.values[train_idx].mean())
    return m if math.isfinite(m) else None


# Per-item / per-user parameters: Adam moves every row by about the learning rate each step, whatever
# the size of its gradient, so rows that full softmax touches with tiny gradients would drift as fast
# as the targets. A small learning rate keeps their training-split priors until evidence accumulates.
TABLE_PARAMETERS = ("item_table", "item_bias", "item_rating_offset", "item_like_offset", "user_rating_offset",
                    "user_like_offset", "user_factors", "item_factors", "rec_user_factors", "rec_item_factors",
                    "user_table", "friend_bias", "friend_src_factors", "friend_dst_factors")


def build_optimizer(model, lr: float, head_lr: float, table_lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW with three groups: LoRA and token rows at `lr`, the heads at `head_lr`, per-item and
    per-user tables at `table_lr`; fused on CUDA."""
    groups: dict[str, list] = {"lora": [], "heads": [], "tables": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            kind = "tables" if name.split(".")[-1] in TABLE_PARAMETERS else "heads" if ".heads." in name else "lora"
            groups[kind].append(p)
    lrs = {"lora": lr, "heads": head_lr, "tables": table_lr}
    return torch.optim.AdamW([{"params": ps, "lr": lrs[k]} for k, ps in groups.items() if ps],
                             weight_decay=weight_decay, fused=torch.cuda.is_available())
