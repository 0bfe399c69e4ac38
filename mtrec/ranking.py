"""Ranking against the catalog: the one protocol that evaluation, the baselines, the benches and
`Recommender` share.

- **What is left out.** A ranking for targets of role r leaves out the items the user met before r
  (validation: training items; test: training and validation items; serving: every interaction
  the run knows). A target the user met before (repeat consumption) is ranked, never left out of its
  own ranking. `Seen` holds these sets once, as CSR index arrays (O(interactions)) or, for small
  catalogs, a dense bool table on the device.
- **Ties are pessimistic.** rank = #{non-excluded j != t : score_j >= score_t}, 0-based
  (`metrics.target_ranks`): a model that scores everything equal gets the worst rank.
- **Candidates.** Optionally only a subset of the catalog is ranked (the held-out items of a
  cold-start protocol): ranks are then among the candidates, and a target must be one of them.
- **Chunks.** Score matrices are built for blocks of users of at most `SCORE_BLOCK` entries, so
  memory stays ~100 MB whatever the catalog.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mtrec import metrics
from mtrec.data.splits import Split, ranking_role

SCORE_BLOCK = 20_000_000  # entries (users x items) per scored block: 1024 users on MovieLens, ~190 on Ciao


def block_size(num_items: int, batch_size: int | None = None) -> int:
    """Users scored at once: `batch_size`, or as many as fit in `SCORE_BLOCK` entries (at most 1024)."""
    return batch_size or max(1, min(1024, SCORE_BLOCK // max(num_items, 1)))


class Seen:
    """The items each user met before a role, to leave out of their rankings.

    Args:
        user_idx, item_idx: one entry per (user, item) interaction.
        num_users, num_items: the table's shape.
        device: where `mask_` works (the dense table and index arrays live there).
        dense: keep a dense [users, items] bool table (one gather per batch); default: when it has
            at most `DENSE_LIMIT` cells (Epinions' ~40k x ~140k would be 5.6 GB: CSR instead).
    """

    DENSE_LIMIT = 64 * 2**20

    def __init__(self, user_idx: np.ndarray, item_idx: np.ndarray, num_users: int, num_items: int,
                 device: torch.device | str = "cpu", dense: bool | None = None) -> None:
        users = torch.as_tensor(np.asarray(user_idx, dtype=np.int64))
        items = torch.as_tensor(np.asarray(item_idx, dtype=np.int64))
        self.num_users, self.num_items = num_users, num_items
        order = torch.argsort(users * num_items + items, stable=True)
        self.indices = items[order].to(device)
        indptr = torch.zeros(num_users + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(torch.bincount(users, minlength=num_users), 0)
        self.indptr = indptr.to(device)
        self.dense = num_users * num_items <= self.DENSE_LIMIT if dense is None else dense
        if self.dense:
            table = torch.zeros(num_users, num_items, dtype=torch.bool)
            table[users, items] = True
            self.table = table.to(device)

    @classmethod
    def before(cls, split: Split, role: int | str, device: torch.device | str = "cpu",
               dense: bool | None = None) -> Seen:
        """Each user's interactions with a role before `role` (``"valid"``/``"test"``): validation
        leaves out training items, test training and validation items."""
        keep = split.role < ranking_role(role)
        ds = split.dataset
        return cls(ds.user_idx[keep], ds.item_idx[keep], ds.num_users, ds.num_items, device, dense)

    @classmethod
    def every(cls, split: Split, device: torch.device | str = "cpu", dense: bool | None = None) -> Seen:
        """Every interaction the split holds, whatever its role (serving comes after all of them)."""
        ds = split.dataset
        return cls(ds.user_idx, ds.item_idx, ds.num_users, ds.num_items, device, dense)

    def pairs(self, users: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of every seen item of each listed user (rows index `users`; a user may repeat)."""
        users = torch.as_tensor(np.asarray(users, dtype=np.int64) if not torch.is_tensor(users) else users,
                                device=self.indptr.device)
        starts = self.indptr[users]
        lengths = self.indptr[users + 1] - starts
        total = int(lengths.sum())
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths, output_size=total)
        # position of each entry inside its own user's run: 0..len-1, without a Python loop
        first = torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths, output_size=total)
        within = torch.arange(total, device=users.device) - first
        cols = self.indices[torch.repeat_interleave(starts, lengths, output_size=total) + within]
        return rows, cols

    def rows(self, users) -> torch.Tensor:
        """[len(users), num_items] bool: True where the row's user has seen the item."""
        rows, cols = self.pairs(users)
        out = torch.zeros(len(users), self.num_items, dtype=torch.bool, device=self.indptr.device)
        out[rows, cols] = True
        return out

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B, K] bool: whether users[r] has seen items[r, j]."""
        if self.dense:
            return self.table[users.to(self.table.device)[:, None].expand_as(items), items.to(self.table.device)]
        return self.rows(users).to(items.device).gather(1, items)

    def mask_(self, scores: torch.Tensor, users: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Set scores[r, i] = -inf for every item i that users[r] has seen, in place; `keep` [B]
        items (each row's target) stay scored."""
        users = users.to(scores.device)
        if keep is not None:
            kept = scores.gather(1, keep.to(scores.device)[:, None])
        if self.dense:
            scores.masked_fill_(self.table[users], float("-inf"))
        else:
            rows, cols = self.pairs(users)
            if len(rows):
                scores[rows, cols] = float("-inf")
        if keep is not None:
            scores.scatter_(1, keep.to(scores.device)[:, None], kept)
        return scores


