"""Prompts: templates as data files, rendered to a token budget with instruction tokens."""

from mtrec.prompts.render import PromptRenderer, PromptTooLongError, RenderedPrompt, RenderOptions, render_options
from mtrec.prompts.templates import (
    DEFAULT_PROMPTS_DIR,
    EXPLANATION_FILE,
    ExplanationTemplates,
    TaskPrompts,
    Template,
    TemplateError,
    load_explanation_templates,
    load_prompts,
    prompt_tasks,
    load_task_prompts,
)


def add_instruction_tokens(tokenizer, prompts: dict[str, TaskPrompts]) -> dict[str, int]:
    """Add each task's instruction token to `tokenizer` as a special token; return task -> token id.

    Already-present tokens are reused, so calling this on a saved tokenizer is a no-op.
    """
    tokens = [p.instruction_token for p in prompts.values()]
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    return {task: tokenizer.convert_tokens_to_ids(p.instruction_token) for task, p in prompts.items()}


__all__ = [
    "DEFAULT_PROMPTS_DIR",
    "EXPLANATION_FILE",
    "ExplanationTemplates",
    "PromptRenderer",
    "PromptTooLongError",
    "RenderOptions",
    "RenderedPrompt",
    "TaskPrompts",
    "Template",
    "TemplateError",
    "add_instruction_tokens",
    "load_explanation_templates",
    "load_prompts",
    "prompt_tasks",
    "load_task_prompts",
    "render_options",
]
