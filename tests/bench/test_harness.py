"""The generic benchmark harness (mtrec.bench.harness) on real numbers: FLOPs and matmul weights of
tiny Linear stacks against hand-computed values (and torch's own FLOP counter), timings of steps and
calls that sleep a known time, and peak memory of a phase that allocates a known tensor.

Timings assert ranges that hold on a loaded machine (no speed targets): what is checked is the
accounting (steps, calls, users, tokens counted right; rates = counts / seconds)."""

import time

import pytest
import torch
from torch import nn

from mtrec.bench import harness

CPU = torch.device("cpu")
SLEEP = 0.02  # seconds per sleeping step or call
SLACK = 2.0  # seconds a loaded machine may add to a timed loop (scheduling, not speed)


class Stack(nn.Module):
    """Embedding (a lookup: no matmul) -> Linear 4x8 (with bias) -> ReLU -> Linear 8x3 (no bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.up = nn.Linear(4, 8)
        self.down = nn.Linear(8, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


# ----------------------------------------------------------------------------- FLOPs


def test_matmul_params_count_linear_weights_only():
    # 4*8 + 8*3 weights; the embedding and the bias are not matmul weights
    assert harness.matmul_params(Stack()) == 32 + 24 == 56


def test_matmul_params_count_transformers_conv1d():
    from transformers.pytorch_utils import Conv1D

    assert harness.matmul_params(nn.Sequential(Conv1D(6, 5), nn.Linear(6, 2))) == 5 * 6 + 6 * 2


def test_flops_per_token_of_a_linear_stack_by_hand_and_by_torch():
    """Frozen weights, input that needs its gradient (as LoRA training has it): forward 2 FLOPs per
    weight, input gradient another 2, so 4 x 56 = 224 per token; torch's FLOP counter agrees."""
    from torch.utils.flop_counter import FlopCounterMode

    model = Stack().requires_grad_(False)
    per_token = harness.flops_per_token(harness.matmul_params(model), 0, layers=0, seq_len=16, hidden=4)
    assert per_token == 4 * (4 * 8 + 8 * 3) == 224
    tokens = 16
    x = torch.randn(tokens, 4, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    assert counter.get_total_flops() == tokens * per_token


def test_flops_per_token_attention_term():
    # 4 x (100 matmul + 10 LoRA weights) + 8 x 2 layers x 16 tokens x 8 hidden
    assert harness.flops_per_token(100, 10, layers=2, seq_len=16, hidden=8) == 440 + 2048


def test_lora_params_count_the_a_and_b_matrices():
    from peft import LoraConfig, get_peft_model

    base = Stack()
    before = harness.matmul_params(base)
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["up", "down"]))
    # up: A 2x4 + B 8x2; down: A 2x8 + B 3x2
    assert harness.lora_params(model) == (8 + 16) + (16 + 6) == 46
    assert harness.lora_params(Stack()) == 0
    # LoRA's matrices are Linears too: count the base's matmuls before wrapping, as the bench does
    assert harness.matmul_params(model) == before + 46


def test_flop_report_achieved_and_mfu():
    runs = {"a_eager": {"steps": 4, "seconds": 2.0}, "a_compiled": {"steps": 4, "seconds": 1.0},
            "b_eager": {"steps": 2, "seconds": 4.0}}
    r = harness.flop_report({"a": 10, "b": 20}, {"a": 100, "b": 1000}, runs, peak=1000.0)
    assert r["achieved_flops_per_s"] == {"a_eager": 200.0, "a_compiled": 400.0, "b_eager": 500.0}
    assert r["mfu"] == {"a_eager": 0.2, "a_compiled": 0.4, "b_eager": 0.5}
    assert r["per_token"] == {"a": 10, "b": 20} and r["per_step"] == {"a": 100, "b": 1000}
    assert r["peak_flops_per_s"] == 1000.0


def test_matmul_peak_flops_counts_2n3_per_product():
    r = harness.matmul_peak_flops(CPU, "fp32", 64, reps=3)
    assert (r["n"], r["reps"], r["dtype"]) == (64, 3, "fp32")
    assert r["seconds"] > 0 and r["flops_per_s"] == pytest.approx(2 * 64**3 * 3 / r["seconds"])
    assert harness.matmul_peak_flops(CPU, "fp32", 8)["reps"] == 5  # the CPU default


# ----------------------------------------------------------------------------- timing


def _batch(rows: int, length: int, real: int) -> dict:
    mask = torch.zeros(rows, length, dtype=torch.long)
    mask.view(-1)[:real] = 1
    return {"input_ids": torch.zeros(rows, length, dtype=torch.long), "attention_mask": mask}


