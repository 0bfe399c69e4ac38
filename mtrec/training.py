"""Multi-task fine-tuning with accelerate: set up from a Config, train, write the run folder."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, is_compiled_module, set_seed
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from mtrec.checkpoint import (NonFiniteLossError, checkpoint_bytes, checkpoint_dir, latest_checkpoint,
                              load_checkpoint, load_trainable_state, preflight_run_dir, save_checkpoint,
                              trainable_state)
from mtrec.config import Config, ConfigError
from mtrec.data import load_dataset
from mtrec.data.friends import hold_out_friends
from mtrec.data.splits import VALID, Split, make_split
from mtrec.model.backbone import BackboneRef, resolve_backbone
from mtrec.model.blend import MIN_USERS as BLEND_USERS
from mtrec.model.blend import fit_like_text, tune_rank_blend
from mtrec.model.build import (build_backbone, build_heads, build_optimizer, count_parameters, embedded_items,
                               heads_of, initial_item_table, item_text_encodings, lora_config, token_embedding_rms,
                               wants_friends, wrap_model)
from mtrec.kinds import KIND_IDS, KIND_NAMES, KIND_TASK, NUM_KINDS
from mtrec.model.collaborative import FULL_SOFTMAX_ITEMS
from mtrec.model.layer_cut import ActivationCache, FrozenBottom
from mtrec.model.multitask import multitask_loss
from mtrec.model.stacking import MIN_LEFT, RANKING_PRIORS, StackedPriors, prior_split, tail_mask
from mtrec.pipeline import (Batcher, Prefetcher, TaskSampler, evaluate, eval_specs, extra_inputs, kinds_for, mixing_probs,
                            train_specs)
from mtrec.prompts import PromptRenderer, load_prompts, prompt_tasks, render_options
from mtrec.prompts.render import ITEM_TOKEN_MODES
from mtrec.run import RunFolderError, prepare_run_dir, save_run
from mtrec.tasks import ExampleFactory, ExampleOptions, example_options


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
    phases: dict[str, float] = field(default_factory=dict)  # seconds per set-up phase (metrics.json)
    bottom: FrozenBottom | None = None  # model.train_top_layers: the frozen part below the cut
    # model.stack_tail: the tail interactions the model trains on, and the priors' two values
    tail: np.ndarray | None = None
    stacking: StackedPriors | None = None
    # the ranking priors as fitted (served values, before any step): the ranking blend's reference
    fitted_ranking: dict[str, torch.Tensor] | None = None


@contextmanager
def timed(phases: dict[str, float], name: str):
    """Add the wall time of the `with` body to ``phases[name]`` (seconds, 0.1 s resolution)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = round(phases.get(name, 0.0) + time.perf_counter() - start, 1)


def load_split(cfg: Config) -> Split:
    """The configured data set and split; with the friends task (and `data.friend_holdout`), the
    friend protocol's held-out pairs removed from the graph first (`mtrec.data.friends`)."""
    ds = load_dataset(cfg.data.dataset, cfg.data.data_dir, **({"download": True} if cfg.data.download else {}),
                      **cfg.data.options)
    held = None
    if "friends" in cfg.train.tasks and ds.num_social_edges and cfg.data.friend_holdout:
        ds, held = hold_out_friends(ds, cfg.data.split_seed)
    return dataclasses.replace(make_split(ds, cfg.data.split, seed=cfg.data.split_seed), friends=held)


def hybrid_item_tokens(cfg: Config) -> bool:
    """Does `cfg` write hybrid item tokens (`prompt.item_tokens` hybrid or both)? Checks the settings."""
    mode = cfg.prompt.item_tokens
    if mode not in ITEM_TOKEN_MODES:
        raise ConfigError(f"prompt.item_tokens: {mode!r} is not one of {', '.join(ITEM_TOKEN_MODES)}")
    if mode != "text" and cfg.model.train_top_layers:
        # the projector is trained at the input, below any cut: the activation cache would replay stale
        # inputs, and freezing it would leave an untrained projection
        raise ConfigError("prompt.item_tokens: hybrid item tokens train their projector at the input, so they "
                          "cannot be combined with model.train_top_layers (frozen layers below the top ones)")
    if cfg.prompt.item_token_curriculum < 0:
        raise ConfigError(f"prompt.item_token_curriculum: {cfg.prompt.item_token_curriculum} is negative")
    return mode != "text"


