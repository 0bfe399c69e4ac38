"""Reliability: a run killed with SIGKILL resumes to the same result; NaN and read-only folders
stop with one clear message and an intact last checkpoint."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mtrec.training as training
from mtrec.checkpoint import NonFiniteLossError, latest_checkpoint
from mtrec.run import RunFolderError

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["train.max_steps=12", "train.checkpoint_every=2", "train.eval_every=4", "train.log_every=2",
         "train.warmup_steps=1", "train.num_threads=1"]


def _train_cmd(run_dir, backbone, *extra):
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "tests/configs/tiny.yaml"),
            "--run-dir", str(run_dir), f"model.backbone={backbone}", *STEPS, *extra]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def _adapter(run_dir):
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, tiny_backbone_dir):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_train_cmd(whole, tiny_backbone_dir), check=True, env=_env(), capture_output=True, timeout=300)

    # a random kill point each run: just after checkpoint 2 or 4, with at least eight steps and two
    # evaluations left. The tiny model steps in tens of milliseconds on a quiet machine, so the delay
    # stays under 50 ms (with six steps left and up to 0.5 s of delay, a CI run once finished first)
    rng = random.Random()
    wait_for = rng.choice([2, 4])
    proc = subprocess.Popen(_train_cmd(killed, tiny_backbone_dir), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        last = latest_checkpoint(killed)
        if last is not None and int(last.name.split("-")[1]) >= wait_for:
            time.sleep(rng.uniform(0, 0.05))
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()

    done = subprocess.run(_train_cmd(killed, tiny_backbone_dir, "--resume"), env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from step" in done.stdout + done.stderr

    a, b = _adapter(whole), _adapter(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (whole, killed))
    assert ma["steps"] == mb["steps"] == 12
    for key, value in ma["best"].items():
        if key != "seconds":
            assert mb["best"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    assert [h["loss"] for h in ma["history"]] == pytest.approx([h["loss"] for h in mb["history"]], abs=1e-6)


def test_nan_loss_stops_with_step_and_task_and_keeps_last_checkpoint(tmp_path, tiny_config, monkeypatch):
    real = training._step_loss
    calls = {"n": 0}

    def poisoned(model, batch, weights, cfg, pool=None):
        loss, per_kind, counts = real(model, batch, weights, cfg, pool)
        calls["n"] += 1
        if calls["n"] >= 5:  # step 5 of a 1-micro-step loop: after the step-4 checkpoint
            loss = loss * float("nan")
            per_kind = per_kind * float("nan")
        return loss, per_kind, counts

    monkeypatch.setattr(training, "_step_loss", poisoned)
    cfg = tiny_config("train.max_steps=12", "train.checkpoint_every=2", "train.log_every=1", "train.eval_every=0",
                      "train.warmup_steps=1")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 5 \(task \w+, prompt kind \w+\).*step-4"):
        training.train(cfg, tmp_path / "run")
    last = latest_checkpoint(tmp_path / "run")
    assert last.name == "step-4"
    params = load_file(last / "trainable.safetensors")
    assert params and all(torch.isfinite(t).all() for t in params.values())
    state = json.loads((last / "state.json").read_text())
    assert state["step"] == 4


def _make_read_only(path: Path):
    path.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits; the immutable flag stops root too
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a folder read-only for root here (chattr +i unsupported)")


def _undo_read_only(path: Path):
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


def test_read_only_run_folder_fails_early_and_keeps_checkpoint(tmp_path, tiny_config):
    run_dir = tmp_path / "run"
    cfg = tiny_config("train.max_steps=4", "train.checkpoint_every=2", "train.eval_every=0", "train.warmup_steps=1")
    training.train(cfg, run_dir)
    ckpt = latest_checkpoint(run_dir)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    _make_read_only(run_dir)
    try:
        with pytest.raises(RunFolderError, match=r"run folder is not writable .*choose another --run-dir"):
            training.train(cfg, run_dir, resume=True)
    finally:
        _undo_read_only(run_dir)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tiny_config):
    with pytest.raises(RunFolderError, match="nothing to resume"):
        training.train(tiny_config(), tmp_path / "empty", resume=True)
