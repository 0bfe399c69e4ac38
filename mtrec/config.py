"""Configuration: one dataclass per section, loaded from YAML with dotted ``key=value`` overrides.

Every field has a one-line help (the ``help`` metadata). Unknown keys, values of the wrong type and
contradictions raise `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtrec.kinds import KIND_NAMES, TASKS


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key."""


def knob(default, help: str):
    """A config field with a help string (lists and dicts get a factory)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    name: str = knob("mtrec", "run name; the run folder is runs/<name> unless --run-dir is given")
    seed: int = knob(0, "seed for data order, sampling and initialisation")
    output_root: str = knob("runs", "folder that holds run folders")


@dataclass
class DataConfig:
    dataset: str = knob("movielens-100k", "data set name (python -m mtrec.data describe) or local:<folder>")
    data_dir: str | None = knob(None, "data folder; default $MTREC_DATA_DIR")
    download: bool = knob(False, "download official archives when the data folder lacks them")
    split: str = knob("leave_one_out", "leave_one_out, ratio, cold_items (a seeded 20% of items held out) or "
                                        "short_history (a seeded 30% of users keep 3-5 training interactions)")
    split_seed: int = knob(0, "seed of the per-user random order for data sets without timestamps")
    like_threshold: float = knob(4.0, "explicit data: a rating >= this counts as 'like'")
    negatives_per_positive: int = knob(1, "implicit data: sampled unobserved items per observed one (preference)")
    max_history: int = knob(50, "at most this many own-history items before the token budget cut")
    max_social: int = knob(20, "at most this many friends' items before the token budget cut")
    max_train_users: int | None = knob(None, "train on a seeded subset of users (quick runs); null = all")
    friend_holdout: bool = knob(True, "with the friends task: hold out a validation and a test friend per user with "
                                ">= 3 (mtrec.data.friends); false = train on every edge (nothing to evaluate)")
    options: dict = knob({}, "extra loader options (e.g. synthetic sizes)")


@dataclass
class PromptConfig:
    prompts_dir: str | None = knob(None, "template folder; default the repository's prompts/")
    max_length: int = knob(256, "hard token budget per prompt, instruction tokens included")
    max_title_tokens: int = knob(24, "cap on each title")
    max_text_tokens: int = knob(48, "cap on the target item's text")
    max_categories: int = knob(5, "at most this many categories per item in a prompt")
    social: bool = knob(True, "show friends' / trusted users' recent items in prompts")
    social_share: float = knob(0.3, "share of spare budget held for social context while history is cut")
    item_tokens: str = knob("text", "how history and friends' items enter the prompt: text (their titles), hybrid "
                            "(one token each, whose embedding is a trained projection of the item's collaborative "
                            "embedding: the sequential prior's or the ranking factors') or both (that token, then "
                            "the title); an item without an embedding keeps its title")
    item_token_curriculum: int = knob(0, "with hybrid item tokens: over the first N training steps, the share of "
                                      "training prompts written with item tokens rises from 0 to 1 (the others as "
                                      "text; LLaRA's curriculum); 0 = item tokens from the start")


@dataclass
class ModelConfig:
    backbone: str = knob("bundled:smollm2-135m", "bundled:<name>, a local folder, or a hub id")
    pooling: str = knob("auto", "auto, last, mean, cls or pooler")
    random_init: bool = knob(False, "same architecture with random weights (ablation)")
    lora_r: int = knob(8, "LoRA rank")
    lora_alpha: int = knob(16, "LoRA alpha")
    lora_dropout: float = knob(0.05, "LoRA dropout")
    lora_targets: list | str = knob("auto", "auto (attention and MLP projections), attention (the attention "
                                    "projections only), or a list of module names")
    item_dim: int | None = knob(None, "item table width; null = backbone hidden size")
    item_init: str = knob("backbone", "backbone (encode item text) or random")
    item_noise: float = knob(0.02, "std of a per-item random part added to the item table (tells apart items with equal text)")
    encode_batch_size: int = knob(64, "batch size when encoding item texts")
    collab_dim: int = knob(32, "width of the collaborative user/item factors fitted on the training split "
                           "before fine-tuning (CoLLM/E4SRec-style ID knowledge); 0 = prompt only")
    friend_dim: int | None = knob(None, "width of the friend head's user factors (the user-embedding factor model "
                                  "fitted on the training graph); null = collab_dim")
    ranking_prior: str = knob("factors", "what the recommendation head starts from: factors (popularity bias + "
                              "collaborative factors), sequence (a SASRec-shaped network fitted on the training split, "
                              "reading the history in order) or both (summed)")
    sequence_len: int = knob(50, "history items the sequential prior reads (model.ranking_prior sequence or both)")
    sequence_init: str = knob("random", "how the sequential prior's item table starts before its fit: random, or text "
                              "(the top principal components of the backbone's encodings of the items' texts)")
    sequence_seeds: int = knob(1, "sequential prior networks, fitted with seeds run.seed, run.seed + 1, ...: the prior "
                               "scores their mean (a seed ensemble; each fit cached); 1 = one network")
    like_text: int = knob(0, "like head's text term: the like logit becomes a * prior + c * head + s * t + b, t the "
                          "mean cosine of the backbone's encodings of the newest k history items' texts with the named "
                          "item's (frozen); (a, c, s, b) fitted on validation after training "
                          "(mtrec.model.blend.fit_like_text); 0 = off")
    stack_tail: int = knob(0, "stacked priors: fit the priors without each user's newest k training interactions, "
                           "train only on rows of those (where the priors are out-of-sample, as on validation), "
                           "serve with the priors fitted on all (mtrec.model.stacking); 0 = off")
    stack_ranking: bool = knob(False, "with model.stack_tail: stack the recommendation head's priors too (popularity "
                               "bias, ranking factors, the sequential prior); off: they are the fits on all "
                               "training data in training as in serving")
    train_top_layers: int | None = knob(None, "train only the top k backbone layers: LoRA there alone, the layers "
                                        "below and the instruction-token rows frozen (backward stops at the cut; "
                                        "with train.activation_cache their output is computed once per batch); "
                                        "null = every layer")


@dataclass
class TrainConfig:
    tasks: list = knob(["rating", "preference", "recommendation"], "tasks trained jointly")
    mixing: str = knob("temperature", "proportional or temperature task sampling")
    temperature: float = knob(2.0, "temperature T: task probability ~ n_task^(1/T)")
    loss_weighting: str = knob("fixed", "fixed or uncertainty (learned per-task weights)")
    task_weights: dict = knob({}, "fixed weights per prompt kind (default 1)")
    rec_loss: str = knob("auto", "full or sampled softmax for recommendation; auto: sampled above 20,000 items")
    num_negatives: int = knob(256, "sampled softmax: negatives per batch")
    batch_size: int = knob(8, "examples per step per process")
    grad_accum: int = knob(1, "gradient accumulation steps")
    max_steps: int = knob(100, "optimizer steps")
    lr: float = knob(5e-4, "learning rate of LoRA and token rows")
    head_lr: float = knob(2e-3, "learning rate of the task heads")
    table_lr: float = knob(1e-4, "learning rate of per-item and per-user parameters (item table, biases, offsets)")
    weight_decay: float = knob(0.0, "AdamW weight decay")
    warmup_steps: int = knob(10, "linear warm-up steps")
    grad_clip: float = knob(1.0, "max gradient norm (0 = off)")
    mixed_precision: str = knob("auto", "auto, no, bf16 or fp16")
    eval_every: int = knob(50, "evaluate every N steps (0 = only at the end)")
    eval_users: int = knob(200, "validation users evaluated during training (seeded subset; 0 = all)")
    final_eval_users: int | None = knob(None, "users in the final validation pass with the best weights (0 = all; null = eval_users)")
    max_minutes: float | None = knob(None, "stop training after this many minutes of steps (null = no limit)")
    final_eval_kinds: list | None = knob(None, "prompt kinds in the final validation pass (null = all trained kinds)")
    eval_batch_size: int = knob(32, "batch size in evaluation")
    early_stopping_metric: str = knob("valid/loss", "metric name for early stopping and best model")
    patience: int = knob(0, "evaluations without improvement before stopping (0 = off)")
    keep: str = knob("best", "the weights the run keeps: best (by train.early_stopping_metric) or last")
    rank_blend: bool = knob(True, "after training, choose the backbone's share of the ranking score (x0, 0.25, 0.5, "
                            "1), the sequential prior's weight (trained or 1) and the ranking priors (trained or "
                            "as fitted) by validation NDCG@10, keeping the priors as fitted unless a setting beats "
                            "them by a paired interval (mtrec.model.blend)")
    log_every: int = knob(10, "log (and check the loss is finite) every N steps")
    checkpoint_every: int = knob(0, "write a resumable checkpoint every N steps (0 = none)")
    keep_checkpoints: int = knob(2, "keep the last K checkpoints")
    tensorboard: bool = knob(True, "write TensorBoard logs into the run folder")
    num_threads: int | None = knob(None, "torch CPU threads; null = torch default")
    length_buckets: int = knob(16, "draw this many batches at once and group their prompts by length "
                               "(less padding); 0 or 1 = batches as drawn")
    compile: bool = knob(False, "torch.compile (inductor) the model after accelerate prepares it; the first steps "
                         "compile (minutes on a CPU)")
    prefetch: bool = knob(True, "build the next batch in a background thread while the model steps")
    fixed_batches: int = knob(0, "train over this many fixed, seeded batches, repeated each epoch in a new seeded "
                              "order (what lets train.activation_cache pay); 0 = a fresh draw every step")
    activation_cache: bool = knob(True, "with model.train_top_layers: keep the frozen layers' output per batch on disk "
                                  "($MTREC_CACHE_DIR/activations, keyed by content, memory-mapped) and reuse it")
    activation_cache_dir: str | None = knob(None, "folder of the activation cache; null = $MTREC_CACHE_DIR/activations")
    activation_cache_gb: float = knob(4.0, "size bound of the activation cache folder, GB (batches past it are "
                                      "recomputed, not stored)")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "data.split": ("leave_one_out", "ratio", "cold_items", "short_history"),
    "model.pooling": ("auto", "last", "mean", "cls", "pooler"),
    "model.item_init": ("backbone", "random"),
    "model.sequence_init": ("random", "text"),
    "train.mixing": ("proportional", "temperature"),
    "train.loss_weighting": ("fixed", "uncertainty"),
    "train.rec_loss": ("auto", "full", "sampled"),
    "train.mixed_precision": ("auto", "no", "bf16", "fp16"),
    "train.keep": ("best", "last"),
}


def check(cfg: Config) -> None:
    """Reject contradictions and out-of-range values, naming the key."""
    for key, allowed in CHOICES.items():
        sec, name = key.split(".")
        value = getattr(getattr(cfg, sec), name)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
    t = cfg.train
    bad = [x for x in t.tasks if x not in TASKS]
    if bad or not t.tasks:
        raise ConfigError(f"train.tasks: {t.tasks!r}; expected a non-empty list of {', '.join(TASKS)}")
    for k in t.task_weights:
        if k not in KIND_NAMES:
            raise ConfigError(f"train.task_weights: unknown kind {k!r}; expected some of {list(KIND_NAMES)}")
    positive = {"train.batch_size": t.batch_size, "train.grad_accum": t.grad_accum, "train.max_steps": t.max_steps,
                "prompt.max_length": cfg.prompt.max_length, "model.lora_r": cfg.model.lora_r,
                "train.eval_batch_size": t.eval_batch_size, "train.temperature": t.temperature}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    if t.warmup_steps >= t.max_steps and t.max_steps > 1:
        raise ConfigError(f"train.warmup_steps ({t.warmup_steps}) must be below train.max_steps ({t.max_steps})")
    for k in t.final_eval_kinds or []:
        if k not in KIND_NAMES:
            raise ConfigError(f"train.final_eval_kinds: unknown kind {k!r}; expected some of {list(KIND_NAMES)}")
    if t.patience and not t.eval_every:
        raise ConfigError("train.patience needs train.eval_every > 0 (early stopping evaluates during training)")
    targets = cfg.model.lora_targets
    if isinstance(targets, str) and targets not in ("auto", "attention"):
        raise ConfigError(f"model.lora_targets: {targets!r}; expected auto, attention, or a list of module names "
                          f"such as [q_proj, v_proj]")
    if t.length_buckets < 0:
        raise ConfigError(f"train.length_buckets: must be >= 0, got {t.length_buckets}")
    if cfg.model.friend_dim is not None and cfg.model.friend_dim < 0:
        raise ConfigError(f"model.friend_dim: must be >= 0 or null (= model.collab_dim), got {cfg.model.friend_dim}")
    if cfg.model.collab_dim < 0:
        raise ConfigError(f"model.collab_dim: must be >= 0 (0 = no collaborative factors), got {cfg.model.collab_dim}")
    if cfg.model.like_text < 0:
        raise ConfigError(f"model.like_text: must be >= 0 (history items the like text term reads; 0 = off), "
                          f"got {cfg.model.like_text}")
    if cfg.model.sequence_init == "text" and cfg.model.ranking_prior == "factors":
        raise ConfigError("model.sequence_init: text starts the sequential prior, which model.ranking_prior: factors "
                          "does not use (set model.ranking_prior to sequence or both)")
    if cfg.model.sequence_seeds < 1:
        raise ConfigError(f"model.sequence_seeds: must be >= 1 (sequential prior networks), got {cfg.model.sequence_seeds}")
    if cfg.model.sequence_seeds > 1 and cfg.model.ranking_prior == "factors":
        raise ConfigError("model.sequence_seeds: more than one sequential prior network, which model.ranking_prior: "
                          "factors does not use (set model.ranking_prior to sequence or both)")
    if cfg.model.train_top_layers is not None and cfg.model.train_top_layers < 1:
        raise ConfigError(f"model.train_top_layers: must be >= 1 or null (= every layer), got {cfg.model.train_top_layers}")
    if t.fixed_batches < 0:
        raise ConfigError(f"train.fixed_batches: must be >= 0 (0 = a fresh draw every step), got {t.fixed_batches}")
    if t.activation_cache_gb < 0:
        raise ConfigError(f"train.activation_cache_gb: must be >= 0, got {t.activation_cache_gb}")
    if not 0 <= cfg.prompt.social_share < 1:
        raise ConfigError(f"prompt.social_share: must be in [0, 1), got {cfg.prompt.social_share}")


# ---- loading --------------------------------------------------------------------------------


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against a field's resolved type hint; ints are accepted for floats."""
    options = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{key}: may not be null")
    for opt in options:
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if opt is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if opt is type(None):
            continue
        if opt is int and isinstance(value, bool):
            continue
        if isinstance(value, opt):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{key}: expected {names}, got {type(value).__name__} {value!r}")


