"""What the like head knows before any training: AUC and log-loss of its prior on every user (and,
with `--rerank`, how far re-ranking the recommendation prior's candidates could go).

    python -m mtrec.bench prior --dataset lastfm-2k [--collab-dim 32] [--negatives 1] [--seed 0]
                                [--text bundled:minilm-l6 [--text-len 10] [--random-init]
                                 [--against RESULT.json:ROW ...]]
                                [--rerank K [K ...] [--ranking-prior both] [--target 0.13]]
                                [--seeds S [S ...] [--sequence-text bundled:minilm-l6]]

The heads are built exactly as training builds them (`mtrec.model.build.build_heads`, leave-one-out
split, the training interactions only), with and without collaborative factors, and scored on every
validation and test user's like examples as the evaluation draws them (`mtrec.tasks.build_specs`:
on implicit data the held-out item against `--negatives` sampled unobserved ones). With factors on
implicit data the prior is calibrated on the fit's own hold-out; the raw (uncalibrated) log-odds are
shown beside it. No backbone is loaded: the like head reads nothing from the prompt at step 0.

The training split's own like rows (what the heads train on) are scored too: the priors were fit on
those interactions, so there they are in-sample. The gap between the training and the validation
column is how much better the prior looks on the rows the heads learn from than on new ones. With
`--stack-tail k` the rows stacking trains on are scored too (`model.stack_tail`: each user's newest k
training interactions, by the priors fitted without them): out-of-sample, like validation.

`--text SPEC` loads that backbone and adds the like head's text term (`model.like_text`) to the factor
prior with no training at all: ``a * prior + s * t + b``, ``t`` the mean cosine of the backbone's
encodings of the newest `--text-len` history items' texts with the item's, ``(a, s, b)`` fitted on the
validation rows (`mtrec.model.collaborative.logistic_fit`, as training's fit) and scored on test, with a paired
interval against the prior alone over test users. `--random-init` encodes with the backbone's
architecture at random weights (the control). What the pretrained encoder's text alone adds, before
any fine-tuning. `--against RESULT.json:ROW` (an accuracy-bench result file of the same split and a
row label, as `bench pairs` takes them) also compares that row's like AUC with the prior + text term
on the test rows both scored (paired, over users): does a fine-tuned model add to the frozen text?

`--rerank K [K ...]` turns to the recommendation head: its priors alone (`PriorAlone`, as the accuracy
bench's "prior alone"; `--ranking-prior`, `--sequence-len` as the runs'), full-catalog ranks of every
validation and test user's target, and for each K what a model that re-ranks the prior's top K (as
LlamaRec re-ranks its retriever's) could reach: recall@K (the share of targets inside), the NDCG@10 of a
perfect re-ranker (each target inside moved to rank 1: exactly recall@K) and of a random one (the target
equally likely at each of the K places), and, with `--target`, the mean discount ``1 / log2(rank + 2)``
over the targets inside that a re-ranker must reach for that NDCG@10 (the prior's own ordering beside it).
How far the prior's candidates leave a re-ranker from a target, before any backbone is trained.

`--seeds S [S ...]` fits the sequential prior's network alone once per seed, exactly as runs fit it
(`mtrec.model.build.sequence_prior`, the same cache, `--sequence-len`), and ranks every validation and
test target: NDCG@10 per seed, their mean and standard deviation, and the seeds' ensemble (scores summed)
against their mean, paired over users. What one seed's figure is worth: the bench's intervals resample
users, not training seeds. `--sequence-text SPEC` adds the same from the text start
(`model.sequence_init=text`, SPEC's item encodings) and the paired difference text minus random of the
seed-averaged per-user NDCG@10 and of the two ensembles.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F

from mtrec import metrics
from mtrec.data.errors import DataError
from mtrec.data.records import RecDataset
from mtrec.data.registry import load_dataset
from mtrec.data.splits import ROLE_NAMES, TEST, TRAIN, VALID, Split, make_split
from mtrec.model.build import build_heads
from mtrec.model.collaborative import softmax_log_odds
from mtrec.model.stacking import prior_split, tail_mask
from mtrec.tasks import ExampleOptions, build_specs


CHUNK = 2048  # rows scored at once


def _chunked(score, n: int) -> torch.Tensor:
    """`score(rows)` over rows 0..n in slices of CHUNK, concatenated, without gradients: on implicit
    data each row's log-odds read a softmax over the whole catalog (the training role has ~100k rows)."""
    with torch.no_grad():  # one empty slice when there are no rows
        return torch.cat([score(slice(i, i + CHUNK)) for i in range(0, max(n, 1), CHUNK)])


