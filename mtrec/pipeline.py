"""From split to batches: task mixing, prompt rendering, collation; and evaluation on those batches.

Prompts are rendered on the fly rather than pre-tokenised with ``datasets.map``: each training draw
picks a random training paraphrase (augmentation), and on a CPU rendering costs ~1 ms an example
against seconds for the model step. Draws are a pure function of (seed, step, process), so a run
resumed at step k sees the same examples as an uninterrupted one.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from mtrec import metrics, ranking
from mtrec.batching import item_slots, length_bucketed_batches, pad_right
from mtrec.data.splits import TRAIN, VALID, Split
from mtrec.kinds import KIND_IDS, KIND_NAMES, KIND_TASK, KINDS, NUM_KINDS, Kind
from mtrec.model.multitask import row_losses
from mtrec.prompts import PromptRenderer, TaskPrompts, Template
from mtrec.tasks import ExampleFactory, ExampleOptions, Specs, build_specs, history_ids


def kinds_for(tasks: list[str], split: Split) -> list[str]:
    """Prompt kinds trained for `tasks` on this data set (rating needs ratings; categories need categories)."""
    ds = split.dataset
    out = []
    for task in tasks:
        for kind in KINDS[task]:
            if kind == "rating" and not ds.explicit:
                continue
            if kind == "categories" and not ds.categories:
                continue
            if kind == "friends" and not ds.num_social_edges:
                continue
            out.append(kind)
    return out


def mixing_probs(sizes: dict[str, int], mixing: str, temperature: float) -> dict[str, float]:
    """Probability of drawing each kind: proportional to size, or to size^(1/T) (temperature)."""
    power = 1.0 if mixing == "proportional" else 1.0 / temperature
    raw = {k: float(n) ** power for k, n in sizes.items() if n > 0}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


@dataclass
class Batcher:
    """Renders spec rows into padded tensors with every label a head needs."""

    factory: ExampleFactory
    renderer: PromptRenderer
    prompts: dict[str, TaskPrompts]
    pad_id: int
    num_categories: int

    def templates(self, kind: str, heldout: bool = False) -> list[Template]:
        tp = self.prompts[KIND_TASK[kind]]
        return tp.heldout(kind) if heldout else tp.train(kind)

    def render(self, specs: Specs, rows: np.ndarray, templates: list[Template],
               plain: np.ndarray | None = None) -> tuple[list, list]:
        """Examples and rendered prompts of `rows` of `specs`, row i rendered with templates[i] (and,
        where `plain` is True, with titles instead of hybrid item tokens: the curriculum)."""
        examples = [self.factory.make_row(specs, int(r)) for r in rows]
        text = self.renderer.as_text()
        return examples, [(text if plain is not None and plain[i] else self.renderer).render(ex, t)
                          for i, (ex, t) in enumerate(zip(examples, templates))]

    def collate(self, specs: Specs, rows: np.ndarray, templates: list[Template], plain: np.ndarray | None = None) -> dict:
        """Batch of `rows` of `specs`, row i rendered with templates[i] (`plain`: as `render`). Pads on the right."""
        return self.tensors(specs, rows, *self.render(specs, rows, templates, plain))

    def tensors(self, specs: Specs, rows: np.ndarray, examples: list, rendered: list) -> dict:
        """The batch of already rendered `rows`: padded ids and mask, and every head's labels."""
        ids, mask = pad_right(rendered, self.pad_id)
        kind = torch.as_tensor(specs.kind[rows], dtype=torch.long)
        label = torch.as_tensor(specs.label[rows], dtype=torch.float32)
        cat_target = torch.zeros(len(rows), max(self.num_categories, 1))
        for i, ex in enumerate(examples):
            if int(kind[i]) == Kind.CATEGORIES and ex.label:
                cat_target[i, list(ex.label)] = 1.0 / len(ex.label)
        out = {
            "input_ids": ids,
            "attention_mask": mask,
            "kind": kind,
            "rating": torch.where(kind == Kind.RATING, label, torch.zeros_like(label)),
            "like": torch.where(kind == Kind.LIKE, label, torch.zeros_like(label)),
            "category_target": cat_target,
            # a friends row's `item` column holds its target user: the heads get it as `friend`, and no item
            "item": torch.where(kind == Kind.FRIENDS, -1, torch.as_tensor(specs.item[rows], dtype=torch.long)),
            "friend": torch.where(kind == Kind.FRIENDS, torch.as_tensor(specs.item[rows], dtype=torch.long), -1),
            "user": torch.as_tensor(self.factory.ds.user_idx[specs.interaction[rows]], dtype=torch.long),
            "template_ids": [r.template_id for r in rendered],
        }
        if self.factory.opts.sequence_len:  # the sequential prior's input
            out["history"] = history_ids(examples, self.factory.opts.sequence_len)
        slots = item_slots(rendered, ids.shape[1])
        if slots is not None:  # hybrid item tokens
            out["item_slots"] = slots
        return out


