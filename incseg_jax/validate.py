"""Every up-front check of an experiment, in one place, before anything is trained or written.

Two passes, each raising ValueError with a message naming the field at fault:

* `config(config)`: what the config alone decides, before any data is read or
  built: field types and ranges the flag parser lets through (a tuple field
  takes any tuple: `--config.input.mean=abc` gives `('abc',)`), batch sizes
  against the devices, the method against its loss terms, the model
  architecture, the task plan (scenario against the dataset's class count,
  setting, labeling, class order, label policy), the saliency folder (its
  maps are checked by `experiment.build`), and the pretrained weight file
  (read fully: layout, names, shapes). This module and those it imports load
  no TensorFlow, so `main` reports a bad config before TensorFlow loads.
* `experiment(exp)`: what needs the resolved experiment: frozen prefixes
  against the model's parameters, and every loss term of every task step
  traced once on abstract inputs (`jax.eval_shape`, no compute), so a bad
  loss option fails in seconds instead of after the whole base step, where a
  term that needs the teacher is first traced.

Workdir and checkpoint identity are checked by incseg_jax/workdir.py.
"""

from __future__ import annotations

import inspect
import math
import os

from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from incseg_jax import experiment as experiment_lib
from incseg_jax import losses as losses_lib
from incseg_jax import methods
from incseg_jax import models
from incseg_jax import memory as memory_lib
from incseg_jax import replay as replay_lib
from incseg_jax import sharding
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

# Numeric fields: (field, whether 0 is allowed, what it is); each must be finite and not negative. Without
# these checks a NaN or infinite learning rate trained to NaN, a negative one by gradient ascent (exit 0),
# and crop_size=0 surfaced as a non-finite loss.
# numpy refuses negative seeds; below 2**32 every generator here takes them (tf.data's seed * 1000 + task
# step stays an int64).
_SEED_LIMIT = 2 ** 32
_NUMERIC_FIELDS = (
    ("input.batch_size", False, "the training batch size"),
    ("eval_batch_size", False, "the evaluation batch size"),
    ("input.crop_size", False, "the training crop size in pixels"),
    ("input.scale_min", False, "the smallest random scale"),
    ("input.scale_max", False, "the largest random scale"),
    ("eval_bucket", True, "the evaluation size grouping (0: one padded shape)"),
    ("optim.momentum", True, "the SGD momentum"),
    ("optim.weight_decay", True, "the weight decay"),
    ("schedule.base_length", False, "the length of task step 0"),
    ("schedule.inc_length", False, "the length of each later task step"),
    ("schedule.base_lr", False, "the learning rate of task step 0"),
    ("schedule.inc_lr", False, "the learning rate of the later task steps"),
    ("schedule.end_lr", True, "the learning rate the poly schedule decays to"),
    ("schedule.power", True, "the poly schedule's exponent"),
    ("model.aspp_channels", False, "the decoder's channel count"),
    ("model.small_width", False, "resnet_small's stem width"),
    ("log_every", False, "train steps between log lines"),
    ("checkpoint_every", False, "train steps between periodic checkpoints"),
    ("progress_every_secs", False, "seconds between progress lines"),
)
# Tuple fields whose every element must be a positive finite number.
_POSITIVE_TUPLES = (("input.std", "the per-channel input standard deviations"),
                    ("model.small_blocks", "resnet_small's blocks per stage"),
                    ("model.atrous_rates", "the decoder's dilation rates"))


