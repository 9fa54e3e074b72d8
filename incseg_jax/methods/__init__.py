"""Method registry: a method is data, not code paths in the trainer.

A `Method` says which loss terms it adds (with default weights), which
parameters it freezes after step 0, how it initialises a new head, and which
label conventions it follows. `get("a+b")` combines registered methods the
way the papers do (e.g. `ef+kd_cls_t`). Each paper family registers its
methods in its own small module, imported at the bottom of this file.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Mapping

import ml_collections

from incseg_jax import losses as losses_lib
from incseg_jax import tasks
from incseg_jax.models import segmodel

# (teacher_variables, student_variables, task_step) -> student_variables.
HeadInit = Callable[[Mapping[str, Any], Mapping[str, Any], Any], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class PrepareContext:
  """What a method's `prepare` hook gets before an incremental step.

  Attributes:
    teacher_forward: `images -> outputs dict` of the previous model (eval mode, jitted).
    batches: a function returning a fresh iterator over one epoch of the step's
      training batches ({"image", "label"} NumPy arrays, as the train step
      sees them: same augmentation, same order as the first epoch).
    task: the step's `losses.TaskInfo`.
    options: `config.loss_options` as a plain dict.
  """
  teacher_forward: Callable[[Any], Mapping[str, Any]]
  batches: Callable[[], Any]
  task: Any
  options: Mapping[str, Any]


# PrepareContext -> {name: array}, passed to the losses as `inputs.extras`.
Prepare = Callable[[PrepareContext], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class TrainVariant:
  """The model a method trains in place of the step's model, and the maps between their variables.

  RCIL trains every converted conv as two parallel branches and merges them
  when the step's training ends. The step's model (`StepSpec.model`) stays the
  plain one: the step's final checkpoint, its evaluation, the next teacher
  and `init_from` only ever see plain variables; only the training (and its
  periodic checkpoints) sees the variant (`StepSpec.train_model`).

  Attributes:
    model: (the step's model, task index) -> the model trained at that step.
    expand: (the step's starting variables, the trained model's abstract
      variables) -> the trained model's starting variables.
    merge: the trained model's variables -> the step's (plain) variables,
      applied when the step's training ends (before `Method.fuse`).
    frozen: the trained model's abstract variables -> the parameter prefixes
      it freezes at steps > 0.
  """
  model: Callable[[Any, int], Any]
  expand: Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]]
  merge: Callable[[Mapping[str, Any]], Mapping[str, Any]]
  frozen: Callable[[Mapping[str, Any]], tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class Method:
  """A training recipe for incremental steps.

  Attributes:
    name: config name.
    losses: term name -> default weight. Terms that need the teacher are only
      active at steps > 0; the others at every step.
    frozen: parameter-path prefixes ("backbone", "backbone/stage1", ...) that
      receive no update at steps > 0: no gradient step, no weight decay, and
      their BatchNorm statistics kept.
    head_init: optional rule that initialises the new head from the old model.
    prepare: optional hook run once before each incremental step (resumes
      recompute it; it must be deterministic), whose arrays reach the losses
      as `inputs.extras`.
    joint: train all classes in one step (the upper bound); ignores the task.
    replay: the method trains on replay images of the old classes
      (`config.replay`, `incseg_jax.replay`), which must then be given.
    fuse: optional rule applied when an incremental step's training ends,
      `(teacher_variables, student_variables, task_step, options) ->
      variables` (EWF's weight fusion; options: `config.ewf`); its result is
      the step's final checkpoint, evaluated and the next teacher.
    freeze_old_heads: the heads of earlier steps get no update at steps > 0.
    train_variant: optional `TrainVariant`: the model trained at every step in
      place of the step's model (RCIL's two-branch convs), merged back when the
      step's training ends.
    freeze_batchnorm: at steps > 0 every BatchNorm of the trained model uses
      its running statistics and keeps them, and its scale and offset get no
      update (SSUL's `--bn_freeze`), as `model.bn_frozen` does at every step.
    lr_scales: optional `task index -> {parameter prefix: factor}`: the
      parameters under a prefix train at `factor` x the step's learning rate
      (SSUL: the backbone at 0.1 x at step 0, the background head at 1e-4 x
      after it); the longest matching prefix wins.
    incremental_lr: "inc_lr" (the protocol's `schedule.inc_lr` after step 0)
      or "base_lr": every step starts at `schedule.base_lr` (SSUL, whose code
      trains only heads after step 0, at the step-0 rate).
    head: the classifier the method trains, written to `config.model.head`
      by `apply_to_config`: "linear" (a 1x1 conv per step) or "ssul" (per
      step 3x3 conv + BatchNorm + ReLU + 1x1 conv, with separate background
      and unknown heads and sigmoid scores; `models.classifier`).
    needs_saliency: the training batches carry saliency maps
      (`dataset.saliency_dir`; built for `shapes`), `batch["saliency"]`, read
      by the loss terms as `inputs.saliency`.
    void_as_background: training labels map void to background (MiB code).
    unseen_eval: "ignore" (MiB) or "background" (PLOP/UCD): how not-yet-learned
      classes are labelled in evaluation at intermediate steps.
    options: term name -> default options of that term (copied into
      `config.loss_options.<term>`, where the command line can override them).
    paper_options: term name -> options that `conventions=paper` sets over
      `options`: the equations as the paper writes them, where the public
      code (the default) differs. Terms not listed keep their defaults.
    doc: one line for `--help` style listings.
  """
  name: str
  losses: Mapping[str, float]
  options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  paper_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  frozen: tuple[str, ...] = ()
  head_init: HeadInit | None = None
  prepare: Prepare | None = None
  joint: bool = False
  replay: bool = False
  fuse: Callable[..., Mapping[str, Any]] | None = None
  freeze_old_heads: bool = False
  train_variant: TrainVariant | None = None
  freeze_batchnorm: bool = False
  lr_scales: Callable[[int], Mapping[str, float]] | None = None
  incremental_lr: str = "inc_lr"
  head: str = "linear"
  needs_saliency: bool = False
  void_as_background: bool = False
  unseen_eval: str = "ignore"
  doc: str = ""


_REGISTRY: dict[str, Method] = {}

# Loss terms that classify every pixel; one per method (see `get`).
CLASSIFICATION_TERMS = ("ce", "unbiased_ce", "plop_ce", "bce", "icarl")

# Values of the config argument `conventions`: "code" keeps the methods'
# default options (the public code's), "paper" applies `Method.paper_options`.
CONVENTION_NAMES = ("code", "paper")


# The values of `Method.incremental_lr` (`unseen_eval`'s are tasks.UNSEEN_EVAL, `head`'s models.segmodel.HEADS).
INCREMENTAL_LRS = ("inc_lr", "base_lr")


def _check(method: Method) -> None:
  """Raises ValueError for an unknown loss name or field value, or options of an unused term."""
  for field, allowed in (("incremental_lr", INCREMENTAL_LRS), ("unseen_eval", tasks.UNSEEN_EVAL),
                         ("head", segmodel.HEADS)):
    if getattr(method, field) not in allowed:
      raise ValueError(f"method {method.name!r}: {field}={getattr(method, field)!r} is unknown; expected one of "
                       f"{list(allowed)}")
  for term in method.losses:
    losses_lib.get(term)
  for field in ("options", "paper_options"):
    unknown = set(getattr(method, field)) - set(method.losses)
    if unknown:
      raise ValueError(f"method {method.name!r}: {field} for terms it does not use: {sorted(unknown)}")


def register(method: Method) -> Method:
  """Adds a method to the registry (its loss names must be registered)."""
  _check(method)
  if method.name in _REGISTRY:
    raise ValueError(f"method {method.name!r} registered twice")
  _REGISTRY[method.name] = method
  return method


@contextlib.contextmanager
def registered(method: Method) -> Iterator[Method]:
  """Registers `method` for the duration of a `with` block (for tests).

  Checked as by `register`, but a method of the same name is replaced
  instead of refused, and restored on exit; otherwise the entry is removed.

  Yields:
    method.
  """
  _check(method)
  previous = _REGISTRY.get(method.name)
  _REGISTRY[method.name] = method
  try:
    yield method
  finally:
    if previous is None:
      _REGISTRY.pop(method.name, None)
    else:
      _REGISTRY[method.name] = previous


def names() -> tuple[str, ...]:
  """All registered method names."""
  return tuple(sorted(_REGISTRY))


def get(name: str) -> Method:
  """Returns a method, or the combination `a+b+...` of registered ones.

  A combination takes the union of the loss terms (a term named twice must
  have the same default weight; the plain `ce` is left out when another part
  brings its own classification term, e.g. `mib+ewc` trains with MiB's
  unbiased CE), of their options and paper options (a term's
  options given by two parts must be equal), of the frozen prefixes, and at
  most one head initialisation, one label convention and one train variant
  (which merges before another part's `fuse`, e.g. `rcil+ewf`).

  Raises:
    ValueError: unknown name (the message lists the known ones) or parts that
      cannot be combined.
  """
  parts = [p.strip() for p in name.split("+")]
  unknown = [p for p in parts if p not in _REGISTRY]
  if unknown or not parts:
    raise ValueError(f"unknown method {name!r} (unknown part(s): {', '.join(unknown)}); "
                     f"known methods: {', '.join(names())}; combine with '+'")
  if len(parts) == 1:
    return _REGISTRY[parts[0]]
  ms = [_REGISTRY[p] for p in parts]
  terms: dict[str, float] = {}
  # A part's own classification loss (MiB's unbiased CE, PLOP's pseudo-labelled
  # CE, LwF-MC's BCE) replaces the plain CE another part carries (e.g. mib+ewc).
  replaces_ce = any(t in CLASSIFICATION_TERMS and t != "ce" for m in ms for t in m.losses)
  for m in ms:
    for term, w in m.losses.items():
      if term == "ce" and replaces_ce:
        continue
      if term in terms and terms[term] != w and term != "ce":
        raise ValueError(f"method {name!r}: parts give loss {term!r} different weights")
      terms[term] = w
  head_inits = {m.head_init for m in ms if m.head_init is not None}
  if len(head_inits) > 1:
    raise ValueError(f"method {name!r}: more than one part initialises new heads")
  fuses = {m.fuse for m in ms if m.fuse is not None}
  if len(fuses) > 1:
    raise ValueError(f"method {name!r}: more than one part fuses weights after a step")
  variants = {m.train_variant for m in ms if m.train_variant is not None}
  if len(variants) > 1:
    raise ValueError(f"method {name!r}: more than one part trains a model variant")
  prepares = {m.prepare for m in ms if m.prepare is not None}
  if len(prepares) > 1:
    raise ValueError(f"method {name!r}: more than one part has a prepare hook")
  lr_scales = {m.lr_scales for m in ms if m.lr_scales is not None}
  if len(lr_scales) > 1:
    raise ValueError(f"method {name!r}: more than one part scales learning rates")
  for field, default in (("incremental_lr", "inc_lr"), ("head", "linear")):
    values = {getattr(m, field) for m in ms} - {default}
    if len(values) > 1:
      raise ValueError(f"method {name!r}: parts ask for different {field} ({sorted(values)})")
  if any(m.joint for m in ms):
    raise ValueError(f"method {name!r}: 'joint' cannot be combined with other methods")
  conventions = {(m.void_as_background, m.unseen_eval) for m in ms if (m.void_as_background, m.unseen_eval) != (False, "ignore")}
  if len(conventions) > 1:
    raise ValueError(f"method {name!r}: parts follow different label conventions")
  void, unseen = conventions.pop() if conventions else (False, "ignore")
  options = _union_options(name, "options", [m.options for m in ms])
  paper_options = _union_options(name, "paper options", [m.paper_options for m in ms])
  frozen = tuple(dict.fromkeys(p for m in ms for p in m.frozen))
  return Method(name=name, losses=terms, options=options, paper_options=paper_options, frozen=frozen,
                head_init=head_inits.pop() if head_inits else None,
                prepare=prepares.pop() if prepares else None, replay=any(m.replay for m in ms),
                fuse=fuses.pop() if fuses else None, freeze_old_heads=any(m.freeze_old_heads for m in ms),
                train_variant=variants.pop() if variants else None,
                freeze_batchnorm=any(m.freeze_batchnorm for m in ms),
                lr_scales=lr_scales.pop() if lr_scales else None,
                incremental_lr=next((m.incremental_lr for m in ms if m.incremental_lr != "inc_lr"), "inc_lr"),
                head=next((m.head for m in ms if m.head != "linear"), "linear"),
                needs_saliency=any(m.needs_saliency for m in ms),
                void_as_background=void, unseen_eval=unseen, doc=" + ".join(m.doc for m in ms))


def _union_options(name: str, what: str,
                   parts: list[Mapping[str, Mapping[str, Any]]]) -> dict[str, Mapping[str, Any]]:
  """Term -> options over the parts of a combination; a term's options given twice must agree."""
  out: dict[str, Mapping[str, Any]] = {}
  for part in parts:
    for term, opts in part.items():
      if term in out and dict(out[term]) != dict(opts):
        raise ValueError(f"method {name!r}: parts give loss {term!r} different {what}")
      out[term] = opts
  return out


def apply_to_config(config: ml_collections.ConfigDict, conventions: str = "code") -> None:
  """Fills `config.losses` / `config.loss_options` from the method (call in `get_config`).

  The method is picked in the config argument so that the term weights and
  options become ordinary config fields, overridable as
  `--config.losses.<term>=<weight>` and `--config.loss_options.<term>.<opt>=...`.
  `joint` also sets the task to a single step with every class.

  Args:
    config: the config being built.
    conventions: "code" (default): each term's options as in the public code
      that produced the published numbers; "paper": as the paper's equations
      are written (the method's `paper_options` over its `options`; see
      docs/methods.md).

  Raises:
    ValueError: unknown method or conventions.
  """
  method = get(config.method)
  if conventions not in CONVENTION_NAMES:
    raise ValueError(f"conventions={conventions!r}: expected one of {list(CONVENTION_NAMES)}")
  with config.unlocked():
    config.losses = ml_collections.ConfigDict(dict(method.losses))
    for term in method.losses:
      # Every option of the term, so that each is a config field the command line can set.
      opts = dict(losses_lib.option_defaults(term), **method.options.get(term, {}))
      if conventions == "paper":
        opts.update(method.paper_options.get(term, {}))
      config.loss_options[term] = ml_collections.ConfigDict(opts)
    if method.joint:
      config.task = "joint"
    if config.get("model") is not None:  # a full experiment config (tests build bare ones)
      config.model.head = method.head


def active_terms(config: ml_collections.ConfigDict, task_index: int) -> list[tuple[str, float, dict[str, Any]]]:
  """(name, weight, options) of the loss terms task step `task_index` trains with.

  Terms with weight 0 are off; terms that need the teacher are off at step 0,
  where there is no previous model.
  """
  return [(name, float(w), dict(config.loss_options.get(name, {})))
          for name, w in config.losses.items() if w and (task_index > 0 or not losses_lib.needs_teacher(name))]


def state_terms(config: ml_collections.ConfigDict) -> list[tuple[str, Any, dict[str, Any]]]:
  """(name, state rule, options) of the terms of `config.losses` (nonzero weight) that carry state across steps."""
  return [(name, losses_lib.state_rule(name), dict(config.loss_options.get(name, {})))
          for name, w in config.losses.items() if w and losses_lib.state_rule(name) is not None]


def frozen_prefixes(method: Method, config: ml_collections.ConfigDict, task_index: int = 1) -> tuple[str, ...]:
  """Parameter prefixes frozen at step `task_index` > 0: the method's, `config.freeze`, and with
  `freeze_old_heads` the heads of the earlier steps; without repeats."""
  old_heads = tuple(f"classifier/head_{i}" for i in range(task_index)) if method.freeze_old_heads else ()
  return tuple(dict.fromkeys(tuple(method.frozen) + tuple(config.freeze) + old_heads))


# Importing the families registers their methods.
from incseg_jax.methods import baselines, combos, ewf, ilt, mib, plop, rcil, recall, regularizers, sdr, ssul, ucd  # noqa: E402,F401  pylint: disable=g-import-not-at-top
