"""mtrec's data layer: raw files -> typed records -> splits with leakage-free context."""

from mtrec.data.errors import DataError
from mtrec.data.records import Interaction, Item, RecDataset, SocialEdge, User, sorted_ids
from mtrec.data.registry import available, load_dataset

__all__ = [
    "DataError",
    "Interaction",
    "Item",
    "RecDataset",
    "SocialEdge",
    "User",
    "available",
    "load_dataset",
    "sorted_ids",
]