def config(cfg) -> None:
  """Checks everything the config alone decides (see the module docstring).

  Raises:
    ValueError: naming the field, the value and what is expected.
  """
  _check_values(cfg)
  _check_method(cfg)
  models.check_config(cfg.model)
  # The task plan (scenario against the dataset's class count, setting, labeling, class order, label policy),
  # before any data is built or read. Uniform pixel counts stand in for the training set's, which only a
  # "frequency" order needs: they check everything else.
  meta = registry.meta(cfg.dataset.name)
  experiment_lib.plan_only(cfg, meta, pixel_counts=np.ones(meta.num_fg + 1, np.int64))
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
  _check_numbers(cfg)
  if cfg.schedule.unit not in SCHEDULE_UNITS:
    raise ValueError(f"config.schedule.unit={cfg.schedule.unit!r}: expected steps, epochs or steps_per_class")
  sharding.check_batch_size(cfg.input.batch_size, "config.input.batch_size")
  sharding.check_batch_size(cfg.eval_batch_size, "config.eval_batch_size")


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_numbers(cfg) -> None:
  """Every numeric field in its range; one error lists every field at fault, each named.

  Raises:
    ValueError: e.g. "config.schedule.base_lr=-0.1: expected a positive finite number (the learning rate of
      task step 0)".
  """
  problems = []
  for path, zero_allowed, what in _NUMERIC_FIELDS:
    value = _field(cfg, path)
    if value is None:  # a field this config does not have
      continue
    if not _is_number(value) or not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
      bound = "a non-negative" if zero_allowed else "a positive"
      problems.append(f"config.{path}={value!r}: expected {bound} finite number ({what})")
  for path, what in (("seed", "the seed of data order, augmentation and initialisation"),
                     ("order_seed", "the seed of order=random")):
    value = _field(cfg, path)
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                  and 0 <= value < _SEED_LIMIT):
      problems.append(f"config.{path}={value!r}: expected an integer from 0 to 2**32 - 1 ({what})")
  for path in ("input.mean", *(p for p, _ in _POSITIVE_TUPLES)):
    value = _field(cfg, path)
    if not isinstance(value, (tuple, list)) or not all(_is_number(v) for v in value):
      continue  # None (a default) or not numbers: `_check_values` names the latter
    if path == "input.mean":
      if not all(math.isfinite(v) for v in value):
        problems.append(f"config.input.mean={tuple(value)}: expected finite numbers (the per-channel input means)")
      continue
    what = dict(_POSITIVE_TUPLES)[path]
    if not value or not all(math.isfinite(v) and v > 0 for v in value):
      problems.append(f"config.{path}={tuple(value)}: expected positive finite numbers ({what})")
  for path in ("input.mean", "input.std"):
    value = _field(cfg, path)
    if isinstance(value, (tuple, list)) and len(value) != 3:
      problems.append(f"config.{path}={tuple(value)}: expected 3 numbers (red, green, blue)")
  problems += _relations(cfg, problems)
  for term, weight in (cfg.get("losses") or {}).items():
    if not _is_number(weight) or not math.isfinite(weight) or weight < 0:
      problems.append(f"config.losses.{term}={weight!r}: expected a non-negative finite number (the weight of "
                      f"loss term {term!r}; 0 turns it off)")
  if problems:
    raise ValueError("; ".join(problems))


def _relations(cfg, problems: list[str]) -> list[str]:
  """Checks between fields that are each valid on their own."""
  bad = lambda path: any(p.startswith(f"config.{path}=") for p in problems)
  out = []
  crop, stride = cfg.input.crop_size, cfg.model.output_stride
  if not bad("input.crop_size") and _is_number(stride) and crop < stride:
    out.append(f"config.input.crop_size={crop}: expected at least config.model.output_stride={stride} (the "
               "network's feature maps would be empty)")
  lo, hi = cfg.input.scale_min, cfg.input.scale_max
  if not bad("input.scale_min") and not bad("input.scale_max") and lo > hi:
    out.append(f"config.input.scale_min={lo} is above config.input.scale_max={hi}: expected scale_min <= scale_max")
  if not bad("optim.momentum") and cfg.optim.momentum >= 1:
    out.append(f"config.optim.momentum={cfg.optim.momentum}: expected a number below 1 (the SGD momentum)")
  end = cfg.schedule.end_lr
  for path in ("schedule.base_lr", "schedule.inc_lr"):
    lr = _field(cfg, path)
    if not bad("schedule.end_lr") and not bad(path) and end > lr:
      out.append(f"config.schedule.end_lr={end} is above config.{path}={lr}: expected the poly schedule to decay "
                 "from the step's learning rate down to end_lr")
  return out


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
  head = cfg.model.get("head", "linear")
  if head != method.head:
    raise ValueError(f"config.model.head={head!r}, but method {cfg.method!r} trains the {method.head!r} head; "
                     "drop the override (the method sets model.head)")
  _check_replay(cfg, method)
  _check_saliency(cfg, method)
  _check_ewf(cfg)
  _check_memory(cfg)
  if method.joint and cfg.task != "joint":
    raise ValueError(f"method 'joint' trains all classes in one step, but config.task={cfg.task!r}; "
                     "use task=joint or drop the override")