def extra_inputs(batch: dict) -> dict:
    """The model's ``history`` and ``item_slots`` keywords for `batch`: present only where the run has
    a sequential prior or hybrid item tokens (a model traced or compiled without them sees the old call)."""
    return {k: batch[k] for k in ("history", "item_slots") if k in batch}


class TaskSampler:
    """Draws training batches: a kind per row by the mixing probabilities, then a row and a
    training paraphrase uniformly. Deterministic in (seed, step, rank).

    With `buckets` > 1, the rows of `buckets` consecutive batches are drawn together (the same
    distribution), rendered, sorted by token count and cut into batches of similar length, served in
    a seeded random order: far less padding (on MovieLens prompts of 40-128 tokens, from about a
    third of the tokens to a few percent), and still a pure function of (seed, step, rank).
    """

    def __init__(self, specs: dict[str, Specs], probs: dict[str, float], batcher: Batcher, batch_size: int, seed: int,
                 buckets: int = 0, fixed: int = 0, curriculum: int = 0):
        self.specs, self.batcher, self.batch_size, self.seed = specs, batcher, batch_size, seed
        self.curriculum = curriculum  # hybrid item tokens: steps over which their share rises from 0 to 1
        self.buckets = buckets
        self.fixed = fixed
        self._kept: dict[tuple[int, int], dict] = {}  # fixed > 0: each fixed batch, built once
        self.kinds = sorted(probs)
        self.p = np.array([probs[k] for k in self.kinds])
        self.all = Specs.concat([specs[k] for k in self.kinds])
        self.offsets = np.cumsum([0] + [len(specs[k]) for k in self.kinds])
        self._group: tuple[int, int] | None = None
        self._pool: tuple = ()

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[Template]]:
        which = rng.choice(len(self.kinds), size=n, p=self.p)
        rows, templates = [], []
        for w in which:
            kind = self.kinds[w]
            rows.append(self.offsets[w] + rng.integers(len(self.specs[kind])))
            options = self.batcher.templates(kind)
            templates.append(options[rng.integers(len(options))])
        return np.array(rows), templates

    def batch(self, step: int, rank: int = 0) -> dict:
        """The batch of draw `step` on process `rank`. With `fixed` > 0, draws cycle through the
        batches of draws ``0 .. fixed - 1``, each epoch in a new seeded order; each is rendered once
        and kept (identical tokens every epoch, so the activation cache can replay it)."""
        if not self.fixed:
            return self._batch(step, rank)
        epoch, position = divmod(step, self.fixed)
        draw = int(np.random.default_rng([self.seed, epoch, rank, self.fixed]).permutation(self.fixed)[position])
        if (draw, rank) not in self._kept:
            group = max(self.buckets, 1)  # a bucketed group is rendered at once: keep all its batches
            for d in range(draw - draw % group, min(draw - draw % group + group, self.fixed)):
                self._kept[d, rank] = self._batch(d, rank)
        return self._kept[draw, rank]

    def _plain(self, rng: np.random.Generator, n: int, step: int) -> np.ndarray | None:
        """The curriculum's rows written as text at draw `step` (each with probability 1 - step / N);
        None without a curriculum (and no draw from `rng`, so other runs see the same batches)."""
        if not self.curriculum:
            return None
        return rng.random(n) >= min(1.0, step / self.curriculum)

    def _batch(self, step: int, rank: int) -> dict:
        if self.buckets <= 1:
            rng = np.random.default_rng([self.seed, step, rank])
            rows, templates = self._draw(rng, self.batch_size)
            plain = self._plain(rng, len(rows), step)
            return self.batcher.collate(self.all, rows, templates, plain)
        group, slot = divmod(step, self.buckets)
        if self._group != (group, rank):
            rng = np.random.default_rng([self.seed, group, rank, self.buckets])
            rows, templates = self._draw(rng, self.batch_size * self.buckets)
            plain = self._plain(rng, len(rows), group * self.buckets)
            examples, rendered = self.batcher.render(self.all, rows, templates, plain)
            lengths = np.array([r.num_tokens for r in rendered])
            order = length_bucketed_batches(lengths, self.batch_size, seed=int(rng.integers(2**31)))
            self._pool, self._group = (rows, examples, rendered, order), (group, rank)
        rows, examples, rendered, order = self._pool
        pick = order[slot]
        return self.batcher.tensors(self.all, rows[pick], [examples[i] for i in pick], [rendered[i] for i in pick])


