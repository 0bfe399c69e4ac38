"""A small, generic benchmark harness: timing, memory, FLOP accounting and environment info.

Nothing here builds a model or knows an mtrec recipe; :mod:`mtrec.bench.speed` puts the pieces
together. Only torch (and, for :func:`environment`, transformers and peft) is imported, so the
harness runs on a bare GPU image.

- **Timing** without host-device syncs inside the timed loop: :func:`timed_steps` (training steps
  whose outputs stay on the device), :func:`time_calls` (calls that end on the host, such as a
  ranking returning its top-K), :func:`throughput` (tokens/s and samples/s of a timed loop),
  :func:`count_host_syncs` (CUDA's sync debug mode) and :func:`sync`.
- **Memory**: :class:`PeakMemory` (CUDA ``max_memory_allocated``, or the sampled resident set size
  on a CPU) and :func:`rss_bytes`.
- **FLOPs**: :func:`matmul_params`, :func:`lora_params`, :func:`flops_per_token`,
  :func:`flop_report` (achieved FLOP/s and MFU of timed runs) and :func:`matmul_peak_flops` (the
  MFU denominator, measured).
- **Environment**: :func:`environment` (versions, device, threads, niceness, load).

The formulas are in ``docs/speed.md``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

# ----------------------------------------------------------------------------- device


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on a CPU, where work is synchronous."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: str):
    """bf16 autocast on `device` for ``dtype == "bf16"``; otherwise a no-op context (fp32)."""
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_host_syncs(device: torch.device, fn: Callable[[], Any]) -> int | None:
    """Run `fn` once with CUDA's sync debug mode on and count the host-device syncs it made (None on CPU)."""
    if device.type != "cuda":
        fn()
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


# ----------------------------------------------------------------------------- timing


def timed_steps(step: Callable[[Any], torch.Tensor], batches: Sequence[Any], warmup: int,
                device: torch.device) -> dict:
    """Run `step` over `batches`; the first `warmup` are untimed (each timed alone, the first one includes
    any compilation; the last one, if not the first, counts host syncs), the rest timed as one loop.

    The timed loop has no host-device sync: each step's return value (a scalar tensor, e.g. the loss)
    stays on the device and is read after it; on CUDA the only synchronisations are the two around
    the loop.

    Returns:
        seconds of the timed loop, per-warmup-step seconds, host syncs of one step (CUDA), and the
        value of every step (warm-up ones first).
    """
    losses, warm_seconds, syncs = [], [], None
    for i, batch in enumerate(batches[:warmup]):
        t0 = time.perf_counter()
        if i == warmup - 1 and i > 0:  # not the first step: compilation and lazy inits sync
            syncs = count_host_syncs(device, lambda b=batch: losses.append(step(b)))
        else:
            losses.append(step(batch))
        sync(device)
        warm_seconds.append(time.perf_counter() - t0)
    sync(device)
    t0 = time.perf_counter()
    for batch in batches[warmup:]:
        losses.append(step(batch))
    sync(device)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "warmup_seconds": warm_seconds, "host_syncs_per_step": syncs,
            "losses": torch.stack(losses).float().cpu().tolist() if losses else []}


def throughput(timing: dict, batches: Sequence[dict], warmup: int) -> dict:
    """tokens/s (real, i.e. non-padding, and computed positions) and samples/s of a timed loop.

    `batches` are dicts with ``input_ids`` and ``attention_mask`` [rows, positions]; the timed ones
    are those after the first `warmup`, and `timing` is :func:`timed_steps`' result for them."""
    timed = batches[warmup:]
    real = sum(int(b["attention_mask"].sum()) for b in timed)
    computed = sum(b["input_ids"].numel() for b in timed)
    samples = sum(b["input_ids"].shape[0] for b in timed)
    s = timing["seconds"]
    return {"steps": len(timed), "tokens": real, "tokens_per_s": real / s, "computed_tokens_per_s": computed / s,
            "samples_per_s": samples / s, "step_ms": 1000 * s / len(timed)}


def time_calls(call: Callable[[Any], Any], calls: Sequence[Sequence], warmup: int, device: torch.device) -> dict:
    """Time `call` over `calls` (each a batch of users, or anything with a length: the users it
    serves) after `warmup` untimed calls, with the peak memory of the whole phase.

    Each call must end with its result on the host (e.g. ``.cpu()``): nothing synchronises after a
    call, so work still queued on the device would not be timed.

    Returns:
        calls and users timed, seconds, users/s, ms per call and ``memory`` (:class:`PeakMemory`).
    """
    if len(calls) <= warmup:
        raise ValueError(f"time_calls: {len(calls)} calls leave none to time after {warmup} warm-up calls")
    with PeakMemory(device) as mem:
        for users in calls[:warmup]:
            call(users)
        sync(device)
        t0 = time.perf_counter()
        for users in calls[warmup:]:
            call(users)
        seconds = time.perf_counter() - t0
    n = sum(len(u) for u in calls[warmup:])
    return {"calls": len(calls) - warmup, "users": n, "seconds": seconds, "users_per_s": n / seconds,
            "ms_per_call": 1000 * seconds / (len(calls) - warmup), "memory": mem.result()}