def build_setup(cfg: Config, accelerator: Accelerator | None = None, split: Split | None = None) -> Setup:
    """Data, prompts, backbone (+instruction tokens), item table, heads and LoRA, from `cfg` (the
    data from `split` where given: `mtrec.update` passes a run's catalog grown by new data)."""
    phases: dict[str, float] = {}
    with timed(phases, "data"):
        split = split if split is not None else load_split(cfg)
    kinds = kinds_for(cfg.train.tasks, split)
    if not kinds:  # before anything expensive
        raise ConfigError(f"train.tasks: {list(cfg.train.tasks)} has nothing to train on {split.dataset.name} "
                          f"(rating needs ratings, friends a social graph)")
    hybrid = hybrid_item_tokens(cfg)
    tail = stacked_tail(cfg, split, hybrid)  # before anything expensive
    prompts = load_prompts(cfg.prompt.prompts_dir, prompt_tasks(cfg.train.tasks))
    with timed(phases, "backbone"):
        if accelerator is not None:
            with accelerator.main_process_first():  # one process converts the bundled backbone; others wait
                ref = resolve_backbone(cfg.model.backbone)
        else:
            ref = resolve_backbone(cfg.model.backbone)
        backbone, tokenizer, token_ids, pooling = build_backbone(cfg.model, prompts, ref, cfg.run.seed,
                                                                 item_tokens=cfg.prompt.item_tokens)
    hidden = backbone.config.hidden_size
    bf16 = choose_mixed_precision(cfg.train.mixed_precision) == "bf16"
    with timed(phases, "item_encoding"):
        table = initial_item_table(split.dataset, cfg.model, backbone, tokenizer, prompts, pooling, hidden,
                                   cfg.run.seed, ref.sha256, bf16)
        like_text = None
        if cfg.model.like_text:  # the like head's text term reads the items' encodings (cached: encoded once)
            like_text = {"table": item_text_encodings(split.dataset, cfg.model, backbone, tokenizer, prompts, pooling,
                                                      cfg.run.seed, ref.sha256, bf16), "len": cfg.model.like_text}
        # the sequential prior's start: encodings in full precision whatever the training precision, so
        # that the bench's prior alone (`PriorAlone`, which encodes in fp32) fits the same network
        sequence_text = (item_text_encodings(split.dataset, cfg.model, backbone, tokenizer, prompts, pooling,
                                             cfg.run.seed, ref.sha256) if cfg.model.sequence_init == "text" else None)
    with timed(phases, "collaborative_fits"):
        def heads_on(fit: Split, sequence_split: Split | None = None):
            return build_heads(split.dataset, table, fit.train, hidden, cfg.data.like_threshold,
                               collab_dim=cfg.model.collab_dim, split=fit, seed=cfg.run.seed,
                               negatives_per_positive=cfg.data.negatives_per_positive,
                               friends=wants_friends(cfg, split.dataset), friend_dim=cfg.model.friend_dim,
                               ranking_prior=cfg.model.ranking_prior, sequence_len=cfg.model.sequence_len,
                               item_tokens={"embed_rms": token_embedding_rms(backbone)} if hybrid else None,
                               like_text=like_text, sequence_text=sequence_text,
                               sequence_seeds=cfg.model.sequence_seeds, sequence_split=sequence_split)

        # unstacked ranking priors hold the full fits in training too (`StackedPriors` copies them over
        # the stacked heads'): the sequential prior is fitted on the full split only, not twice
        heads = heads_on(split) if tail is None else heads_on(prior_split(split, tail),
                                                               None if cfg.model.stack_ranking else split)
        full = None if tail is None else heads_on(split)  # the served priors (the fits of a run without stacking)
    with timed(phases, "lora"):
        model = wrap_model(backbone, heads, pooling, lora_config(cfg.model, backbone, token_ids))
        stacking = None
        if full is not None:
            # the model at rest serves the full fits; the training loop switches for its steps
            stacking = StackedPriors(heads_of(model), full,
                                     ranking=cfg.model.stack_ranking)
            del full
        # model.train_top_layers: everything below the top layers frozen (token rows included), in eval mode
        bottom = FrozenBottom(backbone, cfg.model.train_top_layers) if cfg.model.train_top_layers else None
    opts = example_options(cfg)
    renderer = PromptRenderer(tokenizer, {t: p.instruction_token for t, p in prompts.items()}, render_options(cfg),
                              embedded_items(split) if hybrid else None)
    batcher = Batcher(ExampleFactory(split, opts), renderer, prompts, tokenizer.pad_token_id, len(split.dataset.categories))
    weights = torch.tensor([float(cfg.train.task_weights.get(k, 1.0)) for k in sorted(KIND_IDS, key=KIND_IDS.get)])
    # (not with hybrid item tokens: they may read the ranking factors, so putting the fits back would
    # change what the backbone reads for every head)
    fitted = None if hybrid else {n: p.detach().clone() for n, p in heads_of(model).named_parameters()
                                  if n in RANKING_PRIORS}
    return Setup(cfg, split, kinds, batcher, model, tokenizer, token_ids, ref, weights, opts, phases, bottom,
                 tail, stacking, fitted)