def _candidate_view(scores: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor):
    """Scores restricted to `candidates` columns, and each target's position among them."""
    pos = torch.full((scores.shape[1],), -1, dtype=torch.long, device=scores.device)
    pos[candidates] = torch.arange(len(candidates), device=scores.device)
    at = pos[targets]
    if bool((at < 0).any()):
        bad = int(torch.nonzero(at < 0)[0, 0])
        raise ValueError(f"row {bad}: the target item {int(targets[bad])} is not among the candidates")
    return scores[:, candidates], at


def ranks(scores, targets, users=None, seen: Seen | None = None, candidates=None) -> torch.Tensor:
    """0-based rank of each row's target among the row's items that are not seen (ties pessimistic).

    Args:
        scores: [B, N] scores over the full catalog (a tensor or array; NaN is rejected).
        targets: [B] target item index per row.
        users: [B] user index per row (needed with `seen`).
        seen: the items left out (`Seen.before(split, role)`); None ranks the whole catalog.
        candidates: item indices to rank among (None: the catalog); targets must be among them.

    Returns:
        [B] int64 ranks (a CPU tensor).
    """
    s = torch.as_tensor(scores)  # in its own precision: a float64 model's near-ties must stay apart
    t = torch.as_tensor(np.asarray(targets, dtype=np.int64) if not torch.is_tensor(targets) else targets,
                        device=s.device).long()
    exclude = None
    if seen is not None:
        rows, cols = seen.pairs(torch.as_tensor(np.asarray(users, dtype=np.int64) if not torch.is_tensor(users)
                                                else users))
        rows, cols = rows.to(s.device), cols.to(s.device)
        keep = cols != t[rows]  # a repeated item is ranked, never excluded from itself
        exclude = (rows[keep], cols[keep])
    if candidates is not None:
        cand = torch.as_tensor(np.asarray(candidates, dtype=np.int64) if not torch.is_tensor(candidates)
                               else candidates, device=s.device).long()
        if exclude is not None:  # seen items outside the candidates are not ranked anyway
            pos = torch.full((s.shape[1],), -1, dtype=torch.long, device=s.device)
            pos[cand] = torch.arange(len(cand), device=s.device)
            rows, cols = exclude
            inside = pos[cols] >= 0
            exclude = (rows[inside], pos[cols[inside]])
        s, t = _candidate_view(s, t, cand)
    return metrics.target_ranks(s, t, exclude).cpu()


def rank_targets(score: Callable[[np.ndarray], object], users: np.ndarray, targets: np.ndarray,
                 seen: Seen | None = None, candidates=None, batch_size: int | None = None,
                 num_items: int | None = None) -> np.ndarray:
    """`ranks` of (user, target) rows whose scores `score(users_block)` -> [b, N] builds block by block.

    Args:
        score: a model's scoring function over blocks of user indices.
        users, targets: [n] index arrays.
        seen, candidates: as in `ranks`.
        batch_size: users per block (default `block_size` of the catalog).
        num_items: catalog size (default: `seen`'s).
    """
    users, targets = np.asarray(users, np.int64), np.asarray(targets, np.int64)
    n_items = num_items or (seen.num_items if seen is not None else None)
    step = block_size(n_items or 1, batch_size) if (batch_size or n_items) else 1024
    parts = [np.zeros(0, np.int64)]
    for a in range(0, len(users), step):
        u, t = users[a : a + step], targets[a : a + step]
        parts.append(ranks(score(u), t, u, seen, candidates).numpy())
    return np.concatenate(parts)


def top_k(scores: torch.Tensor, k: int, users: torch.Tensor | None = None, seen: Seen | None = None,
          candidates=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (values, item indices) per row, seen items left out (they come back as -inf at the
    end of a row only if fewer than k items remain: callers drop them); on the scores' device.
    With `candidates`, only those items are ranked."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if seen is not None:
        seen.mask_(scores, users)
    if candidates is not None:
        cand = torch.as_tensor(candidates, device=scores.device).long()
        values, at = torch.topk(scores[:, cand], min(k, len(cand)), dim=-1)
        return values, cand[at]
    return torch.topk(scores, min(k, scores.shape[1]), dim=-1)
