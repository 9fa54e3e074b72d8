"""Checks run before anything is written or trained: values the config parser lets through.

absl/ml_collections check the type of a scalar override, but a tuple field
takes any tuple (`--config.input.mean=abc` gives `('abc',)`), and a loss
option is only read when its term is traced, which for a term that needs the
teacher is after the whole base step has trained. `check_values` covers the
first, `check_loss_terms` the second: it traces every term of every task step
once on abstract inputs (`jax.eval_shape`, no compute), so a bad option fails
in seconds with a message naming `config.loss_options.<term>`.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from incseg_jax import losses as losses_lib

NONFINITE_MODES = ("stop", "skip")

# Tuple fields: the type of their elements, and an example for the message.
_TUPLE_FIELDS = {"input.mean": (float, "'(0.485, 0.456, 0.406)'"), "input.std": (float, "'(0.229, 0.224, 0.225)'"),
                 "model.small_blocks": (int, "'(1, 1, 1, 1)'"), "model.atrous_rates": (int, "'(6, 12, 18)'"),
                 "freeze": (str, "'(\"backbone/stem\",)'")}
_NAMES = {float: "numbers", int: "integers", str: "strings"}


def check_values(config) -> None:
  """Checks fields whose type or value the flag parser does not.

  Raises:
    ValueError: naming the field, the value and what is expected.
  """
  if config.nonfinite not in NONFINITE_MODES:
    raise ValueError(f"config.nonfinite={config.nonfinite!r}: expected one of {', '.join(NONFINITE_MODES)}")
  for path, (kind, example) in _TUPLE_FIELDS.items():
    value = config
    for part in path.split("."):
      value = value.get(part) if hasattr(value, "get") else None
    if value is None:
      continue
    numbers = (int, float) if kind is float else (int,) if kind is int else (str,)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, numbers) and not isinstance(v, bool) for v in value):
      raise ValueError(f"config.{path}={value!r}: expected a tuple of {_NAMES[kind]}, e.g. "
                       f"--config.{path}={example}")


def active_terms(config, task_index: int) -> list[tuple[str, float, dict]]:
  """(name, weight, options) of the loss terms task step `task_index` trains with.

  Terms with weight 0 are off; terms that need the teacher are off at step 0.
  """
  return [(name, float(w), dict(config.loss_options.get(name, {})))
          for name, w in config.losses.items() if w and (task_index > 0 or not losses_lib.needs_teacher(name))]


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


def check_loss_terms(exp) -> None:
  """Traces every loss term of every task step once, on abstract inputs.

  The forward outputs are those of the final model (traced once); a step's
  student and teacher differ from it only in the number of output channels.
  A term that reads a prepare hook's `inputs.extras` (PLOP's pseudo-labels)
  is checked up to that read; its later options are checked when its step's
  train step is compiled.

  Raises:
    ValueError: naming the term, its options, the task step and the cause.
  """
  cfg = exp.config
  batch, size = cfg.input.batch_size, cfg.input.crop_size
  final = exp.model(len(exp.plan.steps) - 1)
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  out, _ = jax.eval_shape(lambda x: final.init_with_output({"params": jax.random.key(0), "dropout": jax.random.key(1)},
                                                           x, train=True), images)
  labels = jax.ShapeDtypeStruct((batch, size, size), jnp.int32)
  quirks = cfg.quirks.to_dict()
  for step in exp.plan.steps:
    k = step.index
    task = losses_lib.TaskInfo(index=k, num_channels=step.num_channels, old_channels=step.old_channels,
                               new_channels=step.new_channels, ignore_label=exp.plan.ignore_label)
    student = _with_channels(out, step.num_channels)
    teacher = _with_channels(out, exp.plan.steps[k - 1].num_channels) if k > 0 else None
    extras = _UnknownExtras() if exp.method.prepare is not None and k > 0 else {}
    for name, _, opts in active_terms(cfg, k):
      fn = losses_lib.get(name)

      def term(s, t, y, x, fn=fn, opts=opts):
        inputs = losses_lib.LossInputs(student=s, teacher=t, labels=y, images=x, task=task, quirks=quirks,
                                       extras=extras)
        return fn(inputs, **opts)

      try:
        result = jax.eval_shape(term, student, teacher, labels, images)
      except _ExtrasNeeded:
        continue
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f"config.loss_options.{name}={opts}: loss term {name!r} fails at task step {k}: "
                         f"{type(e).__name__}: {_first_line(e)}") from e
      if np.prod(result.shape) != 1:
        raise ValueError(f"loss term {name!r} (options {opts}) returns shape {result.shape} at task step {k}, "
                         "not a scalar")


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else ""

