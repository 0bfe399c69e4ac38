"""Two CPU processes through `accelerate launch` (DDP over gloo): both step, and stay equal.

Note the trap in ENVIRONMENT.md: `accelerate launch --cpu --num_processes 2` silently runs ONE
process; `--multi_gpu` (the shipped configs/accelerate/ddp.yaml) with no GPU gives two gloo
processes on the CPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DDP = ROOT / "configs/accelerate/ddp.yaml"  # the shipped DDP config: gloo processes on a CPU


@pytest.mark.parametrize(("name", "kind"), [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed-zero2", "DEEPSPEED")])
def test_shipped_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / f"configs/accelerate/{name}.yaml"))
    assert cfg.distributed_type.name == kind and cfg.num_machines == 1


@pytest.mark.slow
def test_two_processes_step_and_hold_equal_parameters(tmp_path, tiny_backbone_dir):
    accelerate = Path(sys.executable).parent / "accelerate"
    run_dir = tmp_path / "ddp"
    cmd = [str(accelerate), "launch", "--config_file", str(DDP), "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", "29517", str(ROOT / "train.py"), "--config", str(ROOT / "tests/configs/tiny.yaml"), "--run-dir", str(run_dir),
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


@pytest.mark.slow
def test_two_process_batch_inference_writes_the_single_process_output(tmp_path, tiny_run):
    """infer.py --task recommend under `accelerate launch --num_processes 2`: users sharded across
    the processes, one output in input order (one CSV header), byte-identical to one process's."""
    accelerate = Path(sys.executable).parent / "accelerate"
    args = ["--run", str(tiny_run), "--task", "recommend", "--all-users", "-k", "5", "--batch-size", "4",
            "--no-progress", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), *args, "--out", str(one)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = [str(accelerate), "launch", "--config_file", str(DDP), "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", "29519", str(ROOT / "infer.py"), *args, "--out", str(two)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes wrote" in proc.stderr
    assert two.read_bytes() == one.read_bytes()
    lines = one.read_text().splitlines()
    assert lines[0] == "user,rank,item,score" and lines.count(lines[0]) == 1
    users = [x.split(",")[0] for x in lines[1:]]
    assert list(dict.fromkeys(users)) == [str(u) for u in range(1, 31)]  # every user, once, in input order
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([one.name, two.name])  # parts cleaned up


def test_shards_are_contiguous_whole_batches():
    sys.path.insert(0, str(ROOT))
    from infer import shard

    cuts = [shard(30, 4, r, 2) for r in range(2)]
    assert [(c.start, c.stop) for c in cuts] == [(0, 16), (16, 30)]  # 8 batches: 4 + 4, the last one short
    assert [(c.start, c.stop) for c in (shard(3, 4, r, 2) for r in range(2))] == [(0, 0), (0, 3)]
    for n, b, w in [(0, 4, 3), (1, 1, 2), (101, 8, 3), (22164, 32, 7)]:
        parts = [shard(n, b, r, w) for r in range(w)]
        assert parts[0].start == 0 and parts[-1].stop == n
        assert all(p.stop == q.start for p, q in zip(parts, parts[1:]))
        assert all(p.start % b == 0 for p in parts if p.start < n)