class Prefetcher:
    """Builds the batch of draw ``d + 1`` in a background thread while the model works on draw ``d``
    (rendering and tokenising cost milliseconds a prompt: a GPU would otherwise wait for them).
    Every call to `make` runs in the one worker thread, so `make` needs no locking."""

    def __init__(self, make) -> None:
        self.make = make
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtrec-batches")
        self.pending: tuple[int, Future] | None = None

    def get(self, draw: int) -> dict:
        if self.pending is not None and self.pending[0] == draw:
            batch = self.pending[1].result()
        else:
            batch = self.pool.submit(self.make, draw).result()
        self.pending = (draw + 1, self.pool.submit(self.make, draw + 1))
        return batch

    def wait(self) -> None:
        """Block until the worker is idle (the tokenizer is not thread-safe: evaluation, which
        renders prompts with the same one, waits for the pending batch first)."""
        if self.pending is not None:
            self.pending[1].result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def eval_specs(split: Split, kinds: list[str], opts: ExampleOptions, role: int = VALID,
               max_users: int = 0, seed: int = 0) -> Specs:
    """Evaluation rows of `role` for a seeded subset of `max_users` users (0 = all)."""
    specs = build_specs(split, role, tuple(kinds), opts)
    if max_users and max_users < split.dataset.num_users:
        users = np.random.default_rng(seed).choice(split.dataset.num_users, size=max_users, replace=False)
        keep = np.isin(split.dataset.user_idx[specs.interaction], users)
        specs = specs.take(np.flatnonzero(keep))
    return specs


def train_specs(split: Split, kinds: list[str], opts: ExampleOptions, max_users: int | None = None,
                seed: int = 0, only: np.ndarray | None = None) -> dict[str, Specs]:
    """Training rows per kind (optionally for a seeded subset of users; with `only`, a bool mask over
    interactions, the rows of those interactions alone: `model.stack_tail`'s tail. Friends rows, the
    graph's edges, are all kept)."""
    all_specs = build_specs(split, TRAIN, tuple(kinds), opts)
    if max_users and max_users < split.dataset.num_users:
        users = np.random.default_rng(seed).choice(split.dataset.num_users, size=max_users, replace=False)
        all_specs = all_specs.take(np.flatnonzero(np.isin(split.dataset.user_idx[all_specs.interaction], users)))
    if only is not None:
        keep = only[all_specs.interaction] | (all_specs.kind == KIND_IDS["friends"])
        all_specs = all_specs.take(np.flatnonzero(keep))
    return {k: all_specs.take(np.flatnonzero(all_specs.kind == KIND_IDS[k])) for k in kinds}


