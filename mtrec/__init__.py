"""mtrec: one LoRA-fine-tuned language model for rating, preference and recommendation."""

__version__ = "0.1.0"
