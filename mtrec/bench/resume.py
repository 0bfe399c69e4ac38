"""Resumable benchmark rows: one JSON file per finished row, so that a table longer than one sitting
can be built over several runs of the same command.

`RowStore(folder, key)` keys every row file by the settings that make it (data set, seed, profile,
base config, split fingerprint, the users scored). A rerun with the same key loads a finished row
instead of computing it again; a row file with another key (settings changed) is computed again and
overwritten. Each file records the git commit that computed it, and the table lists them: rows
computed by different code are never mixed silently. Delete the folder to recompute everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from mtrec.bench.report import jsonable


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(jsonable(settings), sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` when it has uncommitted changes), or None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


class RowStore:
    """Finished rows under `folder`, one ``<slug>.json`` each, valid for one settings `key`."""

    def __init__(self, folder: str | Path, settings: dict, log: Callable[[str], None] = print) -> None:
        self.folder, self.key, self.log = Path(folder), settings_key(settings), log
        self.commit = git_commit()
        self.commits: dict[str, str | None] = {}  # label -> commit that computed it

    def path(self, label: str) -> Path:
        return self.folder / (re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") + ".json")

    def get(self, label: str, version: str = "") -> dict | None:
        path = self.path(label)
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if saved.get("key") != self.key or saved.get("label") != label or saved.get("version", "") != version:
            return None
        self.commits[label] = saved.get("commit")
        return saved["row"]

    def put(self, label: str, row: dict, version: str = "") -> dict:
        """Write the row (to a temporary file, then renamed: a killed run leaves no half file) and
        return it as read back, so that a fresh row and a loaded one are the same plain JSON."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path, tmp = self.path(label), self.path(label).with_suffix(".json.tmp")
        doc = jsonable({"label": label, "key": self.key, "commit": self.commit, "row": row}
                       | ({"version": version} if version else {}))
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, path)
        self.commits[label] = self.commit
        return json.loads(path.read_text(encoding="utf-8"))["row"]

    def row(self, label: str, compute: Callable[[], dict], version: str = "") -> dict:
        """The finished row `label`, loaded, or computed now and stored. `version` names what the
        row's code computes beyond the settings (a row stored under another version is recomputed)."""
        done = self.get(label, version)
        if done is not None:
            self.log(f"[resume] {label}: done earlier (commit {self.commits[label]}), loaded from {self.path(label)}")
            return done
        return self.put(label, compute(), version)
