"""Training recipes end to end: examples/s of what users run, from an empty activation cache.

``python -m mtrec.bench speed recipes [--config configs/quickstart.yaml] [--steps 60]`` trains each
recipe with `mtrec.training.train` (data, rendering, tokenising, the step, the optimizer: the real
loop) for a fixed number of steps and reads its training clock (evaluation is outside it; the
activation cache starts empty in a fresh folder, so the first epoch's frozen-layer passes are paid
inside the clock). Beside them, a TALLRec-style step (the causal LM with the same LoRA, LM loss over
every position's full-vocabulary logits) trains on the same rendered prompts from the same task
sampler, on the same backbone, with the batches built inside its clock too.

Recipes:
- ``today``: the config as it is (LoRA on every layer, instruction-token rows trained);
- ``top-k cached``: ``model.train_top_layers=k`` over ``train.fixed_batches`` batches for several
  epochs, the activation cache on;
- ``top-k uncached``: the same frozen layers, no cache (what stopping the backward alone buys);
- ``minilm``: the bundled all-MiniLM-L6-v2 encoder as the backbone (LoRA on query/value), and with
  its top 2 layers cached.

It writes one JSON file and a markdown table (``--out``); ratios are within this one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mtrec.bench.harness import environment

SMOLLM = "bundled:smollm2-135m"
# Epochs of the cached recipes over their fixed batches. Five repeat them into overfitting (the learning
# bench: NDCG@10 −0.0149 and the validation loss above step 0's at 40 minutes); two still learn.
EPOCHS = 2


def fixed_batches_for(steps: int, given: int | None = None) -> int:
    """`train.fixed_batches` of a cached recipe run for `steps` steps: `given`, else EPOCHS epochs."""
    return given if given is not None else max(steps // EPOCHS, 1)


MINILM = ["model.backbone=bundled:minilm-l6", "model.lora_targets=[query,value]"]


def recipes(fixed: int) -> dict[str, list[str]]:
    cached = lambda k: [f"model.train_top_layers={k}", f"train.fixed_batches={fixed}"]  # noqa: E731
    return {
        "today": [],
        "top-4 cached": cached(4),
        "top-2 cached": cached(2),
        "top-2 uncached": [*cached(2), "train.activation_cache=false"],
        "minilm": MINILM,
        "minilm top-2 cached": [*MINILM, *cached(2)],
        # one token per history item (issue #16's hybrid item tokens); trained at the input, so uncached
        "hybrid tokens": ["prompt.item_tokens=hybrid"],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mtrec.bench speed recipes", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--config", default="configs/quickstart.yaml", help="the training config every recipe starts from")
    a("--steps", type=int, default=60, help="optimizer steps per recipe (fixed: no time budget)")
    a("--fixed-batches", type=int, default=None,
      help=f"train.fixed_batches of the cached recipes (steps / this = epochs); default: steps / {EPOCHS}")
    a("--only", default=None, help="comma-separated recipe names, `tallrec` and `ranking` (default: every recipe, "
                                    "the TALLRec-style step, and ranking on the today recipe's run)")
    a("--no-tallrec", action="store_true", help="skip the TALLRec-style step")
    a("--threads", type=int, default=None, help="torch CPU threads (train.num_threads)")
    a("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override for every recipe")
    a("--ranking-run", default=None, help="time ranking on this run folder (default: the `today` recipe's run, "
                                          "when it is among the recipes)")
    a("--rank-users", type=int, default=32, help="users ranked by each ranker (after one untimed call)")
    a("--rank-batch", type=int, default=8, help="users per call, both rankers")
    a("--beams", type=int, default=20, help="beam width of the generative ranker")
    a("--item-id-tokens", type=int, default=4, help="tokens generated per item id")
    a("--top-k", type=int, default=10, help="items returned per user")
    a("--no-ranking", action="store_true", help="skip the ranking comparison")
    a("--out", default="results/speed_recipes.json", help="the JSON (a .md table beside it)")
    return p


def fixed_run(steps: int, own: list[str], sets: list[str], threads: int | None) -> list[str]:
    """Overrides of a benchmark's training run: exactly `steps` steps (no time budget), evaluation
    only at the start and the end on a few users, no TensorBoard, the benchmark's `own` settings,
    then the user's ``--set`` values (which win) and the thread count."""
    return [f"train.max_steps={steps}", "train.eval_every=0", "train.eval_users=8", "train.tensorboard=false",
            "train.max_minutes=null", *own, *sets, *([f"train.num_threads={threads}"] if threads else [])]