def test_timed_steps_times_only_the_steps_after_warmup():
    seen = []

    def step(batch: dict) -> torch.Tensor:
        seen.append(batch["n"])
        time.sleep(SLEEP)
        return torch.tensor(float(batch["n"]))

    batches = [{"n": i} for i in range(5)]
    t = harness.timed_steps(step, batches, warmup=2, device=CPU)
    assert seen == [0, 1, 2, 3, 4]  # every batch once, in order
    assert t["losses"] == [0.0, 1.0, 2.0, 3.0, 4.0]  # warm-up values first
    assert len(t["warmup_seconds"]) == 2 and all(s >= SLEEP for s in t["warmup_seconds"])
    assert 3 * SLEEP <= t["seconds"] < 3 * SLEEP + SLACK  # the 3 timed steps, not the warm-up ones
    assert t["host_syncs_per_step"] is None  # no syncs to count on a CPU


def test_throughput_counts_real_and_computed_tokens():
    batches = [_batch(2, 5, 7), _batch(2, 5, 10), _batch(3, 4, 9), _batch(1, 6, 6)]  # the first is warm-up
    r = harness.throughput({"seconds": 2.0}, batches, warmup=1)
    assert r["steps"] == 3 and r["tokens"] == 10 + 9 + 6
    assert r["tokens_per_s"] == 25 / 2.0
    assert r["computed_tokens_per_s"] == (10 + 12 + 6) / 2.0
    assert r["samples_per_s"] == (2 + 3 + 1) / 2.0
    assert r["step_ms"] == pytest.approx(1000 * 2.0 / 3)


def test_time_calls_counts_users_and_calls():
    done = []

    def call(users: list) -> None:
        done.append(list(users))
        time.sleep(SLEEP)

    r = harness.time_calls(call, [[0, 1, 2], [3, 4], [5, 6, 7, 8]], warmup=1, device=CPU)
    assert done == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    assert r["calls"] == 2 and r["users"] == 6  # the warm-up call's 3 users are not counted
    assert 2 * SLEEP <= r["seconds"] < 2 * SLEEP + SLACK
    assert r["users_per_s"] == pytest.approx(6 / r["seconds"])
    assert r["ms_per_call"] == pytest.approx(1000 * r["seconds"] / 2)
    assert r["memory"]["peak_bytes"] > 0 and r["memory"]["method"] == "sampled RSS"


def test_time_calls_needs_a_timed_call():
    with pytest.raises(ValueError, match="none to time"):
        harness.time_calls(lambda users: None, [[0]], warmup=1, device=CPU)


def test_count_host_syncs_runs_once_and_is_none_on_cpu():
    calls = []
    assert harness.count_host_syncs(CPU, lambda: calls.append(1)) is None
    assert calls == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_count_host_syncs_sees_an_item_call_on_cuda():
    x = torch.ones(4, device="cuda")
    assert harness.count_host_syncs(x.device, lambda: (x * 2).sum()) == 0
    assert harness.count_host_syncs(x.device, lambda: (x * 2).sum().item()) >= 1


def test_autocast_bf16_and_fp32():
    layer = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with harness.autocast(CPU, "bf16"):
        assert layer(x).dtype == torch.bfloat16
    with harness.autocast(CPU, "fp32"):
        assert layer(x).dtype == torch.float32
    harness.sync(CPU)  # a no-op on a CPU


# ----------------------------------------------------------------------------- memory


def test_peak_memory_sees_a_tensor_allocated_in_the_phase():
    import mmap

    size = 128 * 2**20
    with harness.PeakMemory(CPU) as mem:
        # an anonymous mapping written page by page: fresh resident pages whatever malloc's state
        # (a torch tensor may reuse memory an earlier test left resident: CI saw no growth once)
        x = mmap.mmap(-1, size)
        for at in range(0, size, mmap.PAGESIZE):
            x[at] = 1
        time.sleep(0.01)  # a few polls
    r = mem.result()
    assert r["method"] == "sampled RSS"
    assert r["peak_bytes"] >= r["peak_over_start_bytes"] >= size // 2
    assert r["peak_bytes"] <= harness.rss_bytes() + size  # a figure of this process, not of the machine
    x.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_memory_on_cuda_counts_the_allocation():
    with harness.PeakMemory(torch.device("cuda")) as mem:
        x = torch.ones(2**20, device="cuda")  # 4 MiB
        del x
    r = mem.result()
    assert r["peak_over_start_bytes"] >= 4 * 2**20 and r["method"] == "torch.cuda.max_memory_allocated"


def test_rss_bytes_is_positive():
    assert harness.rss_bytes() > 0


# ----------------------------------------------------------------------------- environment


def test_environment_describes_this_machine():
    env = harness.environment(CPU)
    assert env["device"] == "cpu" and env["device_name"]
    assert env["torch"] == torch.__version__ and env["transformers"] and env["peft"]
    assert env["torch_threads"] == torch.get_num_threads() >= 1
    assert isinstance(env["niceness"], int) and env["cpu_count"] >= 1
