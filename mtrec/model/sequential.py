"""The sequence network of the collaborative layer: SASRec's (Kang & McAuley 2018) causal
self-attention over a user's item sequence, with its training windows, history inputs and a
full-catalog softmax epoch. The bench's `SASRec` baseline is this network early-stopped on
validation; a sequential prior for the heads fits the same network on the training split only.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from mtrec.data.splits import TRAIN, Split
from mtrec.model.collaborative import batches


class _AttentionBlock(torch.nn.Module):
    """Pre-LayerNorm transformer block: masked self-attention, then a position-wise feed-forward."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = torch.nn.LayerNorm(hidden), torch.nn.LayerNorm(hidden)
        self.qkv, self.out = torch.nn.Linear(hidden, 3 * hidden), torch.nn.Linear(hidden, hidden)
        self.ff = torch.nn.Sequential(
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, hidden),
        )
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, n, h)))
        return x + self.drop(self.ff(self.norm2(x)))


class SequenceNet(torch.nn.Module):
    """Item + learned position embeddings, causal attention blocks, final LayerNorm.

    Input: [B, L] item index + 1, left-padded with 0, so the newest item always sits at position
    L - 1 (in training windows and at scoring time alike). Output: [B, L, hidden]; the score of item
    i after position t is out[:, t] . E[i + 1] (the input embedding table, shared as output)."""

    def __init__(
        self, num_items: int, max_len: int, hidden: int, blocks: int, heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.item = torch.nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.pos = torch.nn.Embedding(max_len, hidden)
        self.drop = torch.nn.Dropout(dropout)
        self.blocks = torch.nn.ModuleList(_AttentionBlock(hidden, heads, dropout) for _ in range(blocks))
        self.norm = torch.nn.LayerNorm(hidden)
        torch.nn.init.normal_(self.item.weight, std=hidden**-0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        n = seq.shape[1]
        real = (seq > 0).unsqueeze(-1)
        x = self.item(seq) * self.item.embedding_dim**0.5 + self.pos(torch.arange(n, device=seq.device))
        x = self.drop(x) * real
        # Causal, and no attention to padding; a padded position still sees itself so that no
        # softmax row is empty (its output is zeroed anyway).
        causal = torch.ones(n, n, dtype=torch.bool, device=seq.device).tril()
        allowed = (causal & (seq > 0)[:, None, :]) | torch.eye(n, dtype=torch.bool, device=seq.device)
        for block in self.blocks:
            x = block(x, allowed[:, None]) * real
        return self.norm(x)

    def catalog(self) -> torch.Tensor:
        """[num_items, hidden] output embeddings (the padding row left out)."""
        return self.item.weight[1:]


def softmax_backward(hidden: torch.Tensor, net: SequenceNet, labels: torch.Tensor, max_logits: int) -> float:
    """Backpropagate mean full-catalog cross-entropy of `hidden` [P, H] against `labels` [P].

    The [P, num_items] logits are built `max_logits` entries at a time: each chunk's loss is
    backpropagated into a detached copy of `hidden` (and the item table) and freed, then the
    accumulated gradient flows through the transformer once. Same gradient as one big softmax,
    memory bounded on large catalogs. Returns the loss value."""
    if len(labels) == 0:
        return 0.0
    leaf = hidden.detach().requires_grad_()
    rows = max(1, max_logits // net.catalog().shape[0])
    total = 0.0
    for a in range(0, len(labels), rows):
        logits = leaf[a : a + rows] @ net.catalog().T
        loss = F.cross_entropy(logits, labels[a : a + rows], reduction="sum") / len(labels)
        loss.backward()
        total += float(loss.detach())
    hidden.backward(leaf.grad)
    return total


def training_windows(split: Split, max_len: int, keep: np.ndarray | None = None) -> torch.Tensor:
    """[W, max_len + 1] windows of each user's TRAIN item ids + 1 (or of the interactions `keep`
    flags, a bool mask over interactions), cut from the sequence's end, left-padded with 0.

    Consecutive windows overlap by one item (the last input of one is the first target of the
    next), so every training item but each user's first is a target exactly once."""
    keep = split.role == TRAIN if keep is None else keep
    items, kept = split.dataset.item_idx[split.seq].astype(np.int64) + 1, keep[split.seq]
    out, offsets = [], split.offsets
    for u in range(split.dataset.num_users):
        a, b = offsets[u], offsets[u + 1]
        seq = items[a:b][kept[a:b]]
        for end in range(len(seq), 1, -max_len):
            w = seq[max(0, end - max_len - 1) : end]
            out.append(np.pad(w, (max_len + 1 - len(w), 0)))
    return torch.as_tensor(np.array(out, dtype=np.int64).reshape(-1, max_len + 1))


def history_inputs(split: Split, users: np.ndarray, role: int | str, max_len: int) -> torch.Tensor:
    """[B, max_len] the newest `max_len` item ids + 1 each user had before the `role` targets
    (`Split.history_mask`), left-padded."""
    items, allowed = split.dataset.item_idx[split.seq].astype(np.int64) + 1, split.history_mask(role)[split.seq]
    out = np.zeros((len(users), max_len), np.int64)
    for row, u in enumerate(np.asarray(users, np.int64)):
        a, b = split.offsets[u], split.offsets[u + 1]
        seen = items[a:b][allowed[a:b]][-max_len:]
        out[row, max_len - len(seen) :] = seen
    return torch.as_tensor(out)


def train_epoch(net: SequenceNet, windows: torch.Tensor, opt: torch.optim.Optimizer, gen: torch.Generator,
                batch_size: int, max_logits: int, device, deadline: float | None = None) -> float:
    """One pass over the shuffled windows, next-item cross-entropy over the whole catalog at every
    position; returns the mean training loss per batch.

    Past `deadline` (perf_counter seconds) the epoch ends early: one epoch over Ciao's 105k-item
    softmax takes minutes on a CPU, longer than a quick benchmark's whole budget."""
    net.train()
    losses = []
    for b in batches(len(windows), batch_size, gen):
        if deadline is not None and losses and time.perf_counter() > deadline:
            break
        w = windows[b].to(device)
        target = w[:, 1:]
        keep = target > 0
        opt.zero_grad(set_to_none=True)
        hidden = net(w[:, :-1])[keep]
        losses.append(softmax_backward(hidden, net, target[keep] - 1, max_logits))
        opt.step()
    return float(np.mean(losses)) if losses else float("nan")


def fit_sequence(split: Split, max_len: int = 50, hidden: int = 64, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.2, lr: float = 3e-3, batch_size: int = 128, max_epochs: int = 200,
                 patience: int = 10, seed: int = 0, k: int = 10, max_logits: int = 1 << 23,
                 item_start: torch.Tensor | None = None, refit: bool = False) -> dict:
    """The sequential prior: a `SequenceNet` fitted on the training split only.

    Like the factor fits (`mtrec.model.collaborative`), it early-stops on the training split's own
    hold-out: each user's newest training interaction (users keeping at least two others) is left
    out of the training windows, and each epoch is scored by NDCG@`k` of that item over the catalog,
    read from the user's earlier training items, those items excluded. Without `refit` the best
    epoch's weights are kept (the hold-out items still reach the network as inputs when it scores);
    with it, as the factor fits do, a fresh network of the same seed and start is trained for that
    many epochs on every training window, each user's newest training item a target too (measured,
    not the runs' fit: `mtrec.model.build.SEQUENCE_FIT`). Validation and test interactions are never read, so the
    fitted parameters do not depend on them (tested).
    `item_start` [num_items, hidden]: the item table's starting rows instead of random ones
    (`text_start`: the backbone's encodings of the items' texts, ``model.sequence_init=text``).

    Deterministic for a seed (the global torch RNG is forked, not disturbed). Held-out items of a
    cold-items split are never trained on: `mtrec.model.build.build_heads` zeroes their rows.

    Returns:
        ``state`` (the net's state dict), ``shape`` (its constructor arguments) and ``report``.
    """
    from mtrec import metrics, ranking
    from mtrec.model.collaborative import early_stopping, newest_per_user

    ds, train_idx = split.dataset, split.train
    hold = newest_per_user(split, train_idx)
    fit_rows, held = train_idx[~hold], train_idx[hold]
    keep = np.zeros(len(split.role), bool)
    keep[fit_rows] = True
    windows = training_windows(split, max_len, keep)
    users, targets = ds.user_idx[held].astype(np.int64), ds.item_idx[held].astype(np.int64)
    inputs = _inputs_before(split, held, max_len)
    # a hold-out item is each user's newest training one: what came before it is every other training item
    seen = ranking.Seen(ds.user_idx[fit_rows], ds.item_idx[fit_rows], ds.num_users, ds.num_items)
    shape = dict(num_items=ds.num_items, max_len=max_len, hidden=hidden, blocks=blocks, heads=heads)

    def holdout_ndcg() -> float | None:
        if not len(users):
            return None
        net.eval()
        rows = max(1, min(256, max_logits // ds.num_items))  # a [rows, items] score block at a time
        with torch.no_grad():
            ranks = torch.cat([ranking.ranks(net(inputs[a : a + rows])[:, -1] @ net.catalog().T,
                                             targets[a : a + rows], users[a : a + rows], seen)
                               for a in range(0, len(users), rows)])
        return metrics.ndcg(ranks, k)

    def start() -> tuple[SequenceNet, torch.optim.Optimizer, torch.Generator]:
        torch.manual_seed(seed)
        net = SequenceNet(dropout=dropout, **shape)
        if item_start is not None:  # the item table's starting rows (`text_start`), not random ones
            with torch.no_grad():
                net.item.weight[1:] = item_start.float()
        return net, torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.98)), torch.Generator().manual_seed(seed)

    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        net, opt, gen = start()
        info = early_stopping(list(net.parameters()),
                              lambda: train_epoch(net, windows, opt, gen, batch_size, max_logits, "cpu"),
                              holdout_ndcg, max_epochs=max_epochs, patience=patience, higher_is_better=True,
                              score_start=True)
        report = {"epochs": info["best_epoch"], "epochs_run": info["epochs_run"],
                  f"holdout_ndcg@{k}": round(info["best_valid"] or 0.0, 4), "holdout_rows": int(len(users)),
                  "windows": int(len(windows))}
        if refit:  # the hold-out said how many epochs; now every training item is a target
            every = training_windows(split, max_len)
            net, opt, gen = start()
            for _ in range(info["best_epoch"]):
                train_epoch(net, every, opt, gen, batch_size, max_logits, "cpu")
            report |= {"refit_epochs": info["best_epoch"], "refit_windows": int(len(every))}
    report["seconds"] = round(time.perf_counter() - started, 1)
    return {"state": {n: t.detach().clone() for n, t in net.state_dict().items()}, "shape": shape, "report": report}


def text_start(encodings: torch.Tensor, hidden: int) -> torch.Tensor:
    """[items, hidden] starting rows of a `SequenceNet`'s item table from item text encodings
    [items, d]: their top `hidden` principal components (centred over the catalog; zero columns
    past the encodings' rank), scaled to the random start's spread (entries of standard deviation
    ``hidden ** -0.5``). Items whose texts are alike start near each other, so what training
    teaches about one reaches its neighbours."""
    x = encodings.double()
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    z = x @ vh[:hidden].T
    # an SVD's component signs are arbitrary: fix each by its largest entry, so the start is one function of the text
    z = z * torch.sign(z.gather(0, z.abs().argmax(0, keepdim=True)))
    z = F.pad(z, (0, hidden - z.shape[1]))
    return (z / z.std().clamp(min=1e-12) * hidden**-0.5).float()


def _inputs_before(split: Split, interactions: np.ndarray, max_len: int) -> torch.Tensor:
    """[B, max_len] for each interaction, the item ids + 1 of its user's TRAIN interactions before it,
    newest last, left-padded."""
    out = np.zeros((len(interactions), max_len), np.int64)
    for row, i in enumerate(interactions):
        earlier = split.history(int(i))
        earlier = earlier[split.role[earlier] == TRAIN][-max_len:]
        out[row, max_len - len(earlier):] = split.dataset.item_idx[earlier] + 1
    return torch.as_tensor(out)