def evaluate(model, batcher: Batcher, specs: Specs, split: Split, role: int, weights: torch.Tensor,
             batch_size: int = 32, accelerator=None, heldout: bool = False, k: int = 10) -> dict[str, float]:
    """Loss and metrics of every kind on `specs`, one fixed paraphrase per kind (the first training
    one, or the first held-out one with `heldout`). Ranking is over the full catalog with the
    user's earlier items excluded; ties count against the target (`mtrec.ranking`)."""
    return summarise(evaluate_rows(model, batcher, specs, split, role, batch_size, accelerator, heldout), weights, k)


@torch.no_grad()
def evaluate_rows(model, batcher: Batcher, specs: Specs, split: Split, role: int, batch_size: int = 32,
                  accelerator=None, heldout: bool = False, item_logits: bool = False) -> dict[str, torch.Tensor]:
    """`evaluate`'s per-row outputs, in `specs` order (kind, predictions, labels, loss, target rank,
    and with `item_logits` each row's full-catalog scores), for per-user figures and intervals."""
    model.eval()
    device = accelerator.device if accelerator else torch.device("cpu")
    rows, valid = _share(len(specs), accelerator)
    fixed = {kind: batcher.templates(kind, heldout)[0] for kind in _present(specs)}
    seen = ranking.Seen.before(split, role, dense=False) if Kind.RECOMMENDATION in specs.kind else None
    # cold-items protocol: each target is also ranked among the held-out items alone
    cold = None if split.heldout_items is None else torch.as_tensor(np.flatnonzero(split.heldout_items), device=device)
    friend_seen = friend_seen_for(split, role) if Kind.FRIENDS in specs.kind else None
    acc: dict[str, list[torch.Tensor]] = {}
    # a bar for the long ones (500 test users are ~1,750 prompts: minutes on a CPU), on one process
    main = accelerator is None or accelerator.process_index == 0
    for start in tqdm(range(0, len(rows), batch_size), desc="evaluating", unit="batch", leave=False,
                      disable=not main or len(rows) <= 4 * batch_size):
        chunk = rows[start : start + batch_size]
        batch = batcher.collate(specs, chunk, [fixed[KIND_NAMES[int(specs.kind[r])]] for r in chunk])
        batch = {n: (v.to(device) if torch.is_tensor(v) else v) for n, v in batch.items()}
        out = model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"], **extra_inputs(batch))
        piece = {"kind": batch["kind"], "rating_pred": out["rating"], "rating": batch["rating"],
                 "like_logit": out["like_logit"], "like": batch["like"], "loss": row_losses(out, batch),
                 "rank": _ranks(out["item_logits"], batch, seen),
                 "friend_rank": _friend_ranks(out, batch, friend_seen),
                 "valid": torch.as_tensor(valid[start : start + batch_size], device=device),
                 "cat_logits": out["category_logits"], "cat_target": batch["category_target"],
                 "user": batch["user"], "item": batch["item"]}
        if cold is not None:
            piece["rank_cold"] = _ranks(out["item_logits"], batch, seen, cold)
        if item_logits:
            piece["item_logits"] = out["item_logits"]
        if accelerator is not None:
            piece = accelerator.gather(piece)
        for n, v in piece.items():
            acc.setdefault(n, []).append(v.float().cpu())
    model.train()
    gathered = {n: torch.cat(v) for n, v in acc.items()}
    keep = gathered.pop("valid") > 0
    return {n: v[keep] for n, v in gathered.items()}


