"""Training only the top k layers of the backbone, with the frozen layers' output cached.

``model.train_top_layers: k`` (BAHE, SIGIR 2024; SLMRec, ICLR 2025): LoRA goes on the top k
transformer layers alone; the layers below the cut, the embeddings and the instruction-token rows
are frozen. Nothing below the cut then needs a gradient, so autograd stops there: the backward
pass costs k layers, not all of them. The instruction-token rows are *frozen*, not injected above the
cut: they keep their starting rows (saved in the run folder as before), and the top layers learn
what each task's token means from the states the frozen layers give it.

`FrozenBottom` keeps everything outside the top layers in eval mode (no dropout), so the output of
the last frozen layer is a pure function of the batch and the frozen weights. `ActivationCache`
stores that output per batch under ``$MTREC_CACHE_DIR/activations/`` (keyed by the frozen weights,
the cut and the batch's tokens; memory-mapped when read back; bounded in size) and replays it: the
frozen layers are then skipped (each passes its input through; the last returns the stored
output). It pays when batches recur: ``train.fixed_batches`` trains over a fixed, seeded set of
batches for several epochs.
"""

from __future__ import annotations

import hashlib
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from mtrec import paths

CACHE_FOLDER = "activations"
FORMAT = "1"  # bump when what is stored changes


def layer_stack(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, module) of the backbone's transformer layers: the one ``nn.ModuleList`` holding
    ``config.num_hidden_layers`` blocks (``layers`` in Llama/Qwen, ``encoder.layer`` in BERT)."""
    n = getattr(backbone.config, "num_hidden_layers", None)
    found = [(name, m) for name, m in backbone.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(found) != 1:
        raise ValueError(f"model.train_top_layers: cannot find the layer stack of {type(backbone).__name__} "
                         f"(nn.ModuleLists of {n} blocks: {[name for name, _ in found]})")
    return found[0]


def top_layer_pattern(backbone: nn.Module, k: int, targets: list[str], prefix: str = "backbone") -> str:
    """peft ``target_modules`` regex for the projections `targets` inside the top `k` layers only,
    for module names under `prefix` (the backbone's attribute in `RecModel`)."""
    name, layers = layer_stack(backbone)
    check_k(k, len(layers))
    index = "|".join(str(i) for i in range(len(layers) - k, len(layers)))
    return rf"^{re.escape(prefix)}\.{re.escape(name)}\.({index})\.(.*\.)?({'|'.join(map(re.escape, targets))})$"


def check_k(k: int, layers: int) -> None:
    if not 1 <= k <= layers:
        raise ValueError(f"model.train_top_layers: {k} is not between 1 and the backbone's {layers} layers")


def _eval_only(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


class FrozenBottom:
    """The part of `backbone` below its top `k` layers: frozen, in eval mode, replayable.

    While ``replay`` holds a tensor, the frozen layers do no work: each passes its input through and
    the last one returns ``replay`` (the output it gave on this batch before). While ``record`` is
    set, the last frozen layer's output is kept in ``recorded``."""

    def __init__(self, backbone: nn.Module, k: int) -> None:
        self.name, layers = layer_stack(backbone)
        check_k(k, len(layers))
        self.k, self.cut = k, len(layers) - k
        self.replay: torch.Tensor | None = None
        self.record = False
        self.recorded: torch.Tensor | None = None
        top = {id(m) for layer in layers[self.cut:] for m in layer.modules()}
        self.frozen = _lock_outside(backbone, top)  # modules outside the top layers, eval mode for good
        for module in self.frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        for i, layer in enumerate(layers[: self.cut]):
            layer.forward = self._wrap(layer.forward, last=i == self.cut - 1)

    def _wrap(self, forward, last: bool):
        def run(hidden_states, *args, **kwargs):
            if self.replay is not None:
                return self.replay if last else hidden_states
            out = forward(hidden_states, *args, **kwargs)
            if last and self.record:
                if not torch.is_tensor(out):
                    raise TypeError(f"train.activation_cache: the backbone's layers return {type(out).__name__}, "
                                    f"not a tensor; set train.activation_cache=false")
                self.recorded = out.detach()
            return out
        return run

    def fingerprint(self) -> str:
        """sha256 of everything the frozen part computes with: the cut, and every parameter and buffer
        outside the top layers (embeddings and instruction-token rows included), by value."""
        h = hashlib.sha256(f"{FORMAT}\0{self.name}\0{self.cut}\0{torch.__version__}".encode())
        for module in self.frozen:
            for name, t in _tensors(module):
                h.update(name.encode())
                h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
                h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def _tensors(module: nn.Module):
    yield from module.named_parameters()
    yield from module.named_buffers()


def _lock_outside(module: nn.Module, top: set[int]) -> list[nn.Module]:
    """Put every submodule of `module` that holds no part of the top layers into eval mode for good
    (its ``train()`` keeps it in eval mode); return those submodules, outermost only."""
    locked = []
    for child in module.children():
        if id(child) in top:
            continue
        if any(id(m) in top for m in child.modules()):
            locked += _lock_outside(child, top)
            continue
        child.eval()
        for m in child.modules():
            m.train = _eval_only.__get__(m)
        locked.append(child)
    return locked


def batch_key(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> str:
    """sha256 of a batch's token ids and mask, shapes included."""
    h = hashlib.sha256(str((tuple(input_ids.shape), str(input_ids.dtype))).encode())
    for t in (input_ids, attention_mask):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


class ActivationCache:
    """The frozen layers' output per batch, on disk, read back memory-mapped.

    Args:
        bottom: the frozen part of the model being trained.
        key: what else the stored output depends on (mixed precision, ...), beside
            ``bottom.fingerprint()``.
        max_bytes: bound on the size of the cache folder (every run's files); a batch that would
            pass it is computed as usual and not stored.
    """

    def __init__(self, bottom: FrozenBottom, key: str = "", max_bytes: int = 4 << 30,
                 folder: Path | None = None) -> None:
        self.bottom = bottom
        root = folder or paths.cache_dir() / CACHE_FOLDER
        digest = hashlib.sha256(f"{bottom.fingerprint()}\0{key}".encode()).hexdigest()[:32]
        self.dir = root / digest
        self.max_bytes = max_bytes
        self.used = sum(f.stat().st_size for f in root.rglob("*.pt")) if root.exists() else 0
        self.stats = {"hits": 0, "misses": 0, "stored": 0, "bytes_stored": 0, "full": False}

    @contextmanager
    def around(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, device: torch.device | str = "cpu"):
        """Run the body (forward and backward of one batch, on `device`) with the frozen layers' output
        replayed from the cache, or recorded and stored."""
        path = self.dir / f"{batch_key(input_ids, attention_mask)}.pt"
        if path.exists():
            self.stats["hits"] += 1
            self.bottom.replay = torch.load(path, map_location=device, weights_only=True, mmap=True)
            try:
                yield
            finally:
                self.bottom.replay = None
            return
        self.stats["misses"] += 1
        self.bottom.record = True
        try:
            yield
        finally:
            self.bottom.record = False
            out, self.bottom.recorded = self.bottom.recorded, None
        if out is None:
            return
        size = out.numel() * out.element_size()
        if self.used + size > self.max_bytes:
            self.stats["full"] = True
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(out.cpu().clone(), tmp)
        os.replace(tmp, path)
        self.used += size
        self.stats["stored"] += 1
        self.stats["bytes_stored"] += size
