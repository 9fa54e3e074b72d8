"""Every up-front check of an experiment, in one place, before anything is trained or written.

Two passes, each raising ValueError with a message naming the field at fault:

* `config(config)`: what the config alone decides, before any data is read or
  built: field types and ranges the flag parser lets through (a tuple field
  takes any tuple: `--config.input.mean=abc` gives `('abc',)`), batch sizes
  against the devices, the method against its loss terms, the model
  architecture, the scenario against the dataset's class count, the label
  policy, and the pretrained weight file (read fully: layout, names, shapes).
* `experiment(exp)`: what needs the resolved experiment: frozen prefixes
  against the model's parameters, and every loss term of every task step
  traced once on abstract inputs (`jax.eval_shape`, no compute), so a bad
  loss option fails in seconds instead of after the whole base step, where a
  term that needs the teacher is first traced.

Workdir and checkpoint identity are checked by incseg_jax/workdir.py.
"""

from __future__ import annotations

import inspect

from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from incseg_jax import experiment as experiment_lib
from incseg_jax import losses as losses_lib
from incseg_jax import methods
from incseg_jax import models
from incseg_jax import sharding
from incseg_jax import tasks
from incseg_jax.data import registry
from incseg_jax.losses import state as state_lib
from incseg_jax.models import pretrained

NONFINITE_MODES = ("stop", "skip")
SCHEDULE_UNITS = ("epochs", "steps", "steps_per_class")

# Tuple fields: the type of their elements, and an example for the message.
_TUPLE_FIELDS = {"input.mean": (float, "'(0.485, 0.456, 0.406)'"), "input.std": (float, "'(0.229, 0.224, 0.225)'"),
                 "model.small_blocks": (int, "'(1, 1, 1, 1)'"), "model.atrous_rates": (int, "'(6, 12, 18)'"),
                 "freeze": (str, "'(\"backbone/stem\",)'")}
_NAMES = {float: "numbers", int: "integers", str: "strings"}
_POSITIVE_FIELDS = ("input.batch_size", "eval_batch_size", "schedule.base_length", "schedule.inc_length")


def config(cfg) -> None:
  """Checks everything the config alone decides (see the module docstring).

  Raises:
    ValueError: naming the field, the value and what is expected.
  """
  _check_values(cfg)
  _check_method(cfg)
  models.check_config(cfg.model)
  # The scenario against the dataset's class count, before any data is built or read.
  meta = registry.meta(cfg.dataset.name)
  tasks.parse_scenario(cfg.task, meta.num_fg)
  experiment_lib.label_policy(cfg, meta, methods.get(cfg.method))
  _check_pretrained(cfg)


def _field(cfg, path: str) -> Any:
  value = cfg
  for part in path.split("."):
    value = value.get(part) if hasattr(value, "get") else None
  return value


def _check_values(cfg) -> None:
  """Fields whose type or value the flag parser does not check."""
  if cfg.nonfinite not in NONFINITE_MODES:
    raise ValueError(f"config.nonfinite={cfg.nonfinite!r}: expected one of {', '.join(NONFINITE_MODES)}")
  for path, (kind, example) in _TUPLE_FIELDS.items():
    value = _field(cfg, path)
    if value is None:
      continue
    numbers = (int, float) if kind is float else (int,) if kind is int else (str,)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, numbers) and not isinstance(v, bool) for v in value):
      raise ValueError(f"config.{path}={value!r}: expected a tuple of {_NAMES[kind]}, e.g. "
                       f"--config.{path}={example}")
  for path in _POSITIVE_FIELDS:
    value = _field(cfg, path)
    if value <= 0:
      raise ValueError(f"config.{path} must be positive, got {value}")
  if cfg.schedule.unit not in SCHEDULE_UNITS:
    raise ValueError(f"config.schedule.unit={cfg.schedule.unit!r}: expected steps, epochs or steps_per_class")
  sharding.check_batch_size(cfg.input.batch_size, "config.input.batch_size")
  sharding.check_batch_size(cfg.eval_batch_size, "config.eval_batch_size")


def _check_method(cfg) -> None:
  """`config.losses` must fit `config.method` (unknown names list the known ones)."""
  method = methods.get(cfg.method)
  for term in cfg.losses:
    losses_lib.get(term)
  missing = [t for t in method.losses if t not in cfg.losses]
  if missing:
    # Happens when --config.method is overridden on the command line instead
    # of being chosen in the config argument, which fills config.losses.
    raise ValueError(
        f"config.method={cfg.method!r} needs loss term(s) {missing} that config.losses "
        f"({dict(cfg.losses)}) lacks; choose the method in the config argument, e.g. "
        f"--config=configs/shapes.py:method={cfg.method}")
  if method.joint and cfg.task != "joint":
    raise ValueError(f"method 'joint' trains all classes in one step, but config.task={cfg.task!r}; "
                     "use task=joint or drop the override")


def _check_pretrained(cfg) -> None:
  """Checks `config.pretrained` fully (file, layout, names, shapes) before any data or training."""
  path = cfg.get("pretrained", "")
  if path:
    pretrained.validate(path, cfg.model, cfg.dataset.data_dir or None)
  elif cfg.dataset.name != "shapes" and cfg.model.backbone != "resnet_small":
    print(f"note: {cfg.model.backbone} starts from random weights; both papers start from ImageNet "
          "weights (--config.pretrained=/path/to/resnet.npz, see README)", flush=True)