def overrides(args, extra: list[str]) -> list[str]:
    own = ["train.warmup_steps=1", "train.checkpoint_every=0"]
    return [*fixed_run(args.steps, own, args.set, args.threads), *extra]


def run_recipe(args, name: str, extra: list[str], scratch: Path) -> dict:
    """Train one recipe for `args.steps` steps in `scratch`; examples/s and tokens/s over its
    training clock."""
    from mtrec.config import load_config
    from mtrec.training import train

    cache = scratch / f"activations-{len(list(scratch.iterdir()))}"
    cfg = load_config(args.config, overrides(args, [*extra, f"train.activation_cache_dir={cache}"]))
    began = time.perf_counter()
    result = train(cfg, scratch / f"run-{name.replace(' ', '-')}", overwrite=True)
    wall = time.perf_counter() - began
    seconds = result["phases"]["training"]
    row = {"recipe": name, "overrides": extra, "steps": result["steps"], "examples": result["examples_per_process"],
           "tokens": result["tokens"], "training_seconds": seconds,
           "examples_per_second": result["examples_per_process"] / seconds,
           "tokens_per_second": result["tokens"] / seconds, "wall_seconds": round(wall, 1),
           "trainable_parameters": result["parameters"]["trainable"], "backbone": cfg.model.backbone,
           "activation_cache": result.get("activation_cache")}
    if cache.exists():
        row["activation_cache_bytes"] = sum(f.stat().st_size for f in cache.rglob("*.pt"))
        shutil.rmtree(cache)
    return row


