"""The resolved experiment: data, task plan and method, and one `StepSpec` per task step.

`build(config)` reads the dataset (building its records once), resolves the
class order and the task plan, and picks each step's training images.
`Experiment.step(k)` then answers every per-step question once: the model and
the teacher model, the training images and the number of train steps, the
learning rate, the frozen parameters and the active loss terms. The trainer,
the up-front checks (validate.py), the method's `prepare` hook, evaluation
and reporting all read the same `StepSpec`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from incseg_jax import losses as losses_lib
from incseg_jax import memory as memory_lib
from incseg_jax import methods
from incseg_jax import models
from incseg_jax import replay as replay_lib
from incseg_jax import tasks
from incseg_jax.data import registry

if TYPE_CHECKING:
  from incseg_jax.data import pipeline


@dataclasses.dataclass(frozen=True, eq=False)
class StepSpec:
  """Everything about one task step that follows from the config and the data.

  Attributes:
    index: the task step (0 = base step).
    task: its `tasks.TaskStep` (classes, channels, label tables).
    info: the static facts the loss terms see (`losses.TaskInfo`).
    model: the model definition after this step (one head per step so far).
    teacher_model: the previous step's model definition (None at step 0).
    train_model: the model definition this step trains: the method's
      `TrainVariant` of `model` (RCIL's two-branch convs), else `model`
      itself. Its variables are merged back into `model`'s when the step's
      training ends.
    indices: training example indices of this step (after the setting's filter).
    num_train_steps: length of the step's schedule in train steps.
    learning_rate: the schedule's starting learning rate.
    lr_scales: (parameter prefix, factor) pairs: parameters under a prefix
      train at factor x the schedule (the method's `lr_scales`; the longest
      matching prefix wins).
    frozen: parameter-path prefixes of `train_model` that receive no update in
      this step (the method's, its train variant's and `config.freeze` after
      step 0; every BatchNorm with `model.bn_frozen`, or after step 0 with
      the method's `freeze_batchnorm`, which also makes `train_model` run
      its BatchNorm on running statistics).
    terms: (name, weight, options) of the loss terms this step trains with.
    states: (term name, `losses.state.StateRule`, options) of the terms that
      carry state: every stateful term of `config.losses` with a nonzero
      weight, at every step (step 0 included, where a penalty is still off).
  """
  index: int
  task: tasks.TaskStep
  info: losses_lib.TaskInfo
  model: models.SegModel
  teacher_model: models.SegModel | None
  train_model: models.SegModel
  indices: np.ndarray
  num_train_steps: int
  learning_rate: float
  frozen: tuple[str, ...]
  terms: tuple[tuple[str, float, dict[str, Any]], ...]
  states: tuple[tuple[str, Any, dict[str, Any]], ...] = ()
  lr_scales: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass
class Experiment:
  """The resolved experiment (see module docstring)."""
  config: Any
  meta: registry.DatasetMeta
  train_split: pipeline.EncodedSplit
  eval_split: pipeline.EncodedSplit
  plan: tasks.TaskPlan
  method: methods.Method
  step_indices: list[np.ndarray]  # training example indices per task step
  replay: replay_lib.ReplaySet | None = None  # `config.replay.dir`'s images (None: no replay)
  # PNG saliency maps aligned with `train_split` (`incseg_jax.saliency`; None: the batches carry none)
  saliency: np.ndarray | None = None
  _specs: dict[int, StepSpec] = dataclasses.field(default_factory=dict, repr=False)
  _memories: dict[int, list] = dataclasses.field(default_factory=dict, repr=False)

  @property
  def num_steps(self) -> int:
    return len(self.plan.steps)

  @property
  def channel_names(self) -> list[str]:
    return self.plan.channel_names(self.meta.class_names)

  def model(self, task_index: int) -> models.SegModel:
    """The model definition after task step `task_index` (one head per step)."""
    return models.build_model(self.config.model, self.plan.classes_per_step[:task_index + 1])

  def step(self, task_index: int) -> StepSpec:
    """The `StepSpec` of task step `task_index` (computed once)."""
    if task_index not in self._specs:
      self._specs[task_index] = self._make_step(task_index)
    return self._specs[task_index]

  def _make_step(self, k: int) -> StepSpec:
    cfg = self.config
    step = self.plan.steps[k]
    model = self.model(k)
    variant = self.method.train_variant
    train_model = variant.model(model, k) if variant is not None else model
    # SSUL's `--bn_freeze`: after step 0 every BatchNorm runs on its running statistics.
    bn_frozen = bool(cfg.model.bn_frozen) or (self.method.freeze_batchnorm and k > 0)
    if bn_frozen and not train_model.bn_frozen:
      train_model = train_model.clone(bn_frozen=True)
    frozen = methods.frozen_prefixes(self.method, cfg, k) if k > 0 else ()
    shapes = None
    if bn_frozen or (variant is not None and k > 0):
      shapes = models.abstract_variables(train_model, cfg.input.crop_size)
    if variant is not None and k > 0:
      frozen += variant.frozen(shapes)
    if bn_frozen:  # frozen BatchNorm: statistics (in the model) and scale/bias (here)
      frozen += models.batchnorm_prefixes(shapes)
    frozen = tuple(dict.fromkeys(frozen))
    scales = self.method.lr_scales(k) if self.method.lr_scales is not None else {}
    base_rate = k == 0 or self.method.incremental_lr == "base_lr"
    info = losses_lib.TaskInfo(index=k, num_channels=step.num_channels, old_channels=step.old_channels,
                               new_channels=step.new_channels, ignore_label=self.plan.ignore_label)
    return StepSpec(index=k, task=step, info=info, model=model,
                    teacher_model=self.model(k - 1) if k > 0 else None, train_model=train_model,
                    indices=self.step_indices[k],
                    num_train_steps=self.num_train_steps(k),
                    learning_rate=cfg.schedule.base_lr if base_rate else cfg.schedule.inc_lr, frozen=frozen,
                    terms=tuple(methods.active_terms(cfg, k)), states=tuple(methods.state_terms(cfg)),
                    lr_scales=tuple((p, float(f)) for p, f in scales.items()))

  def num_train_steps(self, k: int) -> int:
    """Length of a task step's schedule in train steps (see config.schedule)."""
    s = self.config.schedule
    length = s.base_length if k == 0 else s.inc_length
    if s.unit == "steps":
      return int(length)
    if s.unit == "epochs":
      return int(length * self.batches_per_epoch(k))
    if s.unit == "steps_per_class":
      return int(length * len(self.plan.steps[k].new_classes))
    raise ValueError(f"config.schedule.unit={s.unit!r}: expected steps, epochs or steps_per_class")

  def batches_per_epoch(self, task_index: int) -> int:
    """Train steps that see each of the step's images once (the last batch filled up)."""
    return -(-len(self.step_indices[task_index]) // self.config.input.batch_size)

  def train_batches(self, spec: StepSpec, start: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
    """This host's training batches of train steps [start, stop) of `spec`'s task step.

    Batch t is the same whoever asks (the trainer, a resume, a `prepare` hook):
    order and augmentation are functions of (seed, task step, sample position).
    With replay (`config.replay.dir`), the batches of incremental steps carry
    the old classes' replay images and their `replay_class` (`incseg_jax.replay`).
    With saliency maps (`self.saliency`), every batch carries `saliency`.
    """
    replay, num_replay = self.replay_for(spec), 0
    if replay is not None:
      num_replay = replay_lib.batch_composition(self.config.input.batch_size, self.config.replay.ratio_old,
                                                self.config.replay.ratio_new)
    memory, num_memory = None, 0
    entries = self.memory_for(spec.index)
    if entries:
      memory = (np.asarray([e.index for e in entries], np.int64), np.asarray([e.step for e in entries], np.int32),
                memory_lib.label_tables([st.train_lut for st in self.plan.steps], self.plan.ignore_label,
                                        self.config.memory.get("background", "keep")))
      num_memory = self.config.memory.per_batch or self.config.input.batch_size // 2
    # Imported here, as in `build`: importing this module loads no TensorFlow.
    from incseg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.train_batches(self.train_split, spec.indices, spec.task.train_lut, self.config.input,
                                  seed=self.config.seed, task_index=spec.index, start_step=start, num_steps=stop,
                                  ignore_label=self.plan.ignore_label, replay=replay, num_replay=num_replay,
                                  memory=memory, num_memory=num_memory, saliency=self.saliency)

  def memory_for(self, task_index: int) -> list[memory_lib.Entry]:
    """The exemplar memory step `task_index` replays (`incseg_jax.memory`); empty without one or at step 0.

    Chosen from the previous step's memory and images; `set_memory` puts a
    saved one (a resume's) in its place.
    """
    mem = self.config.get("memory")
    if not mem or not mem.size or task_index == 0:
      return []
    if task_index not in self._memories:
      previous = self.memory_for(task_index - 1)
      candidates = list(previous) + [memory_lib.Entry(int(i), task_index - 1) for i in self.step_indices[task_index - 1]]
      labelled = {k: memory_lib.labelled_classes(st.train_lut, self.plan.ignore_label)
                  for k, st in enumerate(self.plan.steps)}
      shows = {e: set(int(c) for c in self.train_split.classes[e.index]) & labelled[e.step] for e in candidates}
      self._memories[task_index] = memory_lib.select(candidates, shows, self.plan.steps[task_index].old_classes,
                                                     mem.size, seed=self.config.seed,
                                                     task_index=task_index, policy=mem.policy)
    return self._memories[task_index]

  def set_memory(self, task_index: int, entries: list[memory_lib.Entry]) -> None:
    """Uses `entries` (a saved memory) as step `task_index`'s memory."""
    self._memories[task_index] = list(entries)

  def replay_for(self, spec: StepSpec) -> tuple[np.ndarray, ...] | None:
    """(images, indices, channels[, labels]) of the replay images of `spec`'s old classes, or None (no replay).

    With `config.replay.labeller="learned"` also the labels each image got from
    the model of the step that learned its class (`train.prepare_replay_labels`).
    """
    if self.replay is None or spec.index == 0 or not spec.task.old_classes:
      return None
    idx, channels = self.replay.select(dict(zip(spec.task.old_classes, spec.task.old_channels)))
    if self.config.replay.get("labeller", "previous") == "learned":
      missing = [self.replay.paths[i] for i in idx if self.replay.labels[i] is None]
      if missing:  # train.prepare_replay_labels makes them before the step trains
        raise ValueError(f"replay labels missing for {len(missing)} image(s), e.g. {missing[0]}")
      return self.replay.images, idx, channels, self.replay.labels
    return self.replay.images, idx, channels


def plan_only(config, meta: registry.DatasetMeta, pixel_counts=None) -> tasks.TaskPlan:
  """The task plan of `config` (training-set pixel counts needed for frequency order).

  A class order named in `meta.named_orders` (a published order such as VOC's
  "ilt_frequency") is replaced by its explicit list. The label policy (void in
  training, label 0, unseen classes in evaluation) comes from the dataset,
  `config.dataset.void` and the method.
  """
  method = methods.get(config.method)
  order = meta.named_orders.get(config.class_order, config.class_order)
  return tasks.make_plan(config.task, meta.num_fg, setting=config.setting, labeling=config.labeling or None,
                         order=order, seed=config.order_seed, pixel_counts=pixel_counts,
                         ignore_label=meta.ignore_label, policy=label_policy(config, meta, method),
                         zero_is_class=meta.zero_is_class)


def label_policy(config, meta: registry.DatasetMeta, method: methods.Method) -> tasks.LabelPolicy:
  """How raw labels become targets in this experiment (see `tasks.LabelPolicy`)."""
  return tasks.LabelPolicy.for_dataset(void_is_zero=meta.void_is_zero, zero_name=meta.class_names[0],
                                       dataset_void=config.dataset.get("void", "background"),
                                       void_as_background=method.void_as_background,
                                       unseen_eval=method.unseen_eval, dataset_name=meta.name)


def build(config) -> Experiment:
  """Reads the data and resolves the task plan of a config `validate.config` accepted.

  Raises:
    ValueError: with a message naming the config field or the data at fault
      (an order that is not a permutation, a step without training images,
      a missing or bad saliency map).
  """
  # TensorFlow loads here, not when this module is imported: `validate.config` uses `plan_only` and runs
  # before TensorFlow is imported, so a bad config is named in seconds.
  from incseg_jax import saliency as saliency_lib  # pylint: disable=g-import-not-at-top
  from incseg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  method = methods.get(config.method)
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
  logging.info("%s", plan.describe(meta.class_names))
  for step, n in zip(plan.steps, image_counts):
    logging.info("task step %d: %d training images, new classes %s", step.index, n,
                 [meta.class_names[c] for c in step.new_classes])
  replay = None
  if config.get("replay") and config.replay.dir:  # configs saved before replay existed have no section
    # Every class that is old at some step: the last step's old classes.
    names = replay_lib.old_class_names(plan.steps[-1].old_classes, meta.class_names)
    replay = replay_lib.read_folder(config.replay.dir, names, config.replay.per_class)
    logging.info("replay: %d images of %d old classes from %s", len(replay), len(names), config.replay.dir)
  saliency = None
  if method.needs_saliency or config.dataset.get("saliency_dir"):  # a given folder is read (and checked) anyway
    saliency = saliency_lib.load(config.dataset, train_split)
  return Experiment(config=config, meta=meta, train_split=train_split, eval_split=eval_split, plan=plan,
                    method=method, step_indices=step_indices, replay=replay, saliency=saliency)