def _check_replay(cfg, method) -> None:
  """`config.replay` (incseg_jax/replay.py): given when the method needs it, and its fields in range."""
  rp = cfg.get("replay")
  if method.replay and not (rp and rp.dir):
    raise ValueError(f"method {cfg.method!r} replays images of the old classes: pass "
                     "--config.replay.dir=DIR (one folder of images per old class, named as the dataset names "
                     "it; for shapes: python -m incseg_jax.tools.shapes_replay --out=DIR)")
  if not (rp and rp.dir):
    return
  for field in ("ratio_old", "ratio_new", "per_class"):
    value = rp[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < (1 if field == "ratio_new" else 0):
      raise ValueError(f"config.replay.{field}={value!r}: expected a {'positive' if field == 'ratio_new' else 'non-negative'} "
                       "integer")
  if rp.get("labeller", "learned") not in replay_lib.LABELLERS:
    raise ValueError(f"config.replay.labeller={rp.labeller!r}: expected one of {', '.join(replay_lib.LABELLERS)}")
  if rp.label not in replay_lib.LABEL_MODES:
    raise ValueError(f"config.replay.label={rp.label!r}: expected one of {', '.join(replay_lib.LABEL_MODES)}")
  if not isinstance(rp.mix_labels, bool):
    raise ValueError(f"config.replay.mix_labels={rp.mix_labels!r}: expected True or False")
  if replay_lib.batch_composition(cfg.input.batch_size, rp.ratio_old, rp.ratio_new) % jax.process_count():
    raise ValueError(f"config.replay.ratio_old : ratio_new = {rp.ratio_old} : {rp.ratio_new}: the replay images "
                     f"of a batch of {cfg.input.batch_size} do not split over {jax.process_count()} hosts")


def _check_saliency(cfg, method) -> None:
  """`config.dataset.saliency_dir` (incseg_jax/saliency.py): a folder when given, and given when needed.

  Only the folder itself: its maps are checked against the images when the
  experiment is built (`experiment.build`), still before anything trains.
  """
  directory = cfg.dataset.get("saliency_dir", "")
  if not isinstance(directory, str):
    raise ValueError(f"config.dataset.saliency_dir={directory!r}: expected a folder path (\"\": none)")
  path = os.path.expanduser(directory)
  if directory and not os.path.isdir(path):
    what = "a file, not a directory" if os.path.exists(path) else "not an existing directory"
    raise ValueError(f"config.dataset.saliency_dir={directory!r} is {what}; expected a folder with one <id>.png "
                     "saliency map per training image")
  if method.needs_saliency and not directory and cfg.dataset.name != "shapes":
    raise ValueError(f"method {cfg.method!r} trains with saliency maps: pass --config.dataset.saliency_dir=DIR, a "
                     "folder with one <id>.png per training image (for VOC, SSUL's saliency_map folder); only "
                     "shapes has maps built in")


def _check_memory(cfg) -> None:
  """`config.memory` (incseg_jax/memory.py): sizes in range, a known policy, not with replay."""
  mem = cfg.get("memory")
  if not mem or not mem.size:
    return
  for field in ("size", "per_batch"):
    value = mem[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ValueError(f"config.memory.{field}={value!r}: expected a non-negative integer")
  if mem.get("background", "keep") not in memory_lib.BACKGROUNDS:
    raise ValueError(f"config.memory.background={mem.background!r}: expected one of "
                     f"{', '.join(memory_lib.BACKGROUNDS)}")
  if mem.policy not in memory_lib.POLICIES:
    raise ValueError(f"config.memory.policy={mem.policy!r}: expected one of {', '.join(memory_lib.POLICIES)}")
  per_batch = mem.per_batch or cfg.input.batch_size // 2
  if not 0 < per_batch < cfg.input.batch_size or per_batch % jax.process_count():
    raise ValueError(f"config.memory.per_batch={mem.per_batch!r}: expected memory images per batch from 1 to "
                     f"config.input.batch_size - 1 = {cfg.input.batch_size - 1}, a multiple of the host count "
                     f"({jax.process_count()}) (0: half the batch)")
  if (cfg.get("replay") or {}).get("dir"):
    raise ValueError("config.memory.size and config.replay.dir both fill the extra slots of each batch: use one "
                     "(memory: stored training images; replay: a folder of unlabelled images)")


def _check_ewf(cfg) -> None:
  """`config.ewf`: the fusion weight and the fused fraction are numbers in [0, 1]."""
  for field in ("weight", "top_fraction"):
    value = (cfg.get("ewf") or {}).get(field, 0.0)
    if not _is_number(value) or not 0 <= value <= 1:
      raise ValueError(f"config.ewf.{field}={value!r}: expected a number from 0 to 1 (0: "
                       + ("the paper's sqrt(new / (new + old))" if field == "weight" else "fuse every weight") + ")")


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
  for key in ("logits", "logits_os", "scores"):
    if key not in out:  # scores: SSUL's heads only
      continue
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
  saliency = jax.ShapeDtypeStruct((batch, size, size), jnp.uint8) if exp.saliency is not None else None
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

      def term(s, t, y, x, state, sal, fn=fn, opts=opts, info=spec.info, extras=extras):
        inputs = losses_lib.LossInputs(student=s, teacher=t, labels=y, images=x, task=info, extras=extras,
                                       state=state, saliency=sal)
        return fn(inputs, **opts)

      try:
        result = jax.eval_shape(term, student, teacher, labels, images, states.get(name), saliency)
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