def _share(n: int, accelerator) -> tuple[np.ndarray, np.ndarray]:
    """This process's rows, padded (by repeating a row, flagged invalid) to the same count on every
    process so that gathers line up."""
    procs = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    per = -(-n // procs)
    rows = np.arange(rank * per, min((rank + 1) * per, n))
    valid = np.ones(per, dtype=np.float32)
    valid[len(rows):] = 0
    pad = np.full(per - len(rows), rows[-1] if len(rows) else 0)
    return np.concatenate([rows, pad]).astype(np.int64), valid


def _present(specs: Specs) -> set[str]:
    return {KIND_NAMES[int(x)] for x in np.unique(specs.kind)}


def _ranks(item_logits: torch.Tensor, batch: dict, seen: ranking.Seen, candidates=None) -> torch.Tensor:
    rec = batch["kind"] == Kind.RECOMMENDATION
    out = torch.full_like(batch["kind"], -1)
    if bool(rec.any()):
        out[rec] = ranking.ranks(item_logits[rec].float(), batch["item"][rec], batch["user"][rec], seen,
                                 candidates).to(out.device)
    return out


def friend_seen_for(split: Split, role: int) -> ranking.Seen:
    """The pairs a friend ranking of `role` leaves out (`mtrec.data.friends.friend_seen`)."""
    from mtrec.data.friends import friend_seen
    from mtrec.data.splits import ROLE_NAMES

    return friend_seen(split.dataset, split.friends, ROLE_NAMES[role])


def _friend_ranks(out: dict, batch: dict, seen: ranking.Seen | None) -> torch.Tensor:
    fr = batch["kind"] == Kind.FRIENDS
    ranks = torch.full_like(batch["kind"], -1)
    if seen is not None and bool(fr.any()):
        ranks[fr] = ranking.ranks(out["friend_logits"][fr].float(), batch["friend"][fr], batch["user"][fr],
                                  seen).to(ranks.device)
    return ranks


def summarise(a: dict[str, torch.Tensor], weights: torch.Tensor, k: int) -> dict[str, float]:
    """Metrics from gathered evaluation outputs."""
    kind = a["kind"].long()
    out: dict[str, float] = {}
    total = 0.0
    for kid in range(NUM_KINDS):
        sel = kind == kid
        if sel.any():
            mean = float(a["loss"][sel].mean())
            out[f"{KIND_NAMES[kid]}/loss"] = mean
            total += float(weights[kid]) * mean
    out["loss"] = total
    r = kind == Kind.RATING
    if r.any():
        out["rating/rmse"] = metrics.rmse(a["rating_pred"][r], a["rating"][r])
        out["rating/mae"] = metrics.mae(a["rating_pred"][r], a["rating"][r])
    lk = kind == Kind.LIKE
    if lk.any():
        probs = torch.sigmoid(a["like_logit"][lk])
        out["like/auc"] = metrics.auc(probs, a["like"][lk])
        out["like/log_loss"] = metrics.log_loss(probs, a["like"][lk])
        out["like/accuracy"] = metrics.accuracy(probs, a["like"][lk])
    c = kind == Kind.CATEGORIES
    if c.any():
        out["categories/ndcg@5"] = metrics.ndcg_at_k(a["cat_logits"][c], (a["cat_target"][c] > 0).float(), 5)
    named = [("recommendation", "rank", Kind.RECOMMENDATION), ("friends", "friend_rank", Kind.FRIENDS)]
    if "rank_cold" in a:  # cold-items protocol: the rank among the held-out items
        named.append(("recommendation/heldout", "rank_cold", Kind.RECOMMENDATION))
    for name, ranks_of, kind_id in named:
        rows = kind == kind_id
        if rows.any():
            ranks = a[ranks_of][rows].long()
            out[f"{name}/hr@{k}"] = metrics.hit_rate(ranks, k)
            out[f"{name}/ndcg@{k}"] = metrics.ndcg(ranks, k)
            out[f"{name}/mrr@{k}"] = metrics.mrr(ranks, k)
    return out