def causal_lm(path: str, vocab: int, model_cfg):
    """The backbone at `path` with its causal-LM head, its vocabulary sized as mtrec's tokenizer, and
    TALLRec's LoRA of `model_cfg` (`mtrec.bench.speed.tallrec_lora_config`)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from mtrec.bench.speed import tallrec_lora_config

    causal = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    causal.resize_token_embeddings(vocab)
    return get_peft_model(causal, tallrec_lora_config(causal, model_cfg))


def tallrec_row(args, scratch: Path) -> dict:
    """TALLRec's step on mtrec's rendered training prompts: the same task sampler (fresh draws), the
    causal LM of the same backbone with the same LoRA; batches are built inside the clock."""
    from mtrec.config import load_config
    from mtrec.model.build import build_optimizer
    from mtrec.pipeline import TaskSampler, mixing_probs, train_specs
    from mtrec.training import build_setup

    cfg = load_config(args.config, overrides(args, []))
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(cfg.run.seed)
    s = build_setup(cfg)
    t = cfg.train
    specs = train_specs(s.split, s.kinds, s.example_options, cfg.data.max_train_users, cfg.run.seed)
    sampler = TaskSampler(specs, mixing_probs({k: len(v) for k, v in specs.items()}, t.mixing, t.temperature),
                          s.batcher, t.batch_size, cfg.run.seed, t.length_buckets)
    model = causal_lm(s.ref.path, len(s.tokenizer), cfg.model)
    del s
    opt = build_optimizer(model, t.lr, t.head_lr, t.table_lr, t.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    examples = tokens = 0
    began = time.perf_counter()
    for step in range(args.steps):
        batch = sampler.batch(step)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        examples += len(batch["input_ids"])
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - began
    return {"recipe": "TALLRec-style step", "overrides": [], "steps": args.steps, "examples": examples,
            "tokens": tokens, "training_seconds": round(seconds, 1), "examples_per_second": examples / seconds,
            "tokens_per_second": tokens / seconds, "wall_seconds": round(seconds, 1),
            "trainable_parameters": sum(p.numel() for p in params), "backbone": cfg.model.backbone,
            "activation_cache": None}


@torch.no_grad()
def ranking_rows(args, run_dir: Path) -> dict:
    """Ranking on the shipped path against beam search, on the same users, prompts and users per call.

    mtrec: ``Recommender.from_run(run_dir).recommend(users, k)`` as a user calls it (rendering,
    tokenising, one forward, the seen-item mask and top-k). Beam search: the run's backbone as a
    causal LM (with LoRA of the same shape) generates ``--item-id-tokens`` tokens per item id with
    ``--beams`` beams and returns k sequences per user from the same rendered prompts (left-padded),
    mapped to items by a hash and the user's seen items dropped (P5/OpenP5-style, unconstrained)."""
    from mtrec.batching import pad_right
    from mtrec.inference import Recommender
    from mtrec.run import base_backbone

    rec = Recommender.from_run(run_dir, device="cpu")
    rng = np.random.default_rng(0)
    ids = [u.id for u in rng.choice(rec.dataset.users, size=args.rank_users, replace=False)]
    calls = [ids[i : i + args.rank_batch] for i in range(0, len(ids), args.rank_batch)]
    rec.recommend(calls[0], k=args.top_k, batch_size=args.rank_batch)  # warm-up, untimed
    began = time.perf_counter()
    for call in calls:
        rec.recommend(call, k=args.top_k, batch_size=args.rank_batch)
    mtrec_s = time.perf_counter() - began

    causal = causal_lm(base_backbone(Path(run_dir)).path, len(rec.tokenizer), rec.cfg.model).eval()
    pad = rec.tokenizer.pad_token_id
    mult = torch.randint(1, 1 << 20, (args.item_id_tokens,), generator=torch.Generator().manual_seed(0))

    def beams(call: list[str]) -> torch.Tensor:
        examples = [rec.factory.make_now("recommendation", rec.user_index(u)) for u in call]
        rendered = [rec.renderer.render(ex, rec._template(ex)) for ex in examples]
        right, mask = pad_right(rendered, pad)
        lengths = mask.sum(1)
        left = torch.full_like(right, pad)
        left_mask = torch.zeros_like(mask)
        for r, n in enumerate(lengths.tolist()):  # generation appends on the right: pad on the left
            left[r, right.shape[1] - n:] = right[r, :n]
            left_mask[r, right.shape[1] - n:] = 1
        out = causal.generate(input_ids=left, attention_mask=left_mask, num_beams=args.beams,
                              num_return_sequences=args.top_k, do_sample=False, max_new_tokens=args.item_id_tokens,
                              min_new_tokens=args.item_id_tokens, pad_token_id=pad)
        items = ((out[:, -args.item_id_tokens:] * mult).sum(-1) % rec.dataset.num_items).view(len(call), args.top_k)
        users = torch.as_tensor([rec.user_index(u) for u in call])
        return items.masked_fill(rec.seen.contains(users, items), -1)

    beams(calls[0])  # warm-up, untimed
    began = time.perf_counter()
    for call in calls:
        beams(call)
    beam_s = time.perf_counter() - began
    n = len(ids)
    return {"users": n, "users_per_call": args.rank_batch, "top_k": args.top_k, "beams": args.beams,
            "item_id_tokens": args.item_id_tokens, "mtrec_users_per_s": n / mtrec_s, "beam_users_per_s": n / beam_s,
            "mtrec_over_beam": beam_s / mtrec_s}