def from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from nested dicts; unknown sections or keys raise naming them."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    kwargs = {}
    for sec, values in raw.items():
        if sec not in sections:
            raise ConfigError(f"{source}: unknown section {sec!r}{_did_you_mean(sec, sections)}; "
                              f"expected {sorted(sections)}")
        cls = sections[sec].default_factory
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        if not isinstance(values or {}, dict):
            raise ConfigError(f"{source}: section {sec!r} must be a mapping")
        args = {}
        for key, value in (values or {}).items():
            if key not in fields:
                raise ConfigError(f"{source}: unknown key {sec}.{key}{_did_you_mean(key, fields, sec + '.')}; "
                                  f"known: {', '.join(sorted(fields))}")
            args[key] = _convert(f"{sec}.{key}", value, hints[key])
        kwargs[sec] = cls(**args)
    return Config(**kwargs)


def _did_you_mean(name: str, choices, prefix: str = "") -> str:
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested dict, in order."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {type(raw).__name__}")
    # sections that are not mappings are passed through for from_dict to reject with their name
    out = {k: (dict(v or {}) if isinstance(v, dict) or v is None else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value (e.g. train.max_steps=10)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override {item!r}: expected section.key=value (e.g. train.lr=1e-4)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: cannot parse value {text!r}: {e}") from None
        section = out.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"override {key}: section {parts[0]!r} is not a mapping in the config file")
        section[parts[1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a YAML config (or the defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return from_dict(apply_overrides(raw, list(overrides)), str(path or "config"))


def help_text() -> str:
    """Every key with its default and help, for --help."""
    lines = []
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(sec.default_factory):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {sec.name}.{f.name} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)
