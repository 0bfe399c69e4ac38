"""mtrec: one LoRA-fine-tuned language model for rating, preference and recommendation."""

__version__ = "0.1.0"

# `mtrec.Recommender` is loaded on first use, so `import mtrec` (done by every submodule, e.g. for
# the version) does not pull in torch, transformers and peft.
_LAZY = {"Recommender": "mtrec.inference", "UnknownIdError": "mtrec.inference"}
__all__ = ["Recommender", "UnknownIdError", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mtrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
