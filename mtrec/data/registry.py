"""Data sets by name. A loader is a function ``(root: Path, **options) -> RecDataset``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mtrec.data.records import RecDataset
from mtrec.paths import data_dir

Loader = Callable[..., RecDataset]
_LOADERS: dict[str, Loader] = {}


def register(name: str) -> Callable[[Loader], Loader]:
    """Decorator: make `fn` loadable as ``load_dataset(name)``."""

    def wrap(fn: Loader) -> Loader:
        if name in _LOADERS:
            raise ValueError(f"data set {name!r} registered twice")
        _LOADERS[name] = fn
        return fn

    return wrap


def available() -> list[str]:
    _import_loaders()
    return sorted(_LOADERS)


def load_dataset(name: str, root: str | Path | None = None, **options) -> RecDataset:
    """Load a data set by name (see `available()`), or a folder in mtrec's local format.

    Args:
        name: a registered name (``movielens-100k``, ``lastfm-2k``, ``ciao``, ``synthetic``, ...)
            or ``local:<folder>`` for a user's own data.
        root: the data folder; defaults to ``$MTREC_DATA_DIR`` (see `mtrec.paths.data_dir`).
        **options: passed to the loader (e.g. ``download=True``, synthetic sizes).
    """
    _import_loaders()
    if name.startswith("local:"):
        return _LOADERS["local"](Path(name[len("local:"):]).expanduser(), **options)
    if name not in _LOADERS:
        raise KeyError(f"unknown data set {name!r}; known: {', '.join(sorted(_LOADERS))}, or local:<folder>")
    return _LOADERS[name](data_dir(root), **options)


def _import_loaders() -> None:
    # Importing the modules runs their @register decorators.
    from mtrec.data import ciao_epinions, lastfm, local, movielens, synthetic  # noqa: F401
