"""Two CPU processes through `accelerate launch` (DDP over gloo): both step, and stay equal.

Note the trap in ENVIRONMENT.md: `accelerate launch --cpu --num_processes 2` silently runs ONE
process; `--multi_gpu` with no GPU gives two gloo processes on the CPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_step_and_hold_equal_parameters(tmp_path, tiny_backbone_dir):
    accelerate = Path(sys.executable).parent / "accelerate"
    run_dir = tmp_path / "ddp"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           str(ROOT / "train.py"), "--config", str(ROOT / "tests/configs/tiny.yaml"), "--run-dir", str(run_dir),
           f"model.backbone={tiny_backbone_dir}", "train.max_steps=4", "train.eval_every=2", "train.num_threads=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert metrics["ranks"]["steps"] == [4, 4]
    a, b = metrics["ranks"]["param_checksums"]
    assert a == b, f"replicas diverged: {a} != {b}"
    # each process drew its own examples: 2 x 4 steps x batch 8
    assert metrics["examples_per_process"] == 32