# ----------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak memory of a phase. CUDA: ``max_memory_allocated`` (reset at entry). CPU: the resident set
    size, sampled every `interval` seconds (2 ms) by a thread (tracemalloc does not see torch's
    allocator, and ``ru_maxrss`` is a whole-process high-water mark, so a later phase could not show
    its own peak)."""

    def __init__(self, device: torch.device | str, interval: float = 0.002) -> None:
        self.device, self.start, self.peak, self.interval = torch.device(device), 0, 0, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())

    def result(self) -> dict:
        method = "torch.cuda.max_memory_allocated" if self.device.type == "cuda" else "sampled RSS"
        return {"peak_bytes": self.peak, "peak_over_start_bytes": self.peak - self.start, "method": method}


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; elsewhere the process's maximum so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ----------------------------------------------------------------------------- FLOPs


def matmul_params(module: nn.Module) -> int:
    """Weights of the matmuls a forward computes: every Linear (and transformers Conv1D) weight.
    Embeddings are lookups and do not count; a tied LM head is a Linear and does."""
    from transformers.pytorch_utils import Conv1D

    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, Conv1D)))


def lora_params(model: nn.Module) -> int:
    """Parameters of the LoRA A and B matrices (also matmuls the step computes)."""
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def flops_per_token(matmul: int, lora: int, layers: int, seq_len: int, hidden: int) -> int:
    """Model FLOPs per token of a step with a frozen base: forward (2 per weight) plus the backward's
    input gradient (2 per weight), 4 x (matmul weights actually computed), plus attention's
    8 x layers x seq_len x hidden (the issue's definition; see docs/speed.md)."""
    return 4 * (matmul + lora) + 8 * layers * seq_len * hidden


def flop_report(per_token: dict[str, int], per_step: dict[str, int], runs: dict[str, dict], peak: float,
                recipe_of: Callable[[str], str] = lambda run: run.split("_")[0]) -> dict:
    """Achieved FLOP/s and MFU of timed training runs.

    Args:
        per_token, per_step: model FLOPs per token and per optimizer step of each recipe.
        runs: run name -> its timing (``steps`` and ``seconds``, as :func:`timed_steps` +
            :func:`throughput` give them); a run belongs to the recipe ``recipe_of(name)``
            (default: the name's part before the first ``_``, e.g. ``mtrec_eager`` -> ``mtrec``).
        peak: the matmul rate (FLOP/s) MFU is measured against (:func:`matmul_peak_flops`).

    Returns:
        per_token, per_step, achieved_flops_per_s and mfu per run, peak_flops_per_s.
    """
    achieved, mfu = {}, {}
    for run, timing in runs.items():
        achieved[run] = per_step[recipe_of(run)] * timing["steps"] / timing["seconds"]
        mfu[run] = achieved[run] / peak
    return {"per_token": per_token, "per_step": per_step, "achieved_flops_per_s": achieved,
            "peak_flops_per_s": peak, "mfu": mfu}


def matmul_peak_flops(device: torch.device, dtype: str, n: int, reps: int | None = None) -> dict:
    """Dense matmul rate on this device in the compute dtype: time `reps` products of two n x n matrices
    (after one untimed), 2 n^3 FLOPs each. The denominator of MFU. Default reps: 20 on CUDA (one
    8192^3 bf16 product takes ~2 ms on an H100-class GPU), 5 on CPU."""
    reps = reps or (20 if device.type == "cuda" else 5)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        c = a @ b
    sync(device)
    seconds = time.perf_counter() - t0
    del a, b, c
    return {"n": n, "reps": reps, "dtype": dtype, "seconds": seconds, "flops_per_s": 2 * n**3 * reps / seconds}


# ----------------------------------------------------------------------------- environment


def environment(device: torch.device) -> dict:
    """Versions, device and how busy the machine was (timings on a shared CPU are noisy)."""
    import peft
    import transformers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo")
                     if line.startswith("model name")), platform.processor() or platform.machine())
    return {"device": device.type, "device_name": name, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "niceness": os.nice(0),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []
