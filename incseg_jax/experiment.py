"""Everything derived from a config before any training: data, plan, method.

Both `train.run` and `evaluate` build an `Experiment` first, so every bad
input (unknown dataset/scenario/method/setting/order, a class order that is
not a permutation, a task step with no training image) fails here, before a
single train step, with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from incseg_jax import methods
from incseg_jax import models
from incseg_jax import sharding
from incseg_jax import tasks
from incseg_jax.data import pipeline
from incseg_jax.data import registry


@dataclasses.dataclass
class Experiment:
  """The resolved experiment (see module docstring)."""
  config: object
  meta: registry.DatasetMeta
  train_split: pipeline.EncodedSplit
  eval_split: pipeline.EncodedSplit
  plan: tasks.TaskPlan
  method: methods.Method
  step_indices: list[np.ndarray]  # training example indices per task step

  @property
  def channel_names(self) -> list[str]:
    return self.plan.channel_names(self.meta.class_names)

  def model(self, task_index: int) -> models.SegModel:
    """The model definition after task step `task_index` (one head per step)."""
    return models.build_model(self.config.model, self.plan.classes_per_step[:task_index + 1])

  def num_train_steps(self, task_index: int) -> int:
    """Length of a task step's schedule in train steps (see config.schedule)."""
    s = self.config.schedule
    length = s.base_length if task_index == 0 else s.inc_length
    if s.unit == "steps":
      return int(length)
    if s.unit == "epochs":
      per_epoch = -(-len(self.step_indices[task_index]) // self.config.input.batch_size)
      return int(length * per_epoch)
    if s.unit == "steps_per_class":
      return int(length * len(self.plan.steps[task_index].new_classes))
    raise ValueError(f"config.schedule.unit={s.unit!r}: expected steps, epochs or steps_per_class")

  @property
  def frozen_prefixes(self) -> tuple[str, ...]:
    """Parameter prefixes frozen at steps > 0: the method's plus config.freeze."""
    return tuple(dict.fromkeys(tuple(self.method.frozen) + tuple(self.config.freeze)))

  def learning_rate(self, task_index: int) -> float:
    return self.config.schedule.base_lr if task_index == 0 else self.config.schedule.inc_lr


VOID_CHOICES = ("background", "ignore")


def plan_only(config, meta: registry.DatasetMeta, pixel_counts=None) -> tasks.TaskPlan:
  """The task plan of `config` (training-set pixel counts needed for frequency order).

  A class order named in `meta.named_orders` (a published order such as VOC's
  "ilt_frequency") is replaced by its explicit list. With
  `config.dataset.void="ignore"` on a dataset whose label 0 is void, label 0
  is ignored in training and evaluation (MiB's ADE20K convention) instead of
  being the background channel.
  """
  method = methods.get(config.method)
  order = meta.named_orders.get(config.class_order, config.class_order)
  plan = tasks.make_plan(config.task, meta.num_fg, setting=config.setting, labeling=config.labeling or None,
                         order=order, seed=config.order_seed, pixel_counts=pixel_counts,
                         ignore_label=meta.ignore_label, void_as_background=method.void_as_background,
                         unseen_eval=method.unseen_eval)
  void = config.dataset.get("void", "background")
  if void not in VOID_CHOICES:
    raise ValueError(f"config.dataset.void={void!r}: expected one of {', '.join(VOID_CHOICES)}")
  if void == "ignore":
    if not meta.void_is_zero:
      raise ValueError(f"config.dataset.void='ignore': label 0 of dataset {meta.name!r} is a real class "
                       f"({meta.class_names[0]!r}), not void; only datasets with a void label 0 "
                       "(ade20k, cityscapes) accept it")
    plan = dataclasses.replace(plan, steps=tuple(_ignore_zero(step, meta.ignore_label) for step in plan.steps))
  return plan


def _ignore_zero(step: tasks.TaskStep, ignore_label: int) -> tasks.TaskStep:
  """`step` with raw label 0 mapped to the ignore label in both LUTs."""
  luts = {}
  for name in ("train_lut", "eval_lut"):
    lut = np.array(getattr(step, name))
    lut[0] = ignore_label
    lut.setflags(write=False)
    luts[name] = lut
  return dataclasses.replace(step, **luts)


def build(config) -> Experiment:
  """Validates `config`, prepares the data and resolves the task plan.

  Raises:
    ValueError: with a message naming the config field for any bad input.
  """
  method = methods.check_config(config)
  for field in ("input.batch_size", "eval_batch_size", "schedule.base_length", "schedule.inc_length"):
    value = config
    for part in field.split("."):
      value = value[part]
    if value <= 0:
      raise ValueError(f"config.{field} must be positive, got {value}")
  sharding.check_batch_size(config.input.batch_size, "config.input.batch_size")
  sharding.check_batch_size(config.eval_batch_size, "config.eval_batch_size")
  _check_pretrained(config)
  # The scenario against the dataset's class count, before any data is built or read.
  tasks.parse_scenario(config.task, registry.num_classes(config.dataset.name) - 1)
  builder, meta = registry.load(config.dataset)
  train_split = pipeline.load_split(builder, config.dataset.train_split)
  eval_split = pipeline.load_split(builder, config.dataset.eval_split)
  counts = None
  if train_split.pixel_counts is not None:
    counts = train_split.pixel_counts.sum(axis=0)
  plan = plan_only(config, meta, counts)
  step_indices = [np.asarray(ix, np.int64) for ix in tasks.step_image_indices(plan, train_split.classes)]
  image_counts = [len(ix) for ix in step_indices]
  tasks.check_nonempty(plan, image_counts)
  exp = Experiment(config=config, meta=meta, train_split=train_split, eval_split=eval_split, plan=plan,
                   method=method, step_indices=step_indices)
  _check_frozen(exp)
  logging.info("%s", plan.describe(meta.class_names))
  for step, n in zip(plan.steps, image_counts):
    logging.info("task step %d: %d training images, new classes %s", step.index, n,
                 [meta.class_names[c] for c in step.new_classes])
  return exp


def _check_pretrained(config) -> None:
  """Checks `config.pretrained` fully (file, layout, names, shapes) before any data or training."""
  path = config.get("pretrained", "")
  if path:
    from incseg_jax.models import pretrained  # pylint: disable=g-import-not-at-top
    pretrained.validate(path, config.model)
  elif config.dataset.name != "shapes" and config.model.backbone != "resnet_small":
    print(f"note: {config.model.backbone} starts from random weights; both papers start from ImageNet "
          "weights (--config.pretrained=/path/to/resnet.npz, see README)", flush=True)


def _check_frozen(exp: Experiment) -> None:
  """Every frozen prefix must name parameters of the model (catches typos early)."""
  if not exp.frozen_prefixes:
    return
  import jax  # pylint: disable=g-import-not-at-top
  from incseg_jax import train_step  # pylint: disable=g-import-not-at-top
  abstract = jax.eval_shape(lambda: models.init_variables(exp.model(0), jax.random.key(0), 32))
  paths = [train_step.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(abstract["params"])]
  for prefix in exp.frozen_prefixes:
    if not any(train_step.is_frozen(p, (prefix,)) for p in paths):
      tops = sorted({"/".join(p.split("/")[:2]) for p in paths})
      raise ValueError(f"frozen prefix {prefix!r} (method {exp.config.method!r} / config.freeze) matches no "
                       f"parameter; parameter groups: {', '.join(tops)}")
