"""Command line for prompts: see exactly what the model will read.

python -m mtrec.prompts preview --dataset movielens-100k|local:<folder> --task rating [-n 3] [--role valid]
    [--max-length 256] [--max-history 50] [--item-tokens text|hybrid|both] [--summary] [--heldout] [--seed 0]
    [--data-dir DIR] [--prompts-dir DIR]

Prints `n` rendered prompts per prompt kind (``preference`` shows both ``like`` and ``categories``)
for seeded examples of the split's `role`, each with its template id, user id, token count against
max_length and what the budget cut (history and social entries shown / cut). The token count uses
the bundled SmolLM2-135M tokenizer with the instruction tokens added; the first use on a machine
converts the bundled backbone into mtrec's cache ($MTREC_CACHE_DIR, about 30 s), later uses load it
in about a second. `--item-tokens hybrid` writes history and friends' items as hybrid item tokens
(`<|item|>`, one token each); `--summary` prints only each kind's mean token count over the `n` prompts.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import numpy as np

from mtrec.cli import exit_with
from mtrec.data.errors import DataError
from mtrec.data.registry import available, check_name, load_dataset
from mtrec.data.splits import ROLE_NAMES, leave_one_out
from mtrec.data.friends import hold_out_friends
from mtrec.kinds import KINDS, TASKS
from mtrec.prompts import PromptRenderer, RenderOptions, TemplateError, add_instruction_tokens, load_prompts, prompt_tasks
from mtrec.tasks import ExampleFactory, ExampleOptions, build_specs

ROLES = {name: role for role, name in ROLE_NAMES.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for unusable data or templates)."""
    args = _parser().parse_args(argv)
    try:
        check_name(args.dataset)  # before anything loads: the error lists the choices
        prompts = load_prompts(args.prompts_dir, prompt_tasks([args.task]))
        ds = load_dataset(args.dataset, args.data_dir)
    except (TemplateError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kinds = [k for k in KINDS[args.task] if (k != "rating" or ds.explicit) and (k != "categories" or ds.categories)
             and (k != "friends" or ds.num_social_edges)]
    if not kinds:
        lacks = "social graph" if args.task == "friends" else "ratings"
        print(f"error: {ds.name} has no {lacks}, so it has no {args.task!r} prompts", file=sys.stderr)
        return 2
    held = None
    if args.task == "friends":  # the friend protocol's graph: held-out pairs removed (mtrec.data.friends)
        ds, held = hold_out_friends(ds, args.seed)
    split = dataclasses.replace(leave_one_out(ds, seed=args.seed), friends=held)
    factory = ExampleFactory(split, ExampleOptions(max_history=args.max_history, seed=args.seed))
    renderer = PromptRenderer(_tokenizer(prompts, args.item_tokens != "text"),
                              {t: p.instruction_token for t, p in prompts.items()},
                              RenderOptions(max_length=args.max_length, item_tokens=args.item_tokens))
    rng = np.random.default_rng(args.seed)
    for kind in kinds:
        specs = build_specs(split, ROLES[args.role], (kind,), factory.opts)
        templates = prompts[args.task].heldout(kind) if args.heldout else prompts[args.task].train(kind)
        rows = rng.choice(len(specs), size=min(args.n, len(specs)), replace=False)
        lengths = []
        for i, row in enumerate(rows.tolist(), 1):
            example = factory.make_row(specs, row)
            r = renderer.render(example, templates[rng.integers(len(templates))])
            lengths.append(r.num_tokens)
            if args.summary:
                continue
            print(f"=== {kind} {i}/{len(rows)} · template {r.template_id} · user {example.user_id} · "
                  f"{r.num_tokens}/{args.max_length} tokens · history {r.history_shown} shown, {r.history_cut} cut"
                  f" · social {r.social_shown} shown, {r.social_cut} cut")
            print(r.text, end="\n\n")
        if args.summary:
            print(f"{kind}: {np.mean(lengths):.1f} tokens on average over {len(lengths)} prompts "
                  f"(item tokens: {args.item_tokens}, max_length {args.max_length})")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mtrec.prompts", description="Inspect mtrec prompts.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("preview", help="print rendered prompts for seeded examples of a data set")
    p.add_argument("--dataset", required=True,
                   help=f"a data set: {', '.join(n for n in available() if n != 'local')}, local:<folder> or hf:<folder>")
    p.add_argument("--task", required=True, choices=TASKS, help="preference shows both kinds (like, categories)")
    p.add_argument("-n", type=int, default=3, help="prompts per prompt kind")
    p.add_argument("--role", choices=list(ROLES), default="valid", help="which split's targets to show")
    p.add_argument("--max-length", type=int, default=256, help="token budget (config prompt.max_length)")
    p.add_argument("--max-history", type=int, default=50, help="own-history items before the budget cut (data.max_history)")
    p.add_argument("--item-tokens", choices=["text", "hybrid", "both"], default="text",
                   help="how history items are written (prompt.item_tokens)")
    p.add_argument("--summary", action="store_true", help="print each kind's mean token count only")
    p.add_argument("--heldout", action="store_true", help="use the held-out paraphrases instead of the training ones")
    p.add_argument("--seed", type=int, default=0, help="seed of the example and paraphrase choice (and the split)")
    p.add_argument("--data-dir", help="folder holding the data-set folders (default: $MTREC_DATA_DIR)")
    p.add_argument("--prompts-dir", help="folder holding <task>.yaml templates (default: the ones shipped with mtrec)")
    return parser


def _tokenizer(prompts, item_token: bool = False):
    """The bundled backbone's tokenizer with the instruction tokens (and the hybrid item token) added
    (converts it on first use)."""
    from transformers import AutoTokenizer

    from mtrec.model.backbone import ensure_bundled
    from mtrec.prompts.render import ITEM_TOKEN

    tokenizer = AutoTokenizer.from_pretrained(ensure_bundled())
    add_instruction_tokens(tokenizer, prompts)
    if item_token:
        tokenizer.add_special_tokens({"additional_special_tokens": [ITEM_TOKEN]}, replace_extra_special_tokens=False)
    return tokenizer


if __name__ == "__main__":
    exit_with(main)
