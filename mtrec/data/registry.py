"""Data sets by name. A loader is a function ``(root: Path, **options) -> RecDataset``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mtrec.data.errors import DataError
from mtrec.data.records import RecDataset
from mtrec.errors import UnknownNameError
from mtrec.paths import data_dir

Loader = Callable[..., RecDataset]
_LOADERS: dict[str, Loader] = {}
FOLDER_PREFIXES = ("local:", "hf:")  # a user's own folder; hf: = a DatasetDict saved with save_to_disk


class UnknownDatasetError(UnknownNameError, DataError):
    """A data set name that is neither registered nor ``local:<folder>`` / ``hf:<folder>``; a
    `DataError` (commands report it as bad input) and a `KeyError` (a failed look-up)."""

    def __init__(self, name: str) -> None:
        _import_loaders()
        choices = [n for n in sorted(_LOADERS) if n != "local"] + [f"{p}<folder>" for p in FOLDER_PREFIXES]
        UnknownNameError.__init__(self, "data set", name, choices)
        self.path, self.line, self.reason, self.unit = name, None, self.message, "line"


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
            or ``local:<folder>`` / ``hf:<folder>`` for a user's own data (see `mtrec.data.local`).
        root: the data folder; defaults to ``$MTREC_DATA_DIR`` (see `mtrec.paths.data_dir`).
        **options: passed to the loader (e.g. ``download=True``, synthetic sizes).

    Raises:
        UnknownDatasetError: `name` is none of these (the message lists the choices).
    """
    check_name(name)
    for prefix in FOLDER_PREFIXES:
        if name.startswith(prefix):
            folder = Path(name[len(prefix):]).expanduser()
            if prefix != "local:":
                options.setdefault("name", f"{prefix}{folder.name}")
            return _LOADERS["local"](folder, **options)
    return _LOADERS[name](data_dir(root), **options)


def check_name(name: str) -> None:
    """Raise `UnknownDatasetError` unless `name` is a registered data set or ``local:``/``hf:<folder>``
    (cheap: reads no data, so a command can check its arguments before loading anything)."""
    _import_loaders()
    if isinstance(name, str) and any(name.startswith(p) and len(name) > len(p) for p in FOLDER_PREFIXES):
        return
    if name == "local" or name not in _LOADERS:
        raise UnknownDatasetError(name)


def _import_loaders() -> None:
    # Importing the modules runs their @register decorators.
    from mtrec.data import ciao_epinions, lastfm, local, movielens, synthetic  # noqa: F401
