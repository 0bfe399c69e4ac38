"""Resumable checkpoints, written atomically, and the checks that run before training starts.

A checkpoint is a folder ``<run>/checkpoints/step-<N>/`` holding only what changes during training
(the base model never does): the trainable parameters, the best parameters so far, optimizer and
scheduler state, each process's RNG states, and the loop state (step, history, best metric,
counters). The data order needs no saving: a batch is a pure function of (seed, step, process).

It is written into ``checkpoints/.tmp-step-<N>`` and renamed into place, so a process killed
mid-write leaves the previous checkpoint as the latest complete one; the last ``keep`` are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mtrec.run import RunFolderError

PREFIX = "step-"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (temporary folders are ignored), or None."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return None
    done = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name[len(PREFIX):]), default=None)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n].to(p.device))


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(accelerator, run_dir: Path, step: int, model, optimizer, scheduler, loop_state: dict,
                    best_state: dict[str, torch.Tensor], keep: int) -> Path:
    """Write checkpoint `step` atomically (every process writes its RNG state; the main process the rest)."""
    folder = checkpoint_dir(run_dir)
    tmp, final = folder / f".tmp-{PREFIX}{step}", folder / f"{PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(trainable_state(accelerator.unwrap_model(model)), tmp / "trainable.safetensors")
        save_file(best_state, tmp / "best.safetensors")
        scaler = getattr(accelerator, "scaler", None)  # fp16 only: the loss scale must resume too
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None}, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps(loop_state), encoding="utf-8")  # written last
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _prune(folder, keep)
    accelerator.wait_for_everyone()
    return final


def _prune(folder: Path, keep: int) -> None:
    done = sorted((p for p in folder.iterdir() if p.name.startswith(PREFIX)), key=lambda p: int(p.name[len(PREFIX):]))
    for old in done[: max(len(done) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(accelerator, path: Path, model, optimizer, scheduler) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore a checkpoint into the model, optimizer, scheduler and this process's RNG.

    Returns:
        (loop state, best parameters so far).
    """
    load_trainable_state(accelerator.unwrap_model(model), load_file(path / "trainable.safetensors"))
    optim = torch.load(path / "optim.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and optim.get("scaler") is not None:
        scaler.load_state_dict(optim["scaler"])
    rng = path / f"rng-{accelerator.process_index}.pt"
    if not rng.is_file():
        raise RunFolderError(f"{path}: no RNG state for process {accelerator.process_index}; resume with the "
                             f"same number of processes as the run that wrote it")
    _set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((path / "state.json").read_text(encoding="utf-8")), load_file(path / "best.safetensors")


def preflight_run_dir(run_dir: Path, bytes_needed: int) -> None:
    """Fail early, in one clear message, if the run folder cannot take a checkpoint."""
    probe = Path(run_dir) / ".mtrec-write-probe"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise RunFolderError(f"{run_dir}: run folder is not writable ({e.strerror}); choose another --run-dir") from None
    free = shutil.disk_usage(run_dir).free
    if free < bytes_needed:
        raise RunFolderError(f"{run_dir}: {free / 2**20:.0f} MiB free, a checkpoint needs about "
                             f"{bytes_needed / 2**20:.0f} MiB; free some space or choose another --run-dir")


def checkpoint_bytes(model) -> int:
    """Rough size of one checkpoint: trainable params, best copy and two Adam moments (fp32), +10%."""
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return int(n * 4 * 4 * 1.1) + (1 << 20)