def prior_rows(
    split: Split, collab_dim: int = 32, negatives: int = 1, like_threshold: float = 4.0, seed: int = 0,
    stack_tail: int = 0,
) -> list[dict]:
    """One row per prior (popularity/biases, factors, and on implicit data the raw factor log-odds):
    {"prior", "<role>/auc", "<role>/log_loss", "<role>/examples"} for the training (in-sample: the rows
    the heads train on), validation and test roles; with `stack_tail`, also "tail/…": the tail rows
    scored by the priors fitted without them (`mtrec.model.stacking`)."""
    ds = split.dataset
    table = torch.zeros(ds.num_items, 1)  # the item table plays no part in the like logit

    def heads_on(fit: Split) -> dict:
        return {dim: build_heads(ds, table, fit.train, 1, like_threshold, collab_dim=dim, split=fit, seed=seed,
                                 negatives_per_positive=negatives).eval()
                for dim in ((0, collab_dim) if collab_dim else (0,))}

    heads = heads_on(split)
    tail = tail_mask(split, stack_tail) if stack_tail else None
    opts = ExampleOptions(like_threshold=like_threshold, negatives_per_positive=negatives, seed=seed)
    plain = "user+item means and popularity" if ds.explicit else "popularity softmax"
    names = {0: f"{plain}, no factors"}
    if collab_dim:
        calibrated = "" if ds.explicit else ", calibrated"
        names[collab_dim] = f"collaborative factors (d={collab_dim}){calibrated}"
    rows = {name: {"prior": name} for name in names.values()}
    raw_name = f"collaborative factors (d={collab_dim}), raw log-odds"
    for role in (TRAIN, VALID, TEST) + (("tail",) if tail is not None else ()):
        if role == "tail":  # last: the stacked priors replace the others from here on
            specs = build_specs(split, TRAIN, ("like",), opts)
            specs, heads = specs.take(np.flatnonzero(tail[specs.interaction])), heads_on(prior_split(split, tail))
        else:
            specs = build_specs(split, role, ("like",), opts)
        users = torch.as_tensor(ds.user_idx[specs.interaction], dtype=torch.long)
        items = torch.as_tensor(specs.item, dtype=torch.long)
        labels = torch.as_tensor(specs.label, dtype=torch.float32)
        for dim, h in heads.items():
            logits = {names[dim]: _chunked(lambda c: h(torch.zeros(len(items[c]), 1), None, items[c], users[c])
                                           ["like_logit"], len(items))}
            if dim and not ds.explicit:
                factors = {"R": h.rec_user_factors, "T": h.rec_item_factors, "bias": h.item_bias}
                logits[raw_name] = _chunked(
                    lambda c: softmax_log_odds(factors, users[c], items[c, None], negatives)[:, 0], len(items))
            for name, zz in logits.items():
                row = rows.setdefault(name, {"prior": name})
                key = ROLE_NAMES.get(role, role)
                row[f"{key}/auc"] = metrics.auc(zz.numpy(), specs.label)
                row[f"{key}/log_loss"] = float(F.binary_cross_entropy_with_logits(zz, labels))
                row[f"{key}/examples"] = len(labels)
    order = [names[0], raw_name] + ([names[collab_dim]] if collab_dim else [])
    return [rows[n] for n in order if n in rows]


def rerank_ceiling(ranks, ks: list[int], k: int = 10, target: float | None = None) -> list[dict]:
    """For each K of `ks` (each at least k), from 0-based target ranks under a prior: {"K", "recall",
    "perfect", "random", "own", "needed"}: recall@K; the NDCG@k of a perfect re-ranker of the top K
    (= recall@K); of a random one (recall@K times the mean over the K places of their NDCG@k); the mean
    NDCG@k of the targets inside the top K under the prior's own order; and the mean a re-ranker needs
    among them for NDCG@k = `target` (None without a target; above 1: out of reach)."""
    ranks = np.asarray(ranks, np.int64)
    discount = metrics.ndcg_rows(ranks, k).numpy()  # each target's NDCG@k: 1 / log2(rank + 2), 0 beyond k
    random_place = float(metrics.ndcg_rows(np.arange(k), k).sum())  # summed over the k places that count
    out = []
    for K in ks:
        if K < k:  # the targets at ranks K..k-1 would still count: these figures leave them out
            raise ValueError(f"K = {K} is below the cut-off {k}: a re-ranker of the top K must reach past rank {k}")
        inside = ranks < K
        recall = float(inside.mean())
        row = {"K": K, "recall": recall, "perfect": recall, "random": recall * random_place / K,
               "own": float(discount[inside].mean()) if inside.any() else 0.0,
               "needed": (target / recall if recall else float("inf")) if target is not None else None}
        out.append(row)
    return out


def rerank_rows(split: Split, ks: list[int], ranking_prior: str = "factors", sequence_len: int = 50,
                collab_dim: int = 32, like_threshold: float = 4.0, negatives: int = 1, seed: int = 0,
                target: float | None = None) -> dict:
    """{role name: {"users", "ndcg@10", "rows": `rerank_ceiling`}} for validation and test: the ranks
    of every user's target under the recommendation head's priors alone (`PriorAlone`)."""
    from mtrec.bench.baselines import PriorAlone, _role_arrays, full_catalog_ranks

    prior = PriorAlone(collab_dim, like_threshold, negatives, ranking_prior, sequence_len).fit(split, seed=seed)
    out = {}
    for role in (VALID, TEST):
        users, items, _ = _role_arrays(split, role)
        ranks = full_catalog_ranks(prior, split, users, items, role)
        out[ROLE_NAMES[role]] = {"users": len(users), "ndcg@10": metrics.ndcg(ranks, 10),
                                 "rows": rerank_ceiling(ranks, ks, 10, target)}
    return out


def rerank_markdown(result: dict, dataset: str, ranking_prior: str, target: float | None) -> str:
    lines = [f"Re-ranking the recommendation prior's top K on {dataset} (`{ranking_prior}` prior alone, every "
             "user, full catalog; NDCG@10):", "",
             "| split | users | prior's NDCG@10 | K | recall@K = perfect re-rank | random re-rank | prior's mean "
             "discount inside | needed for the target |", "|---|---|---|---|---|---|---|---|"]
    for role, r in result.items():
        for row in r["rows"]:
            needed = "—"
            if row["needed"] is not None:
                needed = f"{row['needed']:.3f}" + (" (out of reach)" if row["needed"] > 1 else "")
            lines.append(f"| {role} | {r['users']} | {r['ndcg@10']:.4f} | {row['K']} | {row['recall']:.4f} | "
                         f"{row['random']:.4f} | {row['own']:.3f} | {needed} |")
    if target is not None:
        lines += ["", f"Target NDCG@10 {target}: a re-ranker of the top K must lift the mean discount of the targets "
                  "inside it from the prior's to the needed one (1 = every one at rank 1)."]
    return "\n".join(lines)


# the config values a run's item text encodings depend on (`item_encodings`)
ENCODER_KEYS = ("model.backbone", "model.random_init", "model.pooling", "model.encode_batch_size",
                "prompt.prompts_dir", "prompt.item_tokens")


def encoder_settings(cfg) -> dict:
    """`ENCODER_KEYS`' values in `cfg`: what `item_encodings` needs to encode as that run does."""
    return {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in ENCODER_KEYS}