def stacked_tail(cfg: Config, split: Split, hybrid: bool) -> np.ndarray | None:
    """`model.stack_tail`'s tail interactions (`mtrec.model.stacking.tail_mask`), None when off;
    checks the setting."""
    k = cfg.model.stack_tail
    if not k:
        return None
    if k < 0:
        raise ConfigError(f"model.stack_tail: {k} is negative (0 = off)")
    if hybrid:
        raise ConfigError("model.stack_tail: hybrid item tokens project the priors' item embeddings, which stacking "
                          "replaces by another fit's at serving time; use prompt.item_tokens=text with it")
    tail = tail_mask(split, k)
    if not tail.any():
        raise ConfigError(f"model.stack_tail: no user of {split.dataset.name} has {k} training interactions beyond "
                          f"the {MIN_LEFT} the priors keep; nothing to train on")
    return tail


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
    """AdamW for `model` with the learning rates of `cfg.train` (see `build_optimizer`)."""
    t = cfg.train
    return build_optimizer(model, t.lr, t.head_lr, t.table_lr, t.weight_decay)


def train(cfg: Config, run_dir: str | Path, overwrite: bool = False, setup: Setup | None = None,
          resume: bool = False, files: dict[str, dict] | None = None) -> dict:
    """Fine-tune as configured and write the run folder. Returns the final metrics dict.

    Args:
        cfg: the configuration.
        run_dir: the run folder; an existing non-empty one raises unless `overwrite` or `resume`.
        overwrite: replace an existing run folder.
        setup: a prebuilt `build_setup(cfg)` (tests use it to inspect parameters before training).
        resume: continue from the run folder's latest checkpoint (model, optimizer, scheduler, RNG
            states and position in the data order), to the same result as an uninterrupted run.
        files: name -> JSON object, written into a new run folder before training starts (what
            `mtrec.update` needs to resume).

    Raises:
        RunFolderError: the run folder exists (without overwrite/resume), is not writable, lacks
            room for a checkpoint, or has nothing to resume.
        NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is kept.
    """
    run_dir = Path(run_dir)
    accelerator = Accelerator(cpu=_multi_process_cpu(), gradient_accumulation_steps=cfg.train.grad_accum,
                              mixed_precision=choose_mixed_precision(cfg.train.mixed_precision),
                              log_with="tensorboard" if cfg.train.tensorboard else None, project_dir=str(run_dir))
    if accelerator.is_main_process:
        if resume:
            if latest_checkpoint(run_dir) is None:
                raise RunFolderError(f"{run_dir}: nothing to resume (no complete checkpoint in {checkpoint_dir(run_dir)})")
        else:
            prepare_run_dir(run_dir, overwrite)
            for name, content in (files or {}).items():
                (run_dir / name).write_text(json.dumps(content, indent=1), encoding="utf-8")
        preflight_run_dir(run_dir, 1 << 20)  # writable before anything expensive; room is checked below
    accelerator.wait_for_everyone()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    else:
        _warn_if_starved_of_threads(accelerator)
    set_seed(cfg.run.seed)
    s = setup or build_setup(cfg, accelerator)
    if accelerator.is_main_process:
        preflight_run_dir(run_dir, checkpoint_bytes(s.model))
    if cfg.train.tensorboard:
        accelerator.init_trackers("tensorboard", config=_flat(cfg.to_dict()))
    result = _Loop(cfg, s, accelerator, run_dir).run(resume)
    if accelerator.is_main_process:
        save_setup(run_dir, s, accelerator.unwrap_model(s.model), result)
    # every rank leaves together: a gloo rank that tore its process group down while another still
    # held it aborted now and then ("terminate called without an active exception")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _warn_if_starved_of_threads(accelerator: Accelerator) -> None:
    """`accelerate launch` sets OMP_NUM_THREADS=1 unless given --num_cpu_threads_per_process, which
    makes a single CPU process several times slower than it need be: say so."""
    if accelerator.device.type != "cpu" or accelerator.num_processes > 1 or not accelerator.is_main_process:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() < cores:
        accelerator.print(f"note: training on the CPU with {torch.get_num_threads()} of {cores} cores "
                          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); for all of them pass "
                          f"`accelerate launch --num_cpu_threads_per_process {cores}` or set train.num_threads")


