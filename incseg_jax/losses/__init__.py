"""Loss registry: name -> pure function.

Every loss term is a pure `jnp` function `fn(inputs: LossInputs, **options) ->
scalar`, registered under a name. A config lists terms as `{name: weight}` in
`config.losses` (options in `config.loss_options.<name>`), and the train step
sums `weight * fn(inputs, **options)`. Adding a method means adding a module
here with its terms and a preset in `incseg_jax/methods`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from typing import Any, Callable, Iterator

import jax

_REGISTRY: dict[str, Callable[..., jax.Array]] = {}
_NEEDS_TEACHER: set[str] = set()
_READS_PARAMS: set[str] = set()
_STATE: dict[str, Any] = {}  # term name -> its `state.StateRule`


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  """Static facts about the current task step that losses may need.

  Attributes:
    index: the task step (0 = base step).
    num_channels: model output channels after this step (background incl.).
    old_channels: channel ids learned before this step (foreground only).
    new_channels: channel ids learned in this step.
    ignore_label: the label value to ignore.
  """
  index: int
  num_channels: int
  old_channels: tuple[int, ...]
  new_channels: tuple[int, ...]
  ignore_label: int = 255

  @property
  def num_old_channels(self) -> int:
    """Channels of the previous model: background + old classes."""
    return 1 + len(self.old_channels)


@dataclasses.dataclass(frozen=True)
class LossInputs:
  """What a loss term can read; built inside the jitted train step.

  Attributes:
    student: the student's forward dict (see `incseg_jax.models.SegModel`).
    teacher: the frozen previous model's forward dict (stop-gradient), or None
      at step 0.
    labels: (B, H, W) int32 training targets in channel ids, ignore_label for
      pixels that do not count.
    images: (B, H, W, 3) normalised input images.
    task: static TaskInfo.
    extras: arrays a method computed before the task step (its `prepare`
      hook, e.g. PLOP's per-class entropy thresholds); empty otherwise.
    params: the student's parameters (the differentiated argument); set for
      parameter terms only (`register(..., reads_params=True)`).
    teacher_params: the previous model's parameters; parameter terms only.
    state: the method's state (`methods.state`), or None.
    saliency: (B, H, W) uint8 saliency maps of the batch's images (nonzero:
      salient), when the method asks for them (`Method.needs_saliency`); 0 on
      images that have none (memory images). None otherwise.
  """
  student: dict[str, Any]
  teacher: dict[str, Any] | None
  labels: jax.Array
  images: jax.Array
  task: TaskInfo
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)
  params: Any = None
  teacher_params: Any = None
  state: Any = None
  saliency: Any = None


def register(name: str, needs_teacher: bool = False, reads_params: bool = False, state: Any = None):
  """Decorator registering a loss function under `name`.

  Args:
    name: the term's config name.
    needs_teacher: the term reads `inputs.teacher` or `inputs.teacher_params`;
      it is left out at step 0, where there is no previous model.
    reads_params: a parameter term (a penalty on the weights, e.g. EWC's): it
      reads `inputs.params`, `inputs.teacher_params` and `inputs.state`, not the
      forward outputs, and is differentiated apart from the forward terms, so
      a method's state update sees the forward terms' gradients only.
    state: a `losses.state.StateRule`: the state the term carries from one task
      step to the next (`inputs.state` is then this state).
  """

  def wrap(fn):
    if name in _REGISTRY:
      raise ValueError(f"loss {name!r} registered twice")
    _REGISTRY[name] = fn
    if needs_teacher:
      _NEEDS_TEACHER.add(name)
    if reads_params:
      _READS_PARAMS.add(name)
    if state is not None:
      _STATE[name] = state
    return fn

  return wrap


@contextlib.contextmanager
def registered(name: str, fn: Callable[..., jax.Array],
               needs_teacher: bool = False) -> Iterator[Callable[..., jax.Array]]:
  """Registers `fn` as `name` for the duration of a `with` block (for tests).

  On exit the registry is as before: the entry is removed, or a previous
  entry under the same name (and its needs_teacher flag) is restored.

  Args:
    name: the term's config name.
    fn: the loss function.
    needs_teacher: as in `register`.

  Yields:
    fn.
  """
  previous = _REGISTRY.get(name)
  previous_needs_teacher = name in _NEEDS_TEACHER
  _REGISTRY[name] = fn
  _NEEDS_TEACHER.discard(name)
  if needs_teacher:
    _NEEDS_TEACHER.add(name)
  try:
    yield fn
  finally:
    if previous is None:
      _REGISTRY.pop(name, None)
    else:
      _REGISTRY[name] = previous
    _NEEDS_TEACHER.discard(name)
    if previous_needs_teacher:
      _NEEDS_TEACHER.add(name)


def get(name: str) -> Callable[..., jax.Array]:
  """Returns the loss registered as `name`; ValueError lists the known ones."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


def names() -> tuple[str, ...]:
  """All registered loss names."""
  return tuple(sorted(_REGISTRY))


def needs_teacher(name: str) -> bool:
  """Whether the term reads the previous model (so it is off at step 0)."""
  get(name)
  return name in _NEEDS_TEACHER


def reads_params(name: str) -> bool:
  """Whether the term is a parameter term (see `register`)."""
  get(name)
  return name in _READS_PARAMS


def option_defaults(name: str) -> dict[str, Any]:
  """The term's options and their default values (its keyword arguments)."""
  params = list(inspect.signature(get(name)).parameters.values())[1:]
  return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def state_rule(name: str) -> Any:
  """The term's `state.StateRule`, or None for a stateless term."""
  get(name)
  return _STATE.get(name)


# Importing the families registers their terms.
from incseg_jax.losses import ce, contrastive, features, kd, mib, plop, pod, rcil, regularizers, sdr, ssul  # noqa: E402,F401  pylint: disable=g-import-not-at-top
