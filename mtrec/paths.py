"""Where mtrec reads data and keeps its caches (both overridable by environment variables)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The folder holding data sets: `override`, else ``$MTREC_DATA_DIR``, else ``~/.cache/mtrec/data``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("MTREC_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "data"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """mtrec's cache: `override`, else ``$MTREC_CACHE_DIR``, else ``$XDG_CACHE_HOME/mtrec`` (``~/.cache/mtrec``)."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("MTREC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mtrec"
