"""Batching helpers shared by training, serving and the speed bench (numpy and torch only: the
bench runs where the project's data dependencies are not installed)."""

from __future__ import annotations

import numpy as np
import torch


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, seed: int | None) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length: sort by length, cut into consecutive
    batches, then shuffle the batch order (so long and short batches alternate over training).

    Args:
        lengths: token count of every row in the pool.
        batch_size: rows per batch (the last batch may be smaller).
        seed: seed of the batch-order shuffle; None keeps the batches in length order.

    Returns:
        A list of index arrays, each one batch.
    """
    order = np.argsort(lengths, kind="stable")
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if seed is None:
        return batches
    perm = np.random.default_rng(seed).permutation(len(batches))
    return [batches[i] for i in perm]


def pad_right(rendered: list, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask [B, longest] of rendered prompts, padded on the right."""
    width = max(r.num_tokens for r in rendered)
    ids = torch.full((len(rendered), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rendered), width), dtype=torch.long)
    for i, r in enumerate(rendered):
        ids[i, : r.num_tokens] = torch.tensor(r.input_ids)
        mask[i, : r.num_tokens] = 1
    return ids, mask


def item_slots(rendered: list, width: int) -> torch.Tensor | None:
    """[B, width] the item index at each hybrid item token of rendered prompts, -1 elsewhere (prompts
    padded on the right, as `pad_right`); None when no prompt has one."""
    if not any(r.item_slots for r in rendered):
        return None
    out = torch.full((len(rendered), width), -1, dtype=torch.long)
    for i, r in enumerate(rendered):
        for position, item in r.item_slots:
            out[i, position] = item
    return out