def sequence_seed_rows(split: Split, seeds: list[int], sequence_len: int = 50,
                       text: torch.Tensor | None = None, fit: dict | None = None) -> dict:
    """The sequential prior's network alone (`mtrec.model.build.sequence_prior`: fitted as the runs
    fit it, the same cache, or with the `fit` settings changed), once per seed, from a random start or
    with `text` (item encodings) from the text start; every validation and test user's target ranked
    over the catalog as the bench does.

    Returns:
        {"seeds": [{"seed", "epochs", "epochs_run", "holdout", "valid", "test": {"ndcg@10", "hr@10"}}],
        "per_user": {role: [users] NDCG@10 averaged over the seeds}, "ensemble": {role: {"ndcg@10",
        "hr@10", "per_user"}} (the seeds' scores summed), "users": {role: count}}."""
    from mtrec.bench.baselines import _role_arrays
    from mtrec.model.build import sequence_prior
    from mtrec.model.sequential import SequenceNet, history_inputs
    from mtrec.ranking import Seen, rank_targets

    nets, rows = [], []
    for seed in seeds:
        fitted = sequence_prior(split, sequence_len, seed, text, fit)
        net = SequenceNet(dropout=0.0, **fitted["shape"])
        net.load_state_dict(fitted["state"])
        nets.append(net.eval())
        report = fitted["report"]
        rows.append({"seed": seed, "epochs": report["epochs"], "epochs_run": report["epochs_run"],
                     "holdout": report["holdout_ndcg@10"]})
    out: dict = {"seeds": rows, "per_user": {}, "ensemble": {}, "users": {}}
    for role in (VALID, TEST):
        name = ROLE_NAMES[role]
        users, items, _ = _role_arrays(split, role)
        seen = Seen.before(split, role, dense=False)

        def scores(block, which) -> torch.Tensor:
            with torch.no_grad():
                hist = history_inputs(split, block, role, sequence_len)
                return sum(n(hist)[:, -1] @ n.catalog().T for n in which)

        def rank_rows(which) -> np.ndarray:
            return np.asarray(rank_targets(lambda b: scores(b, which), users, items, seen,
                                           num_items=split.dataset.num_items))

        per_seed = []
        for row, net in zip(rows, nets):
            ranks = rank_rows([net])
            row[name] = {"ndcg@10": metrics.ndcg(ranks, 10), "hr@10": metrics.hit_rate(ranks, 10)}
            per_seed.append(np.asarray(metrics.ndcg_rows(ranks, 10)))
        ranks = rank_rows(nets)
        out["per_user"][name] = np.mean(per_seed, 0)
        out["ensemble"][name] = {"ndcg@10": metrics.ndcg(ranks, 10), "hr@10": metrics.hit_rate(ranks, 10),
                                 "per_user": np.asarray(metrics.ndcg_rows(ranks, 10))}
        out["users"][name] = len(users)
    return out