def experiment(exp: experiment_lib.Experiment) -> None:
  """Checks what needs the resolved experiment (see the module docstring).

  Raises:
    ValueError: a frozen prefix that matches no parameter, or a loss term
      that fails at some task step (naming the term, its options, the step
      and the cause).
  """
  _check_frozen(exp)
  _check_loss_terms(exp)


def _check_frozen(exp: experiment_lib.Experiment) -> None:
  """Every frozen prefix must name parameters of the model (catches typos early)."""
  prefixes = methods.frozen_prefixes(exp.method, exp.config)
  if not prefixes:
    return
  abstract = models.abstract_variables(exp.model(0), 32)
  paths = [models.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract["params"])]
  for prefix in prefixes:
    if not any(models.is_frozen(p, (prefix,)) for p in paths):
      tops = sorted({"/".join(p.split("/")[:2]) for p in paths})
      raise ValueError(f"frozen prefix {prefix!r} (method {exp.config.method!r} / config.freeze) matches no "
                       f"parameter; parameter groups: {', '.join(tops)}")


class _ExtrasNeeded(Exception):
  """A term read `inputs.extras`, which only the method's prepare hook computes."""


class _UnknownExtras(Mapping[str, Any]):
  """Stand-in for a prepare hook's output, whose shapes are only known after it ran."""

  def __contains__(self, key) -> bool:
    return True

  def __getitem__(self, key):
    raise _ExtrasNeeded(key)

  def __iter__(self) -> Iterator[str]:
    return iter(())

  def __len__(self) -> int:
    return 0


def _with_channels(out: dict[str, Any], channels: int) -> dict[str, Any]:
  """An abstract forward dict with `channels` output channels (heads only change the logits)."""
  out = dict(out)
  for key in ("logits", "logits_os"):
    shape = out[key].shape
    out[key] = jax.ShapeDtypeStruct(shape[:-1] + (channels,), out[key].dtype)
  return out


def _check_loss_terms(exp: experiment_lib.Experiment) -> None:
  """Traces every loss term of every task step once, on abstract inputs.

  The forward outputs are those of the final model (traced once); a step's
  student and teacher differ from it only in the number of output channels.
  A term that reads a prepare hook's `inputs.extras` (PLOP's pseudo-labels)
  is checked up to that read; its later options are checked when its step's
  train step is compiled.
  """
  cfg = exp.config
  batch, size = cfg.input.batch_size, cfg.input.crop_size
  final = exp.model(exp.num_steps - 1)
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  out, _ = jax.eval_shape(lambda x: final.init_with_output({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                                           x, train=True), images)
  labels = jax.ShapeDtypeStruct((batch, size, size), jnp.int32)
  states = {}  # term -> its state at the start of step k (for terms that read it in the forward)
  for k in range(exp.num_steps):
    spec = exp.step(k)
    student = _with_channels(out, spec.info.num_channels)
    teacher = _with_channels(out, exp.plan.steps[k - 1].num_channels) if k > 0 else None
    extras = _UnknownExtras() if exp.method.prepare is not None and k > 0 else {}
    states = _forward_states(exp, spec, states)
    for name, _, opts in spec.terms:
      fn = losses_lib.get(name)
      if losses_lib.reads_params(name):
        # A parameter term reads parameters and state, not forward outputs:
        # its options are checked here, the term when the train step compiles.
        try:
          inspect.signature(fn).bind(None, **opts)
        except TypeError as e:
          raise ValueError(f"config.loss_options.{name}={opts}: loss term {name!r} does not take these options "
                           f"({e})") from e
        continue

      def term(s, t, y, x, state, fn=fn, opts=opts, info=spec.info, extras=extras):
        inputs = losses_lib.LossInputs(student=s, teacher=t, labels=y, images=x, task=info, extras=extras,
                                       state=state)
        return fn(inputs, **opts)

      try:
        result = jax.eval_shape(term, student, teacher, labels, images, states.get(name))
      except _ExtrasNeeded:
        continue
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f"config.loss_options.{name}={opts}: loss term {name!r} fails at task step {k}: "
                         f"{type(e).__name__}: {_first_line(e)}") from e
      if np.prod(result.shape) != 1:
        raise ValueError(f"loss term {name!r} (options {opts}) returns shape {result.shape} at task step {k}, "
                         "not a scalar")


def _forward_states(exp: experiment_lib.Experiment, spec, previous: dict) -> dict:
  """The start-of-step states of the stateful terms that are forward terms, by their rules' own `init`.

  Built from zero parameters of the step's (and the teacher's) shapes, chained
  from step to step as training chains them, so a term is traced on a state
  of the shapes it will get. Parameter terms are not traced here (see
  `_check_loss_terms`), so their states are not built.
  """
  out = {}
  for name, rule, opts in spec.states:
    if losses_lib.reads_params(name):
      continue
    zeros = lambda model: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),  # calloc: no memory touched
                                       models.abstract_variables(model, exp.config.input.crop_size)["params"])
    ctx = state_lib.StateContext(params=zeros(spec.model),
                                 teacher_params=zeros(spec.teacher_model) if spec.teacher_model is not None else None,
                                 previous=previous.get(name), task=spec.info, options=opts)
    try:
      out[name] = rule.init(ctx)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"config.loss_options.{name}={opts}: the state of loss term {name!r} cannot be built at "
                       f"task step {spec.index}: {type(e).__name__}: {_first_line(e)}") from e
  return out


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else ""
