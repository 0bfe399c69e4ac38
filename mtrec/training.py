"""Multi-task fine-tuning with accelerate: set up from a Config, train, write the run folder."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from mtrec.config import Config
from mtrec.data import load_dataset
from mtrec.data.splits import VALID, Split, make_split
from mtrec.model.backbone import BackboneRef, resolve_backbone
from mtrec.model.build import build_backbone, build_heads, count_parameters, initial_item_table, lora_config, wrap_model
from mtrec.model.multitask import NUM_KINDS, multitask_loss
from mtrec.pipeline import Batcher, TaskSampler, evaluate, eval_specs, kinds_for, mixing_probs, train_specs
from mtrec.prompts import DEFAULT_PROMPTS_DIR, PromptRenderer, RenderOptions, load_prompts
from mtrec.run import prepare_run_dir, save_catalog, save_config, write_manifest
from mtrec.tasks import KIND_IDS, ExampleFactory, ExampleOptions


@dataclass
class Setup:
    """Everything a training run or an evaluation needs, built from one Config."""

    cfg: Config
    split: Split
    kinds: list[str]
    batcher: Batcher
    model: torch.nn.Module
    tokenizer: object
    token_ids: dict[str, int]
    ref: BackboneRef
    weights: torch.Tensor
    example_options: ExampleOptions


def example_options(cfg: Config) -> ExampleOptions:
    d = cfg.data
    return ExampleOptions(d.like_threshold, d.negatives_per_positive, d.max_history,
                          d.max_social if cfg.prompt.social else 0, cfg.run.seed)


def render_options(cfg: Config) -> RenderOptions:
    p = cfg.prompt
    return RenderOptions(p.max_length, p.max_title_tokens, p.max_text_tokens, social_share=p.social_share)


def load_split(cfg: Config) -> Split:
    ds = load_dataset(cfg.data.dataset, cfg.data.data_dir, **({"download": True} if cfg.data.download else {}),
                      **cfg.data.options)
    return make_split(ds, cfg.data.split, seed=cfg.data.split_seed)


def build_setup(cfg: Config, accelerator: Accelerator | None = None) -> Setup:
    """Data, prompts, backbone (+instruction tokens), item table, heads and LoRA, from `cfg`."""
    split = load_split(cfg)
    prompts = load_prompts(cfg.prompt.prompts_dir)
    if accelerator is not None:
        with accelerator.main_process_first():  # one process converts the bundled backbone; others wait
            ref = resolve_backbone(cfg.model.backbone)
    else:
        ref = resolve_backbone(cfg.model.backbone)
    backbone, tokenizer, token_ids, pooling = build_backbone(cfg.model, prompts, ref, cfg.run.seed)
    hidden = backbone.config.hidden_size
    bf16 = choose_mixed_precision(cfg.train.mixed_precision) == "bf16"
    table = initial_item_table(split.dataset, cfg.model, backbone, tokenizer, prompts, pooling, hidden, cfg.run.seed,
                               ref.sha256, bf16)
    heads = build_heads(split.dataset, table, split.train, hidden, cfg.data.like_threshold)
    model = wrap_model(backbone, heads, pooling, lora_config(cfg.model, backbone, token_ids))
    opts = example_options(cfg)
    renderer = PromptRenderer(tokenizer, {t: p.instruction_token for t, p in prompts.items()}, render_options(cfg))
    batcher = Batcher(ExampleFactory(split, opts), renderer, prompts, tokenizer.pad_token_id, len(split.dataset.categories))
    weights = torch.tensor([float(cfg.train.task_weights.get(k, 1.0)) for k in sorted(KIND_IDS, key=KIND_IDS.get)])
    return Setup(cfg, split, kinds_for(cfg.train.tasks, split), batcher, model, tokenizer, token_ids, ref, weights, opts)


def choose_mixed_precision(setting: str) -> str:
    """'auto': bf16 on a GPU that supports it, and on a CPU with native bf16 matmul (AMX/AVX-512
    bf16, where autocast roughly halves step time); otherwise full precision."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    capability = torch.backends.cpu.get_cpu_capability()
    return "bf16" if "AMX" in capability or "AVX512" in capability else "no"


def make_optimizer(model, cfg: Config) -> torch.optim.Optimizer:
    """AdamW with two groups: heads (+item table) at head_lr, LoRA and token rows at lr."""
    heads, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (heads if ".heads." in name else rest).append(p)
    groups = [{"params": rest, "lr": cfg.train.lr}, {"params": heads, "lr": cfg.train.head_lr}]
    fused = torch.cuda.is_available()
    return torch.optim.AdamW(groups, weight_decay=cfg.train.weight_decay, fused=fused)