def table(result: dict) -> str:
    rows = result["rows"]
    base = next((r for r in rows if r["recipe"] == "today"), None)
    tallrec = next((r for r in rows if r["recipe"] == "TALLRec-style step"), None)
    lines = ["| recipe | backbone | steps | examples/s | tokens/s | × today | × TALLRec-style step | cache hits / misses | training s |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        ratio = lambda ref: f"{r['examples_per_second'] / ref['examples_per_second']:.2f}" if ref else "–"  # noqa: E731
        cache = r.get("activation_cache") or {}
        hits = f"{cache.get('hits', 0)} / {cache.get('misses', 0)}" if cache else "–"
        lines.append(f"| {r['recipe']} | {r['backbone'].removeprefix('bundled:')} | {r['steps']} | "
                     f"{r['examples_per_second']:.2f} | {r['tokens_per_second']:.0f} | {ratio(base)} | {ratio(tallrec)} | "
                     f"{hits} | {r['training_seconds']:.1f} |")
    env = result["environment"]
    rank = result.get("ranking")
    if rank:
        lines += ["", f"Ranking, {rank['users']} users, {rank['users_per_call']} per call, top {rank['top_k']}: "
                      f"mtrec `Recommender.recommend` {rank['mtrec_users_per_s']:.2f} users/s, beam search "
                      f"({rank['beams']} beams, {rank['item_id_tokens']} tokens per id) {rank['beam_users_per_s']:.3f} "
                      f"users/s: **{rank['mtrec_over_beam']:.1f}×**."]
    lines.append("")
    lines.append(f"`python -m mtrec.bench speed recipes {' '.join(result['argv'])}` on {env['device_name']} "
                 f"({env['cpu_capability']}), {env['torch_threads']} threads, torch {env['torch']}. Examples/s over "
                 f"each run's training clock (evaluation outside it; the activation cache empty at the start). "
                 f"The TALLRec-style step trains the config's own backbone"
                 f"{' (' + tallrec['backbone'].removeprefix('bundled:') + ')' if tallrec else ''} as a causal LM with "
                 f"the same LoRA on the same prompts; MiniLM has no causal-LM head, so its rows compare with it too.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.fixed_batches = fixed_batches_for(args.steps, args.fixed_batches)
    if args.steps < 1 or args.fixed_batches < 1:
        build_parser().error("--steps and --fixed-batches must be >= 1")
    chosen = recipes(args.fixed_batches)
    if args.only:
        names = [n.strip() for n in args.only.split(",")]
        unknown = [n for n in names if n not in chosen and n not in ("tallrec", "ranking")]
        if unknown:
            build_parser().error(f"--only: unknown recipe(s) {unknown}; choose from {list(chosen)}, tallrec or "
                                 f"ranking (with --ranking-run)")
        if "ranking" in names and not args.ranking_run and "today" not in names:
            build_parser().error("--only ranking needs --ranking-run (or the today recipe to rank with)")
        chosen = {n: chosen[n] for n in names if n in chosen}
        args.no_tallrec = args.no_tallrec or "tallrec" not in names
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="mtrec-recipes-") as tmp:
        scratch = Path(tmp)
        for name, extra in chosen.items():
            print(f"[recipes] {name}: {' '.join(extra) or '(the config as it is)'}", file=sys.stderr)
            rows.append(run_recipe(args, name, extra, scratch))
            print(f"[recipes] {name}: {rows[-1]['examples_per_second']:.2f} examples/s", file=sys.stderr)
        if not args.no_tallrec:
            print("[recipes] TALLRec-style step", file=sys.stderr)
            rows.append(tallrec_row(args, scratch))
        ranking = None
        run = Path(args.ranking_run) if args.ranking_run else scratch / "run-today" if "today" in chosen else None
        if run is not None and not args.no_ranking and (not args.only or "ranking" in args.only.split(",")
                                                        or "today" in chosen):
            print(f"[recipes] ranking: Recommender.recommend on {run} against beam search", file=sys.stderr)
            ranking = ranking_rows(args, run)
    result = {"argv": argv, "environment": environment(torch.device("cpu")), "rows": rows, "ranking": ranking}
    out.write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
    out.with_suffix(".md").write_text(table(result) + "\n", encoding="utf-8")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
