"""Prompt templates: YAML files with Jinja2 bodies, validated against each task's example fields.

A file ``prompts/<task>.yaml`` holds ``task``, ``instruction_token``, optional ``macros`` (Jinja
prepended to every body), and ``kinds: {<kind>: {train: [...], heldout: [...]}}``, each entry
``{id, text}``. Training uses only ``train`` paraphrases; ``heldout`` ones are for "unseen prompt"
evaluation.

Templates run in Jinja's sandbox with StrictUndefined. Field *values* (titles, user text) are data:
Jinja never evaluates text inside a value, so a title like ``{{ 7*7 }}`` is printed literally.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2
import yaml
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from mtrec.paths import PROJECT_ROOT
from mtrec.kinds import KINDS, TASKS
from mtrec.tasks import template_fields


def _default_prompts_dir() -> Path:
    """Where the shipped templates are: ``mtrec/prompts/default/`` inside an installed wheel (setup.py
    copies the repository's ``prompts/`` there at build time), else ``prompts/`` of the checkout
    (an editable install, or running from the source tree)."""
    packaged = Path(str(resources.files("mtrec.prompts") / "default"))
    return packaged if packaged.is_dir() else PROJECT_ROOT / "prompts"


DEFAULT_PROMPTS_DIR = _default_prompts_dir()
MIN_TRAIN, MIN_HELDOUT = 5, 2
ITEM_FIELDS = {"title", "text", "categories"}
# A template of these kinds must name the target item, or the head has nothing to score.
REQUIRED_FIELDS = {"rating": {"item_title"}, "like": {"item_title"}}


class TemplateError(ValueError):
    """A template file that cannot be used; the message names the file, paraphrase and field."""


def _num(x) -> str:
    """4.0 -> '4', 3.5 -> '3.5', None -> '?'."""
    if x is None:
        return "?"
    x = float(x)
    return str(int(x)) if x.is_integer() else f"{x:.4g}"


def _attrs(attributes) -> str:
    return ", ".join(f"{k} {v}" for k, v in attributes.items() if v not in ("", None))


def make_environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
    env.filters["num"] = _num
    env.filters["attrs"] = _attrs
    return env


@dataclass(frozen=True)
class Template:
    """One paraphrase: its id, kind, task, whether it is held out, and the compiled body."""

    id: str
    task: str
    kind: str
    heldout: bool
    source: str
    compiled: jinja2.Template

    def render(self, example) -> str:
        fields = {name: getattr(example, name) for name in template_fields(self.kind)}
        return self.compiled.render(**fields).strip()


@dataclass(frozen=True)
class TaskPrompts:
    """The templates of one task file."""

    task: str
    instruction_token: str
    path: Path
    templates: dict[str, dict[str, list[Template]]]  # kind -> {"train": [...], "heldout": [...]}
    item_encoding: jinja2.Template | None = None  # recommendation only: how an item is written to be encoded

    def render_item(self, title: str, text: str, categories: tuple[str, ...]) -> str:
        if self.item_encoding is None:
            raise TemplateError(f"{self.path}: no item_encoding template")
        return self.item_encoding.render(title=title, text=text, categories=categories).strip()

    def train(self, kind: str) -> list[Template]:
        return self.templates[kind]["train"]

    def heldout(self, kind: str) -> list[Template]:
        return self.templates[kind]["heldout"]


def load_task_prompts(path: str | Path, env: SandboxedEnvironment | None = None) -> TaskPrompts:
    """Load and validate one task's template file.

    Raises:
        TemplateError: malformed YAML or structure, a Jinja syntax error, a placeholder that the
            task's examples do not provide, a required field missing, or too few paraphrases.
    """
    path = Path(path)
    env = env or make_environment()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise TemplateError(f"{path}: cannot read template file: {e}") from None
    if not isinstance(doc, dict):
        raise TemplateError(f"{path}: expected a mapping with keys task, instruction_token, kinds")
    for key in ("task", "instruction_token", "kinds"):
        if key not in doc:
            raise TemplateError(f"{path}: missing key {key!r}")
    unknown = set(doc) - {"task", "instruction_token", "kinds", "macros", "item_encoding"}
    if unknown:
        raise TemplateError(f"{path}: unknown key(s) {sorted(unknown)}")
    task = doc["task"]
    if task not in TASKS:
        raise TemplateError(f"{path}: task {task!r} is not one of {TASKS}")
    kinds = doc["kinds"]
    if not isinstance(kinds, dict) or set(kinds) != set(KINDS[task]):
        raise TemplateError(f"{path}: task {task!r} needs kinds {list(KINDS[task])}, found {list(kinds or [])}")
    macros = doc.get("macros") or ""
    templates = {kind: _load_kind(path, env, task, kind, kinds[kind], macros) for kind in KINDS[task]}
    item_encoding = None
    if doc.get("item_encoding"):
        src = str(doc["item_encoding"])
        try:
            used = meta.find_undeclared_variables(env.parse(src))
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"{path}: item_encoding: Jinja syntax error: {e.message}") from None
        if used - ITEM_FIELDS:
            raise TemplateError(f"{path}: item_encoding uses {sorted(used - ITEM_FIELDS)}; allowed: {sorted(ITEM_FIELDS)}")
        item_encoding = env.from_string(src)
    elif task == "recommendation":
        raise TemplateError(f"{path}: missing key 'item_encoding' (how an item is written to initialise the item table)")
    return TaskPrompts(task, str(doc["instruction_token"]), path, templates, item_encoding)


def _load_kind(path: Path, env, task: str, kind: str, spec, macros: str) -> dict[str, list[Template]]:
    if not isinstance(spec, dict) or set(spec) != {"train", "heldout"}:
        raise TemplateError(f"{path}: kind {kind!r} needs exactly the lists 'train' and 'heldout'")
    out = {}
    for group, minimum in (("train", MIN_TRAIN), ("heldout", MIN_HELDOUT)):
        entries = spec[group] or []
        if len(entries) < minimum:
            raise TemplateError(f"{path}: kind {kind!r} has {len(entries)} {group} paraphrases; at least {minimum} needed")
        out[group] = [_compile(path, env, task, kind, e, group == "heldout", macros) for e in entries]
    ids = [t.id for g in out.values() for t in g]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise TemplateError(f"{path}: duplicate paraphrase id(s) {sorted(dupes)}")
    return out


def _compile(path: Path, env, task: str, kind: str, entry, heldout: bool, macros: str) -> Template:
    if not isinstance(entry, dict) or set(entry) != {"id", "text"}:
        raise TemplateError(f"{path}: kind {kind!r}: each paraphrase needs exactly 'id' and 'text', got {entry!r:.80}")
    tid, text = str(entry["id"]), str(entry["text"])
    source = f"{macros}\n{text}" if macros else text
    try:
        env.parse(source)  # syntax check of the whole body, macros included
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{path}: paraphrase {tid!r}: Jinja syntax error: {e.message} (line {e.lineno})") from None
    allowed = template_fields(kind)
    used = _fields_used(env, macros, text)
    for name in sorted(used - allowed):
        raise TemplateError(
            f"{path}: paraphrase {tid!r} uses field {name!r}, which {kind!r} examples do not provide; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    for name in sorted(REQUIRED_FIELDS.get(kind, set()) - used):
        raise TemplateError(f"{path}: paraphrase {tid!r} must use field {name!r} (the target of a {kind!r} prompt)")
    return Template(tid, task, kind, heldout, text, env.from_string(source))


def _fields_used(env, macros: str, text: str) -> set[str]:
    """Fields a body reads, directly or through the macros it calls (transitively)."""
    macro_defs = {m.name: m for m in env.parse(macros).find_all(jinja2.nodes.Macro)} if macros else {}
    used = set(meta.find_undeclared_variables(env.parse(text)))
    todo = [n for n in used if n in macro_defs]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        m = macro_defs[name]
        local = {a.name for a in m.args}
        names = {n.name for n in m.find_all(jinja2.nodes.Name) if n.ctx == "load"} - local
        # loop variables (for h in history) are stores inside the macro, not fields
        names -= {n.name for n in m.find_all(jinja2.nodes.Name) if n.ctx in ("store", "param")}
        used |= names
        todo += [n for n in names if n in macro_defs]
    return used - set(macro_defs) - {"loop", "caller", "varargs", "kwargs"}


ITEM_TASKS = TASKS[:3]  # every run has these; ``friends`` only where it is trained


def prompt_tasks(train_tasks) -> tuple[str, ...]:
    """The tasks whose templates (and instruction tokens) a run with `train_tasks` carries: the item
    tasks always (one backbone serves them all), ``friends`` only when trained, so a run without it
    has exactly the instruction tokens of runs made before the task existed."""
    return ITEM_TASKS + (("friends",) if "friends" in train_tasks else ())


def load_prompts(prompts_dir: str | Path | None = None, tasks=ITEM_TASKS) -> dict[str, TaskPrompts]:
    """Load each of `tasks`' files from `prompts_dir` (default: the shipped templates,
    `DEFAULT_PROMPTS_DIR`); see `prompt_tasks`."""
    d = Path(prompts_dir) if prompts_dir else DEFAULT_PROMPTS_DIR
    env = make_environment()
    out = {}
    for task in tasks:
        path = d / f"{task}.yaml"
        if not path.exists():
            raise TemplateError(f"{path}: missing template file for task {task!r}")
        out[task] = load_task_prompts(path, env)
    tokens = [p.instruction_token for p in out.values()]
    if len(set(tokens)) != len(tokens):
        raise TemplateError(f"{d}: instruction tokens must differ between tasks, got {tokens}")
    return out


# ---- explanation sentences (`Recommender.explain`) ----------------------------------------------
EXPLANATION_FILE = "explanation.yaml"  # not a task file: `load_prompts` reads only <task>.yaml
EXPLANATION_KEYS = ("sentence", "because")  # the full sentence; the short "because ..." line
EXPLANATION_FIELDS = {"who", "user", "item", "title", "score", "prior_part", "lm_part", "shown", "history_shown",
                      "social_shown", "positive_total", "contributions", "explicit"}


def _signed(x) -> str:
    return f"{float(x):+.3f}"


def _fixed(x) -> str:
    return f"{float(x):.3f}"


def _pct(x) -> str:
    return f"{100 * float(x):.0f}%"


@dataclass(frozen=True)
class ExplanationTemplates:
    """The compiled sentence templates of an explanation, and the file they came from."""

    path: Path
    sentence: jinja2.Template
    because: jinja2.Template

    def render(self, which: str, **fields) -> str:
        return " ".join(getattr(self, which).render(**fields).split())  # one line, single spaces


def load_explanation_templates(prompts_dir: str | Path | None = None) -> ExplanationTemplates:
    """The explanation templates of `prompts_dir` (a run folder's ``prompts/``), or the shipped ones
    (`DEFAULT_PROMPTS_DIR`) when that folder has no ``explanation.yaml`` (run folders written before
    explanations existed). The file holds ``sentence`` and ``because`` (Jinja2 bodies, run in the
    same sandbox as the task templates) and optional ``macros`` prepended to both; the fields they
    may use are `EXPLANATION_FIELDS`, and the filters ``num``, ``fixed`` (0.123), ``signed`` (+0.123)
    and ``pct`` (45%).

    Raises:
        TemplateError: the file is malformed, a body has a Jinja syntax error or uses an unknown field.
    """
    path = Path(prompts_dir) / EXPLANATION_FILE if prompts_dir else None
    if path is None or not path.is_file():
        path = DEFAULT_PROMPTS_DIR / EXPLANATION_FILE
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise TemplateError(f"{path}: cannot read explanation templates: {e}") from None
    if not isinstance(doc, dict) or not set(EXPLANATION_KEYS) <= set(doc):
        raise TemplateError(f"{path}: expected a mapping with keys {', '.join(EXPLANATION_KEYS)} (and optional macros)")
    unknown = set(doc) - {*EXPLANATION_KEYS, "macros"}
    if unknown:
        raise TemplateError(f"{path}: unknown key(s) {sorted(unknown)}")
    env = make_environment()
    env.filters.update(signed=_signed, fixed=_fixed, pct=_pct)
    macros = str(doc.get("macros") or "")
    compiled = {}
    for key in EXPLANATION_KEYS:
        source = f"{macros}\n{doc[key]}" if macros else str(doc[key])
        try:
            used = meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"{path}: {key}: Jinja syntax error: {e.message} (line {e.lineno})") from None
        if used - EXPLANATION_FIELDS:
            raise TemplateError(f"{path}: {key} uses {sorted(used - EXPLANATION_FIELDS)}; "
                                f"allowed: {', '.join(sorted(EXPLANATION_FIELDS))}")
        compiled[key] = env.from_string(source)
    return ExplanationTemplates(path, **compiled)