def train(cfg: Config, run_dir: str | Path, overwrite: bool = False, setup: Setup | None = None) -> dict:
    """Fine-tune as configured and write the run folder. Returns the final metrics dict.

    Args:
        cfg: the configuration.
        run_dir: the run folder; an existing non-empty one raises unless `overwrite`.
        overwrite: replace an existing run folder.
        setup: a prebuilt `build_setup(cfg)` (tests use it to inspect parameters before training).
    """
    run_dir = Path(run_dir)
    accelerator = Accelerator(cpu=_multi_process_cpu(), gradient_accumulation_steps=cfg.train.grad_accum,
                              mixed_precision=choose_mixed_precision(cfg.train.mixed_precision),
                              log_with="tensorboard" if cfg.train.tensorboard else None, project_dir=str(run_dir))
    if accelerator.is_main_process:
        prepare_run_dir(run_dir, overwrite)
    accelerator.wait_for_everyone()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    set_seed(cfg.run.seed)
    s = setup or build_setup(cfg, accelerator)
    if cfg.train.tensorboard:
        accelerator.init_trackers("tensorboard", config=_flat(cfg.to_dict()))
    log = _Log(accelerator, s)
    result = _loop(cfg, s, accelerator, log)
    if accelerator.is_main_process:
        save_run(run_dir, s, accelerator.unwrap_model(s.model), result)
    accelerator.end_training()
    return result


def _agreed_timeout(accelerator: Accelerator, start: float, minutes: float) -> bool:
    """Whether the time budget is spent, decided by the main process and shared, so that every
    process stops at the same step (DDP would hang otherwise)."""
    flag = torch.tensor([float(time.perf_counter() - start > 60 * minutes)], device=accelerator.device)
    return bool(broadcast(flag, from_process=0).item())


