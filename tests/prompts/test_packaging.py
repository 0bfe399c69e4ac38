"""The prompt templates ship inside the wheel: `prompts/` stays the one copy people edit, setup.py
copies it into ``mtrec/prompts/default/`` at build time, and an installed mtrec finds it there with
importlib.resources. The wheel is built from a copy of the sources in tmp_path (so the checkout gets
no build/ folder), offline, with the setuptools of this environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from tests_paths import ROOT

TEMPLATES = ("explanation.yaml", "preference.yaml", "rating.yaml", "recommendation.yaml")
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "prompts", "mtrec")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools")
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("mtrec-*.whl")
    return built


def test_wheel_holds_the_templates(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in TEMPLATES:
            member = f"mtrec/prompts/default/{name}"
            assert member in names
            assert z.read(member) == (ROOT / "prompts" / name).read_bytes()  # copied, not a second source
        record = z.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert all(f"mtrec/prompts/default/{name}," in record for name in TEMPLATES)


def test_installed_wheel_finds_its_templates(wheel, tmp_path):
    """Unpacked as site-packages would hold it, run from a folder with no prompts/ in sight."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = ("from mtrec.prompts import DEFAULT_PROMPTS_DIR, load_explanation_templates, load_prompts; import mtrec; "
            "print(mtrec.__file__); print(DEFAULT_PROMPTS_DIR); print(sorted(load_prompts())); "
            "print(load_explanation_templates().path)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr[-3000:]
    module, folder, tasks, explanation = done.stdout.splitlines()
    assert module == str(site / "mtrec" / "__init__.py")
    assert folder == str(site / "mtrec" / "prompts" / "default")
    assert tasks == "['preference', 'rating', 'recommendation']"  # explanation.yaml is no task file
    assert explanation == str(site / "mtrec" / "prompts" / "default" / "explanation.yaml")


def test_checkout_reads_prompts_in_place():
    from mtrec.prompts import DEFAULT_PROMPTS_DIR

    assert DEFAULT_PROMPTS_DIR == ROOT / "prompts"  # editable: no copy inside the source tree
    assert not (ROOT / "mtrec" / "prompts" / "default").exists()
