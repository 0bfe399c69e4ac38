"""Bad arguments to every command line end in one ``error: …`` line that names the value (and the
choices, where there are choices), with exit status 2 and no traceback. Each is rejected before
any backbone loads; the mains are called in-process, plus one real subprocess per entry point kind."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from tests_paths import ROOT


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_error_line(err: str) -> str:
    """The single ``error:`` line, which must end the output; no traceback before it."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    return errors[0]


def _fails(main, argv, capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    return _one_error_line(capsys.readouterr().err)


@pytest.fixture(scope="module")
def train_main():
    return _script("train.py").main


CONFIG = str(ROOT / "configs" / "quickstart.yaml")


def test_train_unknown_data_set(train_main, capsys, tmp_path):
    line = _fails(train_main, ["--config", CONFIG, "--run-dir", str(tmp_path / "run"), "data.dataset=movielens100k"],
                  capsys)
    assert line.startswith("error: unknown data set 'movielens100k' (did you mean 'movielens-100k'?)")
    assert "choose from: ciao, epinions, lastfm-2k, movielens-100k" in line and "local:<folder>" in line
    assert not (tmp_path / "run").exists()  # rejected before the run folder is made


def test_train_unknown_backbone(train_main, capsys, tmp_path, monkeypatch):
    from mtrec.model import backbone

    def no_conversion(*args, **kwargs):
        raise AssertionError("the backbone must not be converted or loaded for a bad spec")

    monkeypatch.setattr(backbone, "ensure_bundled", no_conversion)
    line = _fails(train_main, ["--config", CONFIG, "--run-dir", str(tmp_path / "run"),
                               "model.backbone=bundled:nope"], capsys)
    assert line == ("error: unknown bundled backbone 'bundled:nope' (did you mean 'bundled:minilm-l6'?); choose "
                    "from: bundled:minilm-l6, bundled:smollm2-135m (or a model folder, or a hub id)")
    line = _fails(train_main, ["--config", CONFIG, "--run-dir", str(tmp_path / "run"), "model.backbone=./nope"],
                  capsys)
    assert line == "error: model.backbone: backbone path './nope' does not exist"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.max_stepz=3", "unknown key train.max_stepz (did you mean train.max_steps?); known: activation_cache, activation_cache_dir, activation_cache_gb, batch_size,"),
        ("train.max_steps=abc", "train.max_steps: expected int, got str 'abc'"),
        ("nodot", "override 'nodot': expected section.key=value (e.g. train.max_steps=10)"),
        ("trian.lr=1", "unknown section 'trian' (did you mean train?)"),
    ],
)
def test_train_bad_override(train_main, capsys, tmp_path, override, expected):
    line = _fails(train_main, ["--config", CONFIG, "--run-dir", str(tmp_path / "run"), override], capsys)
    assert expected in line


def test_infer_missing_run(capsys, tmp_path):
    line = _fails(_script("infer.py").main, ["--run", str(tmp_path / "missing"), "--show-user", "1"], capsys)
    assert line == f"error: {tmp_path / 'missing'}: no such run folder"


def test_data_unknown_name(capsys):
    from mtrec.data.__main__ import main

    line = _fails(main, ["describe", "nope"], capsys)
    assert line.startswith("error: unknown data set 'nope'; choose from: ciao,") and "hf:<folder>" in line
    line = _fails(main, ["describe", "local:/nonexistent/shop"], capsys)
    assert line.startswith("error: /nonexistent/shop: folder not found")
    _fails(main, ["nope"], capsys)  # argparse: invalid choice, with the choices
    main(["list"])
    assert capsys.readouterr().out.splitlines()[-2:] == ["local:<folder>", "hf:<folder>"]


def test_prompts_preview_takes_local_folders(capsys, tmp_path):
    from mtrec.prompts.__main__ import main

    line = _fails(main, ["preview", "--dataset", f"local:{tmp_path / 'nothing'}", "--task", "rating"], capsys)
    assert line.startswith(f"error: {tmp_path / 'nothing'}: folder not found")  # accepted, then read
    line = _fails(main, ["preview", "--dataset", "movielens100k", "--task", "rating"], capsys)
    assert "unknown data set 'movielens100k'" in line and "movielens-100k" in line


def test_bench_unknown_names(capsys):
    from mtrec.bench.__main__ import main

    line = _fails(main, ["nope"], capsys)
    assert line == "error: unknown benchmark 'nope'; choose from: accuracy, speed, learning, compare, pairs, prior, categories, export, update, serve, explain, friends"
    line = _fails(main, ["accuracy", "--dataset", "nope"], capsys)
    assert "invalid choice: 'nope'" in line and "movielens-100k" in line


def test_serve_missing_run(capsys, tmp_path):
    pytest.importorskip("uvicorn")
    from mtrec.serve.__main__ import main

    line = _fails(main, ["--run", str(tmp_path / "missing")], capsys)
    assert line == f"error: {tmp_path / 'missing'}: no such run folder"


def test_real_process_exit_status(tmp_path):
    """Through the interpreter: what a shell sees (status 2, one line on stderr, nothing on stdout)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "mtrec.data", "describe", "movielens100k"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: unknown data set 'movielens100k'") and done.stderr.count("\n") == 1