def _multi_process_cpu() -> bool:
    """True when several processes were launched on a machine without CUDA.

    accelerate only sets up gloo DDP across CPU processes when asked for the CPU explicitly;
    without it each process silently trains alone (seen with accelerate 1.15 under both
    `accelerate launch --multi_gpu` and `torchrun`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1 and not torch.cuda.is_available()


def _loop(cfg: Config, s: Setup, accelerator: Accelerator, log) -> dict:
    t = cfg.train
    specs = train_specs(s.split, s.kinds, s.example_options, cfg.data.max_train_users, cfg.run.seed)
    sizes = {k: len(v) for k, v in specs.items()}
    sampler = TaskSampler(specs, mixing_probs(sizes, t.mixing, t.temperature), s.batcher, t.batch_size, cfg.run.seed)
    valid = eval_specs(s.split, s.kinds, s.example_options, VALID, t.eval_users, cfg.run.seed)
    opt = make_optimizer(s.model, cfg)
    sched = get_cosine_schedule_with_warmup(opt, t.warmup_steps, t.max_steps)
    model, opt, sched = accelerator.prepare(s.model, opt, sched)
    weights = s.weights.to(accelerator.device)
    history = [log.evaluate(model, valid, weights, step=0)]
    best, best_state, bad_evals = history[0], _trainable_state(accelerator.unwrap_model(model)), 0
    start, tokens, examples = time.perf_counter(), 0, 0
    bar = tqdm(range(1, t.max_steps + 1), desc="training", disable=not accelerator.is_main_process)
    running = torch.zeros(NUM_KINDS, device=accelerator.device)
    running_n = torch.zeros(NUM_KINDS, device=accelerator.device)
    model.train()
    for step in bar:
        for micro in range(t.grad_accum):
            batch = sampler.batch((step - 1) * t.grad_accum + micro, accelerator.process_index)
            tokens += int(batch["attention_mask"].sum())
            examples += len(batch["kind"])
            batch = {n: (v.to(accelerator.device) if torch.is_tensor(v) else v) for n, v in batch.items()}
            with accelerator.accumulate(model):
                loss, per_kind, counts = _step_loss(model, batch, weights, cfg)
                accelerator.backward(loss)
                if accelerator.sync_gradients and t.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), t.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            running += per_kind * counts
            running_n += counts
        if step % t.log_every == 0 or step == t.max_steps:
            log.train(bar, step, running / running_n.clamp(min=1), running_n, sched.get_last_lr()[0])
            running.zero_()
            running_n.zero_()
        out_of_time = t.max_minutes is not None and step % t.log_every == 0 and _agreed_timeout(accelerator, start, t.max_minutes)
        if (t.eval_every and step % t.eval_every == 0) or step == t.max_steps or out_of_time:
            history.append(log.evaluate(model, valid, weights, step))
            if _better(history[-1], best, t.early_stopping_metric):
                best, best_state, bad_evals = history[-1], _trainable_state(accelerator.unwrap_model(model)), 0
            else:
                bad_evals += 1
                if t.patience and bad_evals >= t.patience:
                    accelerator.print(f"early stopping at step {step}: {t.early_stopping_metric} did not improve "
                                      f"for {bad_evals} evaluations")
                    break
        if out_of_time:
            accelerator.print(f"stopping at step {step}: train.max_minutes={t.max_minutes} reached")
            break
    _load_trainable_state(accelerator.unwrap_model(model), best_state)
    seconds = time.perf_counter() - start
    final = None
    if t.final_eval_users is not None and t.final_eval_users != t.eval_users:
        final_specs = eval_specs(s.split, s.kinds, s.example_options, VALID, t.final_eval_users, cfg.run.seed)
        final = log.evaluate(model, final_specs, weights, step=best["step"], label="final validation (best weights)")
    ranks = _rank_report(accelerator, model, step)
    return {"best": best, "final": final, "history": history, "steps": step, "seconds": round(seconds, 1),
            "examples_per_process": examples, "tokens_per_second": round(tokens / seconds, 1),
            "train_sizes": sizes, "parameters": count_parameters(accelerator.unwrap_model(model)),
            "mixed_precision": accelerator.mixed_precision, "num_processes": accelerator.num_processes,
            "ranks": ranks}


def _rank_report(accelerator: Accelerator, model, step: int) -> dict:
    """Steps taken and a checksum of the trainable parameters on every process: with DDP they must
    agree, and a mismatch means the replicas diverged."""
    total = sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad)
    mine = torch.tensor([[float(step), float(total)]], dtype=torch.float64, device=accelerator.device)
    every = accelerator.gather(mine).cpu().tolist()
    return {"steps": [int(r[0]) for r in every], "param_checksums": [r[1] for r in every]}


def _step_loss(model, batch, weights, cfg: Config):
    t = cfg.train
    if t.rec_loss == "sampled":
        num_items = model_num_items(model)
        negatives = torch.randint(0, num_items, (t.num_negatives,), device=batch["item"].device)
        subset = torch.unique(torch.cat([batch["item"], negatives]))
        labels = torch.searchsorted(subset, batch["item"])
        out = model(batch["input_ids"], batch["attention_mask"], subset, batch["item"])
        return multitask_loss(out, batch, weights, t.loss_weighting == "uncertainty", labels)
    out = model(batch["input_ids"], batch["attention_mask"], None, batch["item"])
    return multitask_loss(out, batch, weights, t.loss_weighting == "uncertainty")


def model_num_items(model) -> int:
    for name, p in model.named_parameters():
        if name.endswith("item_bias") and p.requires_grad:
            return p.shape[0]
    raise ValueError("model has no item table")


def _better(new: dict, old: dict, metric: str) -> bool:
    name = metric.removeprefix("valid/")
    if name not in new:
        raise KeyError(f"train.early_stopping_metric: {metric!r} is not among the validation metrics {sorted(new)}")
    lower = name.endswith("loss") or name.endswith("rmse") or name.endswith("mae")
    return new[name] < old[name] if lower else new[name] > old[name]


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n].to(p.device))


class _Log:
    """Progress bar, TensorBoard and evaluation printing, on the main process only."""

    def __init__(self, accelerator: Accelerator, s: Setup) -> None:
        self.acc, self.s = accelerator, s

    def evaluate(self, model, valid, weights, step: int, label: str | None = None) -> dict:
        t0 = time.perf_counter()
        m = evaluate(model, self.s.batcher, valid, self.s.split, VALID, weights, self.s.cfg.train.eval_batch_size,
                     self.acc)
        m["step"] = step
        m["examples"] = len(valid)
        m["seconds"] = round(time.perf_counter() - t0, 1)
        if label is None:
            self.acc.log({f"valid/{k}": v for k, v in m.items() if k not in ("step", "examples", "seconds")}, step=step)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in m.items() if k not in ("step", "examples", "seconds"))
        self.acc.print(f"{label or 'step ' + str(step)} ({len(valid)} examples, {m['seconds']} s): {shown}")
        return m

    def train(self, bar, step: int, per_kind: torch.Tensor, counts: torch.Tensor, lr: float) -> None:
        values = per_kind.tolist()  # one host sync per log interval, not per step
        seen = counts.tolist()
        names = sorted(KIND_IDS, key=KIND_IDS.get)
        shown = {names[k]: round(values[k], 3) for k in range(NUM_KINDS) if seen[k] > 0}
        bar.set_postfix(shown)
        self.acc.log({f"train/{k}_loss": v for k, v in shown.items()} | {"train/lr": lr}, step=step)


def save_run(run_dir: Path, s: Setup, model, result: dict) -> None:
    """Write the run folder (see `mtrec.run`)."""
    model.save_pretrained(run_dir / "adapter")
    s.tokenizer.save_pretrained(run_dir / "tokenizer")
    save_config(run_dir, s.cfg.to_dict())
    src = Path(s.cfg.prompt.prompts_dir) if s.cfg.prompt.prompts_dir else DEFAULT_PROMPTS_DIR
    shutil.copytree(src, run_dir / "prompts", dirs_exist_ok=True)
    (run_dir / "backbone.json").write_text(json.dumps(s.ref.to_dict(), indent=1), encoding="utf-8")
    save_catalog(run_dir / "catalog", s.split)
    (run_dir / "metrics.json").write_text(json.dumps(_jsonable(result), indent=1), encoding="utf-8")
    write_manifest(run_dir, {"token_ids": s.token_ids, "pooling": s.model.base_model.model.pooling})


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out
