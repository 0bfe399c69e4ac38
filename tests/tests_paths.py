"""Paths shared by tests (a plain module: importing from conftest.py is ambiguous with several)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
