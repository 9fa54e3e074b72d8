"""Method registry: a method is data, not code paths in the trainer.

A `Method` says which loss terms it adds (with default weights), which
parameters it freezes after step 0, how it initialises a new head, and which
label conventions it follows. `get("a+b")` combines registered methods the
way the papers do (e.g. `ef+kd_cls_t`). Each paper family registers its
methods in its own small module, imported at the bottom of this file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections

from incseg_jax import losses as losses_lib

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
    quirks: `config.quirks` as a plain dict.
  """
  teacher_forward: Callable[[Any], Mapping[str, Any]]
  batches: Callable[[], Any]
  task: Any
  options: Mapping[str, Any]
  quirks: Mapping[str, Any]


# PrepareContext -> {name: array}, passed to the losses as `inputs.extras`.
Prepare = Callable[[PrepareContext], Mapping[str, Any]]


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
    void_as_background: training labels map void to background (MiB code).
    unseen_eval: "ignore" (MiB) or "background" (PLOP/UCD): how not-yet-learned
      classes are labelled in evaluation at intermediate steps.
    options: term name -> default options of that term (copied into
      `config.loss_options.<term>`, where the command line can override them).
    doc: one line for `--help` style listings.
  """
  name: str
  losses: Mapping[str, float]
  options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  frozen: tuple[str, ...] = ()
  head_init: HeadInit | None = None
  prepare: Prepare | None = None
  joint: bool = False
  void_as_background: bool = False
  unseen_eval: str = "ignore"
  doc: str = ""


_REGISTRY: dict[str, Method] = {}

# conventions name -> term -> options that override the method's defaults.
# "code" keeps the methods' defaults (the public code's conventions); the
# families add their "paper" (equation-as-written) variants.
CONVENTIONS: dict[str, dict[str, dict[str, Any]]] = {"code": {}, "paper": {}}


def register(method: Method) -> Method:
  """Adds a method to the registry (its loss names must be registered)."""
  for term in method.losses:
    losses_lib.get(term)
  unknown = set(method.options) - set(method.losses)
  if unknown:
    raise ValueError(f"method {method.name!r}: options for terms it does not use: {sorted(unknown)}")
  if method.name in _REGISTRY:
    raise ValueError(f"method {method.name!r} registered twice")
  _REGISTRY[method.name] = method
  return method


def names() -> tuple[str, ...]:
  """All registered method names."""
  return tuple(sorted(_REGISTRY))


def get(name: str) -> Method:
  """Returns a method, or the combination `a+b+...` of registered ones.

  A combination takes the union of the loss terms (a term named twice must
  have the same default weight), of the frozen prefixes, and at most one head
  initialisation and one label convention.

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
  for m in ms:
    for term, w in m.losses.items():
      if term in terms and terms[term] != w and term != "ce":
        raise ValueError(f"method {name!r}: parts give loss {term!r} different weights")
      terms[term] = w
  head_inits = {m.head_init for m in ms if m.head_init is not None}
  if len(head_inits) > 1:
    raise ValueError(f"method {name!r}: more than one part initialises new heads")
  prepares = {m.prepare for m in ms if m.prepare is not None}
  if len(prepares) > 1:
    raise ValueError(f"method {name!r}: more than one part has a prepare hook")
  if any(m.joint for m in ms):
    raise ValueError(f"method {name!r}: 'joint' cannot be combined with other methods")
  conventions = {(m.void_as_background, m.unseen_eval) for m in ms if (m.void_as_background, m.unseen_eval) != (False, "ignore")}
  if len(conventions) > 1:
    raise ValueError(f"method {name!r}: parts follow different label conventions")
  void, unseen = conventions.pop() if conventions else (False, "ignore")
  options: dict[str, Mapping[str, Any]] = {}
  for m in ms:
    for term, opts in m.options.items():
      if term in options and dict(options[term]) != dict(opts):
        raise ValueError(f"method {name!r}: parts give loss {term!r} different options")
      options[term] = opts
  frozen = tuple(dict.fromkeys(p for m in ms for p in m.frozen))
  return Method(name=name, losses=terms, options=options, frozen=frozen,
                head_init=head_inits.pop() if head_inits else None,
                prepare=prepares.pop() if prepares else None,
                void_as_background=void, unseen_eval=unseen, doc=" + ".join(m.doc for m in ms))


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
      are written (see `incseg_jax/methods/ilt.py` and docs/methods.md).
  """
  method = get(config.method)
  if conventions not in CONVENTIONS:
    raise ValueError(f"conventions={conventions!r}: expected one of {sorted(CONVENTIONS)}")
  with config.unlocked():
    config.losses = ml_collections.ConfigDict(dict(method.losses))
    for term in method.losses:
      opts = dict(method.options.get(term, {}))
      opts.update(CONVENTIONS[conventions].get(term, {}))
      config.loss_options[term] = ml_collections.ConfigDict(opts)
    if method.joint:
      config.task = "joint"


def check_config(config: ml_collections.ConfigDict) -> Method:
  """Checks that `config.losses` fits `config.method`; returns the method.

  Raises:
    ValueError: unknown method or loss, or a term the method needs is missing
      (which happens when `--config.method` is overridden on the command line
      instead of being chosen in the config argument).
  """
  method = get(config.method)
  for term in config.losses:
    losses_lib.get(term)
  missing = [t for t in method.losses if t not in config.losses]
  if missing:
    raise ValueError(
        f"config.method={config.method!r} needs loss term(s) {missing} that config.losses "
        f"({dict(config.losses)}) lacks; choose the method in the config argument, e.g. "
        f"--config=configs/shapes.py:method={config.method}")
  if method.joint and config.task != "joint":
    raise ValueError(f"method 'joint' trains all classes in one step, but config.task={config.task!r}; "
                     "use task=joint or drop the override")
  return method


# Importing the families registers their methods.
from incseg_jax.methods import baselines, combos, ilt, mib, plop, ucd  # noqa: E402,F401  pylint: disable=g-import-not-at-top