def sequence_fit_settings(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs (`--sequence-fit`) as `SEQUENCE_FIT` entries: values parsed as YAML and
    checked against the key's type as config overrides are (`mtrec.config`); a ValueError names an
    unknown key or a value of the wrong type."""
    import yaml

    from mtrec.config import _convert
    from mtrec.model.build import SEQUENCE_FIT

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in SEQUENCE_FIT:
            raise ValueError(f"--sequence-fit {pair!r}: expected KEY=VALUE with KEY one of {', '.join(SEQUENCE_FIT)}")
        try:
            out[key] = _convert(f"--sequence-fit {key}", yaml.safe_load(value), type(SEQUENCE_FIT[key]))
        except yaml.YAMLError:
            raise ValueError(f"--sequence-fit {pair!r}: cannot parse the value") from None
    return out


def seeds_markdown(results: dict[str, dict], dataset: str, resamples: int = 1000) -> str:
    """`sequence_seed_rows` for each network (label -> result: a start, or fit settings): a row per seed,
    the mean and spread, the seeds' ensemble against their mean (paired over users), and the second
    network against the first."""
    lines = [f"The sequential prior's network alone on {dataset}, per seed (every user, full catalog; the "
             "runs' fit and cache):", "",
             "| network | seed | best epoch / run | hold-out NDCG@10 | valid NDCG@10 | test NDCG@10 | test HR@10 |",
             "|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        for row in r["seeds"]:
            lines.append(f"| {label} | {row['seed']} | {row['epochs']} / {row['epochs_run']} | {row['holdout']:.4f} | "
                         f"{row['valid']['ndcg@10']:.4f} | {row['test']['ndcg@10']:.4f} | {row['test']['hr@10']:.4f} |")
    lines.append("")

    def span(d: dict) -> str:
        return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"

    for label, r in results.items():
        n = len(r["seeds"])
        for role in ("valid", "test"):
            v = np.array([row[role]["ndcg@10"] for row in r["seeds"]])
            e = r["ensemble"][role]
            line = (f"- {label}, {role}: NDCG@10 over {n} seeds mean {v.mean():.4f}, sd {v.std(ddof=1) if n > 1 else 0:.4f}, "
                    f"range {v.min():.4f}–{v.max():.4f}; best epoch mean "
                    f"{np.mean([row['epochs'] for row in r['seeds']]):.1f}")
            if n > 1:
                gain = metrics.paired_bootstrap(e["per_user"], r["per_user"][role], resamples)
                line += f"; the {n} seeds' ensemble {e['ndcg@10']:.4f} (HR@10 {e['hr@10']:.4f}), minus their mean {span(gain)}"
            lines.append(line)
    if len(results) == 2:
        (a, ra), (b, rb) = results.items()
        for role in ("valid", "test"):
            mean = metrics.paired_bootstrap(rb["per_user"][role], ra["per_user"][role], resamples)
            ens = metrics.paired_bootstrap(rb["ensemble"][role]["per_user"], ra["ensemble"][role]["per_user"], resamples)
            lines.append(f"- {b} minus {a}, {role} NDCG@10 (paired over {mean['n']:,} users): seed-averaged {span(mean)}; "
                         f"ensembles {span(ens)}")
    return "\n".join(lines)


def text_rows(split: Split, encodings: torch.Tensor, length: int, collab_dim: int = 32, negatives: int = 1,
              like_threshold: float = 4.0, seed: int = 0) -> dict:
    """The factor like prior with the text term fitted on validation (see the module docstring):
    {"weights": [a, s, b], "valid"/"test": {"prior auc", "prior log_loss", "with text auc", …, "examples"},
    "test interval": paired bootstrap of with-text minus prior AUC over test users}."""
    from mtrec.model.collaborative import logistic_fit
    from mtrec.model.multitask import text_similarity, unit_text_rows
    from mtrec.tasks import ExampleFactory, history_ids

    ds = split.dataset
    heads = build_heads(ds, torch.zeros(ds.num_items, 1), split.train, 1, like_threshold, collab_dim=collab_dim,
                        split=split, seed=seed, negatives_per_positive=negatives).eval()
    unit = unit_text_rows(encodings)
    opts = ExampleOptions(like_threshold=like_threshold, negatives_per_positive=negatives, max_history=length,
                          seed=seed, sequence_len=length)
    factory = ExampleFactory(split, opts)
    parts = {}
    for role in (VALID, TEST):
        specs = build_specs(split, role, ("like",), opts)
        users = torch.as_tensor(ds.user_idx[specs.interaction], dtype=torch.long)
        items = torch.as_tensor(specs.item, dtype=torch.long)
        examples = [factory.make("like", int(i), int(j), float(y)) for i, j, y in
                    zip(specs.interaction, specs.item, specs.label)]
        with torch.no_grad():
            z = heads(torch.zeros(len(items), 1), None, items, users)["like_logit"]
            t = text_similarity(unit, history_ids(examples, length), items)
        parts[role] = (z, t, torch.as_tensor(specs.label, dtype=torch.float32), users.numpy(), specs.item)
    z, t, y, _, _ = parts[VALID]
    w = torch.as_tensor(logistic_fit(torch.stack([z, t, torch.ones_like(z)], 1), y)).float()
    out: dict = {"weights": [round(float(v), 4) for v in w]}
    for role, (z, t, y, users, item) in parts.items():
        mixed = w[0] * z + w[1] * t + w[2]
        out[ROLE_NAMES[role]] = {
            "prior auc": metrics.auc(z.numpy(), y.numpy()), "with text auc": metrics.auc(mixed.numpy(), y.numpy()),
            "prior log_loss": float(F.binary_cross_entropy_with_logits(z, y)),
            "with text log_loss": float(F.binary_cross_entropy_with_logits(mixed, y)), "examples": len(y)}
        if role == TEST:
            out["test interval"] = metrics.paired_bootstrap_groups(metrics.auc, mixed.numpy(), z.numpy(), y.numpy(),
                                                                   users)
            out["test records"] = {"like_user": users, "like_item": np.asarray(item), "like_score": mixed.numpy(),
                                   "like_label": y.numpy()}
    return out


def against(result: dict, specs: list[str]) -> list[str]:
    """Lines: each accuracy-bench row of `specs` (RESULT.json:ROW) against the prior + text term, like
    AUC on the test rows both scored (`mtrec.bench.intervals.compare`)."""
    from mtrec.bench import intervals
    from mtrec.bench.pairs import load_row, parse_row

    lines = []
    for spec in specs:
        records, _ = load_row(*parse_row(spec))
        c = intervals.compare(records, result["test records"], "auc")
        if c is None:
            raise ValueError(f"{spec}: no like row in common with the prior + text term (another split?)")
        lines.append(f"{spec}, like AUC minus the prior + text term: {c['diff']:+.4f} [{c['low']:+.4f}, "
                     f"{c['high']:+.4f}] (paired 95% bootstrap over {c['n']:,} users)")
    return lines


def text_markdown(result: dict, spec: str, length: int) -> str:
    a, s, b = result["weights"]
    lines = [f"The factor like prior with the text term of {spec} (newest {length} history items), no training; "
             f"fitted on validation: {a:g} * prior + {s:g} * text similarity + {b:g}", "",
             "| role | prior AUC / log-loss | prior + text term AUC / log-loss | examples |", "|---|---|---|---|"]
    for role in ("valid", "test"):
        r = result[role]
        lines.append(f"| {role} | {r['prior auc']:.4f} / {r['prior log_loss']:.4f} | {r['with text auc']:.4f} / "
                     f"{r['with text log_loss']:.4f} | {r['examples']:,} |")
    i = result["test interval"]
    lines += ["", f"Test AUC, with the text term minus the prior alone: {i['diff']:+.4f} [{i['low']:+.4f}, "
                  f"{i['high']:+.4f}] (paired 95% bootstrap over {i['n']:,} users)"]
    return "\n".join(lines)


def item_encodings(dataset: str | RecDataset, spec: str, random_init: bool = False, seed: int = 0,
                   encoder: dict | None = None) -> torch.Tensor:
    """[items, hidden] `spec`'s encodings of `dataset`'s item texts (a registered name or a loaded data
    set), as training computes them in full precision (cached). `encoder`: further config values
    (``{"model.pooling": ..., ...}``, `ENCODER_KEYS`) of the run whose encodings these must equal: its
    pooling changes what they are, its prompts and item tokens the texts and vocabulary encoded, its
    batch size their last float bits."""
    from mtrec.config import load_config
    from mtrec.model.backbone import resolve_backbone
    from mtrec.model.build import build_backbone, item_text_encodings
    from mtrec.prompts import load_prompts, prompt_tasks

    ds = load_dataset(dataset) if isinstance(dataset, str) else dataset
    extra = [f"{k}={v}" for k, v in (encoder or {}).items()
             if k not in ("model.backbone", "model.random_init") and v is not None]  # None: the default
    cfg = load_config(None, [f"model.backbone={spec}", f"run.seed={seed}", f"model.random_init={str(random_init).lower()}",
                             *extra])
    prompts = load_prompts(cfg.prompt.prompts_dir, prompt_tasks(cfg.train.tasks))
    ref = resolve_backbone(spec)
    backbone, tokenizer, _, pooling = build_backbone(cfg.model, prompts, ref, seed, item_tokens=cfg.prompt.item_tokens)
    return item_text_encodings(ds, cfg.model, backbone, tokenizer, prompts, pooling, seed,
                               ref.sha256)


def markdown(rows: list[dict], dataset: str) -> str:
    lines = [
        f"Like prior on {dataset}, before any training (every user; AUC / log-loss):",
        "",
        "| prior | training rows (in-sample) AUC / log-loss | validation AUC / log-loss | test AUC / log-loss | "
        "examples (train / valid / test) |",
        "|---|---|---|---|---|",
    ]
    tail = "tail/auc" in rows[0]
    if tail:  # the stacking column
        lines[2] = lines[2].replace(" | examples (train", " | stacking's tail rows (priors fit without them) AUC / "
                                    "log-loss | examples (train").replace("test) |", "test / tail) |")
        lines[3] += "---|"
    roles = ("train", "valid", "test") + (("tail",) if tail else ())
    for r in rows:
        cells = [f"{r[f'{k}/auc']:.3f} / {r[f'{k}/log_loss']:.3f}" for k in roles]
        counts = " / ".join(f"{r[f'{k}/examples']:,}" for k in roles)
        lines.append(f"| {r['prior']} | " + " | ".join(cells) + f" | {counts} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtrec.bench prior", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a registered name (see `python -m mtrec.data list`)")
    p.add_argument("--collab-dim", type=int, default=32, help="width of the collaborative factors (0: none)")
    p.add_argument(
        "--negatives", type=int, default=1, help="implicit data: sampled unobserved items per held-out one"
    )
    p.add_argument(
        "--like-threshold", type=float, default=4.0, help="explicit data: rating >= this counts as a like"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stack-tail", type=int, default=0,
                   help="also score model.stack_tail's tail rows (each user's newest k training interactions) by "
                        "the priors fitted without them (0: off)")
    p.add_argument("--text", metavar="SPEC", help="also the like text term from this backbone's item encodings "
                                                  "(e.g. bundled:minilm-l6), fitted on validation, no training")
    p.add_argument("--text-len", type=int, default=10, help="history items the text term reads (model.like_text)")
    p.add_argument("--random-init", action="store_true", help="with --text: the backbone at random weights")
    p.add_argument("--against", nargs="+", default=[], metavar="RESULT.json:ROW",
                   help="with --text: accuracy-bench rows compared with the prior + text term (like AUC, paired)")
    p.add_argument("--rerank", nargs="+", type=int, default=[], metavar="K",
                   help="also what re-ranking the recommendation prior's top K (K >= 10) could reach (recall@K, "
                        "perfect and random re-rankers' NDCG@10)")
    p.add_argument("--ranking-prior", choices=("factors", "sequence", "both"), default="factors",
                   help="with --rerank: the recommendation head's prior (model.ranking_prior)")
    p.add_argument("--sequence-len", type=int, default=50, help="with --rerank or --seeds: model.sequence_len")
    p.add_argument("--target", type=float, help="with --rerank: an NDCG@10 to reach (e.g. 0.13)")
    p.add_argument("--seeds", nargs="+", type=int, default=[], metavar="S",
                   help="also the sequential prior's network alone fitted once per seed (the runs' fit, cached): "
                        "NDCG@10 per seed, mean, spread, the seeds' ensemble")
    p.add_argument("--sequence-text", metavar="SPEC",
                   help="with --seeds: also from the text start (model.sequence_init=text) of SPEC's item encodings, "
                        "against the random start (paired)")
    p.add_argument("--sequence-fit", action="append", default=[], metavar="KEY=VALUE",
                   help="with --seeds: also the network fitted with this fit setting changed (repeatable; "
                        "mtrec.model.build.SEQUENCE_FIT's keys, e.g. refit=true, dropout=0.5), against the runs' fit "
                        "(paired)")
    args = p.parse_args(argv)
    if args.collab_dim < 0 or args.negatives < 1 or args.stack_tail < 0:
        p.error("--collab-dim and --stack-tail must be >= 0 and --negatives >= 1")
    if args.text_len < 1 or ((args.random_init or args.against) and not args.text):
        p.error("--text-len must be >= 1; --random-init and --against go with --text")
    if any(k < 10 for k in args.rerank) or (args.target is not None and not args.rerank):
        p.error("--rerank takes K >= 10 (the NDCG@10 cut-off); --target goes with --rerank")
    if (args.sequence_text or args.sequence_fit) and not args.seeds:
        p.error("--sequence-text and --sequence-fit go with --seeds")
    if args.sequence_text and args.sequence_fit:
        p.error("--sequence-text and --sequence-fit: one comparison at a time")
    try:
        changed = sequence_fit_settings(args.sequence_fit)
    except ValueError as e:
        p.error(str(e))
    try:
        ds = load_dataset(args.dataset)
    except (DataError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    split = make_split(ds, "leave_one_out", seed=args.seed)
    rows = prior_rows(split, args.collab_dim, args.negatives, args.like_threshold, args.seed, args.stack_tail)
    print(markdown(rows, ds.name))
    if args.rerank:
        result = rerank_rows(split, args.rerank, args.ranking_prior, args.sequence_len, args.collab_dim,
                             args.like_threshold, args.negatives, args.seed, args.target)
        print()
        print(rerank_markdown(result, ds.name, args.ranking_prior, args.target))
    if args.seeds:
        starts = {"random start": sequence_seed_rows(split, args.seeds, args.sequence_len)}
        if args.sequence_text:
            enc = item_encodings(ds, args.sequence_text, False, args.seed)
            starts[f"text start ({args.sequence_text})"] = sequence_seed_rows(split, args.seeds, args.sequence_len, enc)
        if changed:
            label = ", ".join(f"{k}={v}" for k, v in changed.items())
            starts = {"the runs' fit": starts["random start"],
                      label: sequence_seed_rows(split, args.seeds, args.sequence_len, fit=changed)}
        print()
        print(seeds_markdown(starts, ds.name))
    if args.text:
        if not args.collab_dim:
            p.error("--text stacks on the factor prior: --collab-dim must be > 0")
        enc = item_encodings(args.dataset, args.text, args.random_init, args.seed)
        result = text_rows(split, enc, args.text_len, args.collab_dim, args.negatives, args.like_threshold, args.seed)
        print()
        print(text_markdown(result, args.text + (" at random weights" if args.random_init else ""), args.text_len))
        try:
            lines = against(result, args.against)
        except (FileNotFoundError, KeyError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if lines:
            print("\n".join([""] + lines))
    return 0