def _agreed_timeout(accelerator: Accelerator, elapsed: float, minutes: float) -> bool:
    """Whether the time budget is spent, decided by the main process and shared, so that every
    process stops at the same step (DDP would hang otherwise)."""
    flag = torch.tensor([float(elapsed > 60 * minutes)], device=accelerator.device)
    return bool(broadcast(flag, from_process=0).item())


def _multi_process_cpu() -> bool:
    """True when several processes were launched on a machine without CUDA.

    accelerate only sets up gloo DDP across CPU processes when asked for the CPU explicitly;
    without it each process silently trains alone (seen with accelerate 1.15 under both
    `accelerate launch --multi_gpu` and `torchrun`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > 1 and not torch.cuda.is_available()


class _Loop:
    """The training loop's state and steps. Everything in `self.state` is JSON and goes into
    checkpoints; parameters, optimizer and RNG go there through `mtrec.checkpoint`."""

    def __init__(self, cfg: Config, s: Setup, accelerator: Accelerator, run_dir: Path) -> None:
        t = self.t = cfg.train
        self.cfg, self.s, self.acc, self.run_dir = cfg, s, accelerator, run_dir
        self.phases = dict(s.phases)
        self.in_loop: dict[str, float] = {}  # evaluation seconds inside the training clock
        with timed(self.phases, "examples"):
            specs = train_specs(s.split, s.kinds, s.example_options, cfg.data.max_train_users, cfg.run.seed,
                                only=s.tail)
            self.valid = eval_specs(s.split, s.kinds, s.example_options, VALID, t.eval_users, cfg.run.seed)
        self.sizes = {k: len(v) for k, v in specs.items()}
        self.sampler = TaskSampler(specs, mixing_probs(self.sizes, t.mixing, t.temperature), s.batcher, t.batch_size,
                                   cfg.run.seed, t.length_buckets, t.fixed_batches,
                                   cfg.prompt.item_token_curriculum if cfg.prompt.item_tokens != "text" else 0)
        opt = make_optimizer(s.model, cfg)
        sched = get_cosine_schedule_with_warmup(opt, t.warmup_steps, t.max_steps)
        self.model, self.opt, self.sched = accelerator.prepare(s.model, opt, sched)
        if t.compile:
            # compiled here rather than through accelerate's dynamo plugin: that setting lives in a
            # process-wide AcceleratorState, which an earlier Accelerator in the process would fix
            self.model = torch.compile(self.model)
        self.weights = s.weights.to(accelerator.device)
        held = s.split.heldout_items  # cold-items protocol: the training softmax ranges over warm items only
        self.warm_items = None if held is None else torch.as_tensor(np.flatnonzero(~held), device=accelerator.device)
        self.log = _Log(accelerator, s)
        self.cache = None
        if s.bottom is not None and t.activation_cache and s.bottom.cut > 0:
            self.cache = ActivationCache(s.bottom, f"{accelerator.mixed_precision}\0{accelerator.device.type}",
                                         int(t.activation_cache_gb * 2**30),
                                         Path(t.activation_cache_dir) if t.activation_cache_dir else None)
        self.batches: Prefetcher | None = None  # set while training
        dev = accelerator.device
        self.running, self.running_n = torch.zeros(NUM_KINDS, device=dev), torch.zeros(NUM_KINDS, device=dev)
        # first step with a non-finite loss and its kind, kept on the device: no host sync per step
        self.bad_step, self.bad_kind = torch.tensor(-1, device=dev), torch.tensor(-1, device=dev)

    def run(self, resume: bool) -> dict:
        if resume:
            state, self.best_state = load_checkpoint(self.acc, latest_checkpoint(self.run_dir), self.model,
                                                     self.opt, self.sched)
            self.state = state
            self.acc.print(f"resumed from step {state['step']}")
        else:
            with timed(self.phases, "evaluation"):
                first = self.log.evaluate(self.model, self.valid, self.weights, step=0)
            self.state = {"step": 0, "history": [first], "best": first, "bad_evals": 0, "tokens": 0, "examples": 0,
                          "examples_per_kind": [0] * NUM_KINDS, "tokens_per_kind": [0] * NUM_KINDS, "elapsed": 0.0}
            self.best_state = trainable_state(self.acc.unwrap_model(self.model))
        self._train()
        return self._finish()

    def _train(self) -> None:
        t, st = self.t, self.state
        # the bar counts to max_steps; a wall-clock budget that will stop it first is named beside it
        desc = "training" + (f" (stops after {t.max_minutes:g} min)" if t.max_minutes is not None else "")
        bar = tqdm(range(st["step"] + 1, t.max_steps + 1), desc=desc, initial=st["step"], total=t.max_steps,
                   disable=not self.acc.is_main_process)
        began = time.perf_counter() - st["elapsed"]
        self.model.train()
        make = lambda draw: self.sampler.batch(draw, self.acc.process_index)  # noqa: E731
        self.batches = Prefetcher(make) if t.prefetch else None
        try:
            with self._stacked():
                self._steps(bar, began)
        finally:
            if self.batches is not None:
                self.batches.close()

    def _stacked(self):
        """model.stack_tail: the stacked priors while the steps run (`StackedPriors.training`)."""
        return self.s.stacking.training() if self.s.stacking is not None else nullcontext()

    def _served(self):
        """Inside `_stacked`: the served priors (for an evaluation or a checkpoint)."""
        return self.s.stacking.serving() if self.s.stacking is not None else nullcontext()

    def _steps(self, bar, began: float) -> None:
        t, st = self.t, self.state
        for step in bar:
            for micro in range(t.grad_accum):
                self._micro_step(step, (step - 1) * t.grad_accum + micro)
            st["step"], st["elapsed"] = step, time.perf_counter() - began
            if step % t.log_every == 0 or step == t.max_steps:
                self._check_finite()
                self.log.train(bar, step, self.running / self.running_n.clamp(min=1), self.running_n,
                               self.sched.get_last_lr()[0])
                self.running.zero_()
                self.running_n.zero_()
            out_of_time = (t.max_minutes is not None and step % t.log_every == 0
                           and _agreed_timeout(self.acc, st["elapsed"], t.max_minutes))
            stop = False
            if (t.eval_every and step % t.eval_every == 0) or step == t.max_steps or out_of_time:
                stop = self._evaluate(step)
            if t.checkpoint_every and step % t.checkpoint_every == 0 and step < t.max_steps:
                self._check_finite()
                with self._served():
                    save_checkpoint(self.acc, self.run_dir, step, self.model, self.opt, self.sched, st,
                                    self.best_state, t.keep_checkpoints)
            if out_of_time:
                self.acc.print(f"stopping at step {step}: train.max_minutes={t.max_minutes} reached")
            if stop or out_of_time:
                break

    def _micro_step(self, step: int, draw: int) -> None:
        batch = self.batches.get(draw) if self.batches is not None else self.sampler.batch(draw, self.acc.process_index)
        self.state["tokens"] += int(batch["attention_mask"].sum())
        self.state["examples"] += len(batch["kind"])
        per_kind = np.bincount(batch["kind"].numpy(), minlength=NUM_KINDS)  # a CPU tensor here: no device sync
        self.state["examples_per_kind"] = [a + int(b) for a, b in zip(self.state["examples_per_kind"], per_kind)]
        lengths = np.bincount(batch["kind"].numpy(), weights=batch["attention_mask"].sum(1).numpy(), minlength=NUM_KINDS)
        self.state["tokens_per_kind"] = [a + int(b) for a, b in
                                         zip(self.state.get("tokens_per_kind", [0] * NUM_KINDS), lengths)]
        cached = self.cache.around(batch["input_ids"], batch["attention_mask"], self.acc.device) if self.cache else nullcontext()
        batch = {n: (v.to(self.acc.device, non_blocking=True) if torch.is_tensor(v) else v) for n, v in batch.items()}
        with self.acc.accumulate(self.model), cached:
            loss, per_kind, counts = _step_loss(self.model, batch, self.weights, self.cfg, self.warm_items)
            self.acc.backward(loss)
            if self.acc.sync_gradients and self.t.grad_clip > 0:
                self.acc.clip_grad_norm_(self.model.parameters(), self.t.grad_clip)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        bad = ~torch.isfinite(per_kind) & (counts > 0)
        first = bad.any() & (self.bad_step < 0)
        self.bad_step = torch.where(first, torch.tensor(step, device=self.bad_step.device), self.bad_step)
        self.bad_kind = torch.where(first, bad.int().argmax(), self.bad_kind)
        self.running += per_kind * counts
        self.running_n += counts

    def _check_finite(self) -> None:
        """Raise if any step so far had a non-finite loss (one host sync, at log/checkpoint time)."""
        step = int(self.bad_step)
        if step >= 0:
            kind = sorted(KIND_IDS, key=KIND_IDS.get)[int(self.bad_kind)]
            last = latest_checkpoint(self.run_dir)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
            raise NonFiniteLossError(f"non-finite loss at step {step} (task {KIND_TASK[kind]}, prompt kind {kind}); "
                                     f"training stopped; {kept}")

    def _evaluate(self, step: int) -> bool:
        """Evaluate, keep the best weights; True when early stopping says stop."""
        st, t = self.state, self.t
        if self.batches is not None:
            self.batches.wait()  # the prefetch thread and evaluation share the tokenizer
        with timed(self.in_loop, "evaluation"), timed(self.phases, "evaluation"), self._served():
            st["history"].append(self.log.evaluate(self.model, self.valid, self.weights, step))
            if _better(st["history"][-1], st["best"], t.early_stopping_metric):
                st["best"], st["bad_evals"] = st["history"][-1], 0
                self.best_state = trainable_state(self.acc.unwrap_model(self.model))
                return False
        st["bad_evals"] += 1
        if t.patience and st["bad_evals"] >= t.patience:
            self.acc.print(f"early stopping at step {step}: {t.early_stopping_metric} did not improve "
                           f"for {st['bad_evals']} evaluations")
            return True
        return False

    def _finish(self) -> dict:
        st, t, model = self.state, self.t, self.model
        if t.keep == "best":
            load_trainable_state(self.acc.unwrap_model(model), self.best_state)
        heads = heads_of(self.acc.unwrap_model(model))
        blend = None
        if t.rank_blend and "recommendation" in self.s.kinds:
            users = 0 if not t.eval_users else max(t.eval_users, BLEND_USERS)
            specs = eval_specs(self.s.split, ["recommendation"], self.s.example_options, VALID, users, self.cfg.run.seed)
            with timed(self.phases, "evaluation"):
                blend = tune_rank_blend(model, heads, self.s.batcher, specs, self.s.split, VALID, self.acc,
                                        t.eval_batch_size, fitted=self.s.fitted_ranking)
            if blend is not None:
                iv = blend["against_prior"]
                why = ("no setting beats the priors alone" if iv is None else
                       f"best {blend['best']} against the priors alone {iv['diff']:+.4f} "
                       f"[{iv['low']:+.4f}, {iv['high']:+.4f}]")
                self.acc.print(f"ranking blend (validation NDCG@10, {blend['rows']} rows): {blend['priors']} "
                               f"priors, backbone term x{blend['text']:g}, sequential prior weight "
                               f"{blend['sequence']} ({why})")
        like_text = None
        if heads.has_like_text and "like" in self.s.kinds:
            users = 0 if not t.eval_users else max(t.eval_users, BLEND_USERS)
            specs = eval_specs(self.s.split, ["like"], self.s.example_options, VALID, users, self.cfg.run.seed)
            with timed(self.phases, "evaluation"):
                like_text = fit_like_text(model, heads, self.s.batcher, specs, self.s.split, VALID, self.acc,
                                          t.eval_batch_size)
            if like_text is not None:
                f = like_text["fitted"]
                self.acc.print(f"like text term (validation, {like_text['rows']} rows): {f['a']:g} * prior + "
                               f"{f['c']:g} * head + {f['s']:g} * text similarity + {f['b']:g}; AUC "
                               f"{like_text['auc']['no text']:.4f} without the term, "
                               f"{like_text['auc']['fitted']:.4f} fitted")
        final = None
        if t.final_eval_users is not None and t.final_eval_users != t.eval_users:
            kinds = [k for k in self.s.kinds if k in (t.final_eval_kinds or self.s.kinds)]
            specs = eval_specs(self.s.split, kinds, self.s.example_options, VALID, t.final_eval_users, self.cfg.run.seed)
            with timed(self.phases, "evaluation"):
                final = self.log.evaluate(model, specs, self.weights, step=st["best"]["step"],
                                          label="final validation (best weights)")
        seconds = st["elapsed"]
        return {"best": st["best"], "final": final, "rank_blend": blend, "like_text": like_text,
                "history": st["history"], "steps": st["step"],
                "seconds": round(seconds, 1), "examples_per_process": st["examples"],
                "examples_per_kind": {KIND_NAMES[k]: n for k, n in enumerate(st["examples_per_kind"]) if n},
                # per prompt kind: examples per second of the training clock and mean prompt length (tokens)
                "kind_examples_per_second": {KIND_NAMES[k]: round(n / max(seconds, 1e-9), 3)
                                                 for k, n in enumerate(st["examples_per_kind"]) if n},
                "prompt_tokens_per_kind": {KIND_NAMES[k]: round(tok / n, 1) for k, (n, tok) in
                                           enumerate(zip(st["examples_per_kind"], st.get("tokens_per_kind", [])))
                                           if n},
                "tokens": st["tokens"], "tokens_per_second": round(st["tokens"] / max(seconds, 1e-9), 1), "train_sizes": self.sizes,
                "parameters": count_parameters(self.acc.unwrap_model(model)), "mixed_precision": self.acc.mixed_precision,
                "num_processes": self.acc.num_processes, "compiled": is_compiled_module(model),
                "ranks": _rank_report(self.acc, model, st["step"]),
                **({"activation_cache": dict(self.cache.stats)} if self.cache else {}),
                # seconds per phase of this process (training: the steps and checkpoints, evaluations
                # apart; a resumed run's set-up phases are its own)
                "phases": {**self.phases, "training": round(seconds - self.in_loop.get("evaluation", 0.0), 1)}}


def _rank_report(accelerator: Accelerator, model, step: int) -> dict:
    """Steps taken and a checksum of the trainable parameters on every process: with DDP they must
    agree, and a mismatch means the replicas diverged."""
    total = sum(p.detach().double().sum() for p in model.parameters() if p.requires_grad)
    mine = torch.tensor([[float(step), float(total)]], dtype=torch.float64, device=accelerator.device)
    every = accelerator.gather(mine).cpu().tolist()
    return {"steps": [int(r[0]) for r in every], "param_checksums": [r[1] for r in every]}


def _step_loss(model, batch, weights, cfg: Config, pool: torch.Tensor | None = None):
    """The step's loss: the recommendation softmax over the full catalog, or over a sampled subset
    (large catalogs), or over `pool` alone (sorted item indices: the cold-items protocol's warm
    items, so that no held-out item is ever a training negative)."""
    t = cfg.train
    num_items = model_num_items(model)
    sampled = t.rec_loss == "sampled" or (t.rec_loss == "auto" and (num_items or 0) > FULL_SOFTMAX_ITEMS)
    if sampled or pool is not None:
        targets = batch["item"].clamp(min=0)  # -1 on rows that name no item (friends)
        if not sampled:
            subset = pool
        else:
            draw = torch.randint(0, num_items if pool is None else len(pool), (t.num_negatives,), device=targets.device)
            subset = torch.unique(torch.cat([targets, draw if pool is None else pool[draw]]))
        if pool is not None:  # rows naming a held-out item (none in training) would pick a wrong label
            targets = torch.where(torch.isin(targets, subset), targets, subset[0])
        labels = torch.searchsorted(subset, targets)
        out = model(batch["input_ids"], batch["attention_mask"], subset, batch["item"], batch["user"], **extra_inputs(batch))
        return multitask_loss(out, batch, weights, t.loss_weighting == "uncertainty", labels)
    out = model(batch["input_ids"], batch["attention_mask"], None, batch["item"], batch["user"], **extra_inputs(batch))
    return multitask_loss(out, batch, weights, t.loss_weighting == "uncertainty")


def model_num_items(model) -> int:
    for name, p in model.named_parameters():
        if name.endswith("item_bias") and p.requires_grad:
            return p.shape[0]
    raise ValueError("model has no item table")


def _better(new: dict, old: dict, metric: str) -> bool:
    name = metric.removeprefix("valid/")
    if new.get("examples") == 0:  # nothing to validate on: the latest weights are the best known
        return True
    if name not in new:
        raise KeyError(f"train.early_stopping_metric: {metric!r} is not among the validation metrics {sorted(new)}")
    lower = name.endswith("loss") or name.endswith("rmse") or name.endswith("mae")
    return new[name] < old[name] if lower else new[name] > old[name]


class _Log:
    """Progress bar, TensorBoard and evaluation printing, on the main process only."""

    def __init__(self, accelerator: Accelerator, s: Setup) -> None:
        self.acc, self.s = accelerator, s

    def evaluate(self, model, valid, weights, step: int, label: str | None = None) -> dict:
        if len(valid) == 0:  # an update whose new data was every validation interaction
            self.acc.print(f"{label or 'step ' + str(step)}: no validation rows; the latest weights are kept")
            return {"step": step, "examples": 0, "seconds": 0.0}
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


def save_setup(run_dir: Path, s: Setup, model, result: dict) -> None:
    """Write the run folder of a trained `Setup` (see `mtrec.run.save_run`)."""
    save_run(run_dir, model=model, tokenizer=s.tokenizer, cfg=s.cfg, ref=s.ref, split=s.split,
             metrics=_jsonable(result), token_ids=s.token_ids, pooling=s.model.base_model.model.pooling)


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
