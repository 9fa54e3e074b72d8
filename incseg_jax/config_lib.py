"""Config helpers shared by every `configs/<dataset>.py`.

Owns: parsing the config-file argument (`key=value,...`), the default
experiment config (every field the trainer reads, with its meaning), the
`runlocal` shrink, and validation of a finished config. Dataset config files
only change what differs (dataset, model size, schedule).
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections

from incseg_jax import methods

# Fields that may differ between two invocations on the same workdir without
# making it a different experiment (logging cadence, evaluation batch size,
# TensorBoard images).
VOLATILE_FIELDS = ("log_every", "checkpoint_every", "eval_batch_size", "progress_every_secs", "tb_images",
                   "distributed")


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `a=1,b=x,flag` (the part after `:` in `--config=file.py:arg`).

  Args:
    arg: the argument string, may be None or empty.
    **defaults: every accepted key with its default; the type of the default
      decides how a value is parsed (bool keys may be given bare, as `runlocal`).

  Returns:
    A ConfigDict with one field per default.

  Raises:
    ValueError: an unknown key, or a value that does not parse as the default's
      type.
  """
  result = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return result
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(
          f"config argument {arg!r}: unknown key {key!r}; valid keys: "
          f"{', '.join(sorted(defaults))}")
    default = defaults[key]
    if isinstance(default, bool):
      if not sep:
        parsed = True
      elif value.lower() in ("1", "true", "yes"):
        parsed = True
      elif value.lower() in ("0", "false", "no"):
        parsed = False
      else:
        raise ValueError(f"config argument {key}={value!r}: expected a boolean")
    elif isinstance(default, int):
      try:
        parsed = int(value)
      except ValueError:
        raise ValueError(f"config argument {key}={value!r}: expected an integer") from None
    else:
      parsed = value
    result[key] = parsed
  return result


def base_config() -> ml_collections.ConfigDict:
  """The complete default experiment config; dataset files override parts."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "shapes"
  c.dataset.builder_config = "default"
  c.dataset.data_dir = ""  # "" -> $INCSEG_DATA_DIR or ~/tensorflow_datasets.
  c.dataset.train_split = "train"
  c.dataset.eval_split = "val"
  # Real datasets: the publisher's directory (tfds manual_dir), read once to
  # build the records into data_dir; see incseg_jax/data/folder.py.
  c.dataset.manual_dir = ""
  c.dataset.skip_bad_records = False  # leave unusable records out (counted) instead of failing
  # Rebuild the records from manual_dir although they exist (after manual_dir
  # changed or its files did); a run never rebuilds them unasked.
  c.dataset.rebuild = False
  # ADE20K / Cityscapes: label 0 is "void/other"; "background" trains and
  # evaluates it as the background channel (PLOP/UCD), "ignore" drops it (MiB).
  c.dataset.void = "background"
  # Saliency maps of the training images (SSUL's unknown class; incseg_jax/saliency.py): a folder with
  # <example id>.png per training image, nonzero = salient (VOC: SSUL's saliency_map folder). Read when the
  # method needs them or when given; "" with shapes: approximate maps built once beside the dataset.
  c.dataset.saliency_dir = ""

  # Task plan (see incseg_jax/tasks/).
  c.task = "15-1"
  c.setting = "overlapped"
  c.labeling = ""  # only for setting=sequential: keep | background ("" = keep).
  c.class_order = "dataset"  # dataset | frequency | random | "3,1,2,..."
  c.order_seed = 0

  # Method: chosen in the config argument; it fills `losses` with its terms.
  c.method = "ft"
  c.losses = ml_collections.ConfigDict()  # term name -> weight.
  # term name -> {option: value}. Named reference-code bugs (docs/reference_code.md,
  # "Reference bugs") are options of the term they change, off by default (docs/methods.md).
  c.loss_options = ml_collections.ConfigDict()
  # Parameter-path prefixes frozen at steps > 0 on top of the method's own
  # (e.g. ("backbone/stem",)); see incseg_jax/methods/ilt.py for EF / E2LF.
  c.freeze = ()

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "resnet101"
  c.model.decoder = "deeplab_v3"
  c.model.output_stride = 16
  c.model.aspp_channels = 256
  c.model.atrous_rates = ml_collections.config_dict.placeholder(tuple)
  c.model.small_width = 16
  c.model.small_blocks = (1, 1, 1, 1)
  c.model.bn_frozen = False
  # linear: a 1x1 conv per step | ssul: 3x3 conv + BN + ReLU + 1x1 per step, background and unknown heads
  # apart, sigmoid scores (set by the method: `ssul`).
  c.model.head = "linear"
  c.model.activation = "relu"  # relu | leaky_relu (in-place-ABN ImageNet weights use leaky ReLU 0.01)
  # Computation dtype of convolutions and activations: float32 | bfloat16 | float16. Parameters,
  # BatchNorm statistics, optimizer state and every loss stay float32 (the model's outputs are cast).
  c.model.dtype = "float32"

  # ImageNet-pretrained backbone weights (.pth with torch installed, .npz,
  # .safetensors; torchvision or in-place-ABN layout): see models/pretrained.py.
  c.pretrained = ""

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = 24  # global, split over devices / hosts.
  c.input.crop_size = 512
  c.input.scale_min = 0.5
  c.input.scale_max = 2.0
  c.input.flip = True
  c.input.mean = (0.485, 0.456, 0.406)  # ImageNet statistics, RGB in [0, 1].
  c.input.std = (0.229, 0.224, 0.225)
  c.eval_batch_size = 24
  # Evaluation is at original resolution, padded with the ignore label: 0 = one
  # padded shape (the split's largest H and W); > 0 = group images by size
  # rounded up to this multiple (one compiled shape per group).
  c.eval_bucket = 0

  c.optim = ml_collections.ConfigDict()
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 1e-4

  # Polynomial decay per task step: lr(t) = end + (start - end)(1 - t/T)^power.
  # unit: "epochs" (T = length * ceil(images / batch)), "steps" (T = length),
  # or "steps_per_class" (T = length * new classes; the first paper's |U_k|*1000).
  c.schedule = ml_collections.ConfigDict()
  c.schedule.unit = "epochs"
  c.schedule.base_length = 30
  c.schedule.inc_length = 30
  c.schedule.base_lr = 1e-2
  c.schedule.inc_lr = 1e-3
  c.schedule.end_lr = 0.0
  c.schedule.power = 0.9

  # RECALL-style replay (incseg_jax/replay.py): unlabelled images of every old
  # class, one folder per class named as the dataset names it, mixed into the
  # batches of incremental steps and labelled there by the previous model.
  c.replay = ml_collections.ConfigDict()
  c.replay.dir = ""  # "" = no replay; `recall` needs it
  c.replay.ratio_old = 4  # replay : new images in each batch (the RECALL code's interleave ratios 4 : 4)
  c.replay.ratio_new = 4
  c.replay.label = "class"  # class: {background, the folder's class} | argmax: every old class
  # learned: the model right after the step that learned a class labels its images once (as RECALL's
  # helper decoders); previous: the previous model labels them again at every step
  c.replay.labeller = "learned"
  c.replay.mix_labels = True  # new images' background labelled with the previous model's argmax
  c.replay.per_class = 0  # read at most this many images per class folder (0: all)

  # Exemplar memory (SSUL-M's, incseg_jax/memory.py): images of the classes seen so
  # far, kept with the labels they had, replayed in the batches of later steps.
  c.memory = ml_collections.ConfigDict()
  c.memory.size = 0  # images kept (0 = no memory; SSUL-M on VOC: 100)
  c.memory.policy = "balanced"  # balanced (SSUL-M's class rounds) | random
  c.memory.per_batch = 0  # memory images in each batch (0 = half the batch, as the SSUL code)
  # keep: memory labels as stored | ignore: their background pixels do not count (it hides later classes)
  c.memory.background = "keep"

  # EWF's weight fusion after each incremental step (`+ewf`, incseg_jax/methods/ewf.py).
  c.ewf = ml_collections.ConfigDict()
  c.ewf.weight = 0.0  # share of the new weights; 0 = sqrt(new classes / (new + old classes)), the paper's
  c.ewf.top_fraction = 0.0  # 0 = fuse every weight (paper); 0.45 = the code's threshold_choice

  # Multi-process runs (incseg_jax/distributed.py). Empty: one process, or the
  # launcher's environment (TPU pod, SLURM, Open MPI) when it announces several.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.auto = False  # jax.distributed.initialize() with the platform's auto-detection (TPU pods)
  c.distributed.coordinator_address = ""  # HOST:PORT of process 0
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.initialization_timeout = 300  # seconds to wait for every process to join
  c.distributed.allow_resize = False  # resume a workdir on another process count

  c.init_from = ""  # another run's workdir: reuse its step-0 model.
  # A non-finite loss or gradient: "stop" the run naming the step and term, or
  # "skip" the batch (no update; counted as train/skipped_batches).
  c.nonfinite = "stop"
  c.log_every = 50
  c.checkpoint_every = 500  # train steps between periodic checkpoints.
  c.progress_every_secs = 30.0
  # TensorBoard images at each task step's evaluation: the first N images of the
  # eval split, their ground truth and the step's prediction (palette colours;
  # no metric changes). 0 = none. Configs saved without it read as 0.
  c.tb_images = 4
  return c


# Training protocols of the papers, as config overrides ("section.field": value).
PROTOCOLS = {
    # The first paper (sec. 5.2): DeepLab-v2 ResNet-101 at output stride 8,
    # frozen BatchNorm (public ILT code), SGD momentum 0.9 (no Nesterov), weight
    # decay 1e-4, batch 4, 321 crops, scale 0.5-1.5, flips; step 0 at lr 1e-4 and
    # later steps at 5e-5, poly (0.9) to 1e-6 over |S0|*1000 / |U_k|*1000 steps.
    # The paper starts from ImageNet weights: add --config.pretrained=FILE.
    "ilt": {
        "model.backbone": "resnet101", "model.decoder": "deeplab_v2", "model.output_stride": 8,
        "model.aspp_channels": 256, "model.atrous_rates": (6, 12, 18, 24), "model.bn_frozen": True,
        "optim.momentum": 0.9, "optim.nesterov": False, "optim.weight_decay": 1e-4,
        "input.batch_size": 4, "input.crop_size": 321, "input.scale_min": 0.5, "input.scale_max": 1.5,
        "input.flip": True, "schedule.unit": "steps_per_class", "schedule.base_length": 1000,
        "schedule.inc_length": 1000, "schedule.base_lr": 1e-4, "schedule.inc_lr": 5e-5, "schedule.end_lr": 1e-6,
        "schedule.power": 0.9,
    },
    # The second paper (sec. 4.2; MiB/PLOP/UCD code, docs/reference_code.md §8):
    # DeepLab-v3 ResNet-101 at output stride 16 (ASPP 6/12/18, 256 channels),
    # trained BatchNorm, SGD Nesterov 0.9, weight decay 1e-4, poly lr per
    # iteration, 1e-2 at step 0 and 1e-3 after, batch 24, 30 epochs, random
    # resized 512 crops (scale 0.5-2.0), flips. (ADE20K: 60 epochs, and UCD keeps
    # 1e-2 after step 0: override schedule.base_length/inc_length/inc_lr.)
    "ucd": {
        "model.backbone": "resnet101", "model.decoder": "deeplab_v3", "model.output_stride": 16,
        "model.aspp_channels": 256, "model.atrous_rates": (6, 12, 18), "model.bn_frozen": False,
        "optim.momentum": 0.9, "optim.nesterov": True, "optim.weight_decay": 1e-4,
        "input.batch_size": 24, "input.crop_size": 512, "input.scale_min": 0.5, "input.scale_max": 2.0,
        "input.flip": True, "schedule.unit": "epochs", "schedule.base_length": 30, "schedule.inc_length": 30,
        "schedule.base_lr": 1e-2, "schedule.inc_lr": 1e-3, "schedule.end_lr": 0.0, "schedule.power": 0.9,
    },
}


def apply_protocol(c: ml_collections.ConfigDict, name: str) -> None:
  """Applies a paper's training protocol (see PROTOCOLS); "ours" changes nothing.

  Raises:
    ValueError: unknown protocol name.
  """
  if name == "ours":
    return
  if name not in PROTOCOLS:
    raise ValueError(f"protocol={name!r}: expected 'ours' or one of {sorted(PROTOCOLS)}")
  for path, value in PROTOCOLS[name].items():
    section, field = path.split(".")
    c[section][field] = value


def apply_runlocal(c: ml_collections.ConfigDict) -> None:
  """Shrinks a config in place to a seconds-long smoke run on a CPU."""
  if c.dataset.name == "shapes":
    c.dataset.builder_config = "tiny"
  c.model.backbone = "resnet_small"
  c.model.small_width = 8
  c.model.small_blocks = (1, 1, 1, 1)
  c.model.output_stride = 8
  c.model.aspp_channels = 16
  c.model.atrous_rates = (1, 2, 3) if c.model.decoder == "deeplab_v3" else (1, 2, 3, 4)
  c.input.batch_size = 4
  c.input.crop_size = min(c.input.crop_size, 64)
  c.eval_batch_size = 8
  c.schedule.unit = "steps"
  c.schedule.base_length = 3
  c.schedule.inc_length = 2
  if c.dataset.name == "shapes":
    c.pretrained = ""  # a seconds-long smoke run; the built-in backbone takes minutes to build once
  c.log_every = 1
  c.checkpoint_every = 2


def to_json(c: ml_collections.ConfigDict) -> str:
  """Stable JSON text of a config (sorted keys), used to compare experiments."""
  return json.dumps(json.loads(c.to_json_best_effort()), sort_keys=True, indent=1)


def experiment_fields(c: ml_collections.ConfigDict) -> dict:
  """The config as a dict without the fields that do not change the result."""
  d = json.loads(c.to_json_best_effort())
  for key in VOLATILE_FIELDS:
    d.pop(key, None)
  d.get("dataset", {}).pop("rebuild", None)  # how the records are made, not what they are
  return d


def defaults_dict() -> dict:
  """The default config as a plain dict (the `defaults` of `files.json_diff` for saved configs)."""
  return experiment_fields(base_config())


# The removed `config.quirks.<switch>` -> the (term, option) of
# `config.loss_options` that replaced it.
MOVED_QUIRKS = {
    "ucd_bilinear_labels": ("ucd", "bilinear_labels"),
    "ucd_unshifted_negatives": ("ucd", "unshifted_negatives"),
    "plop_histogram_median": ("plop_ce", "histogram_median"),
}


def _migrate_quirks(d: dict) -> None:
  """Moves an older version's `quirks` section into `loss_options`, in place.

  Each switch becomes its term's option when the saved config has that term,
  so an old run whose switches were all off compares equal to today's config
  of the same method (which lists the options, off). An off switch of a term
  the run did not use had no effect and is dropped.

  Raises:
    ValueError: a switch that was on but cannot be placed (its term is not in
      the saved `loss_options`, or the switch is unknown).
  """
  quirks = d.pop("quirks", None) or {}
  options = d.get("loss_options") or {}
  for name, value in quirks.items():
    if name not in MOVED_QUIRKS:
      if value:
        raise ValueError(f"saved config: config.quirks.{name}={value!r} is no longer supported")
      continue
    term, option = MOVED_QUIRKS[name]
    if term in options:
      if option in options[term] and options[term][option] != value:
        raise ValueError(f"saved config: config.quirks.{name}={value!r} contradicts "
                         f"config.loss_options.{term}.{option}={options[term][option]!r}")
      options[term][option] = value
    elif value:
      raise ValueError(f"saved config: config.quirks.{name}=True moved to config.loss_options.{term}.{option}, "
                       f"but the saved config has no {term!r} loss term (loss_options: {sorted(options)}); "
                       "the switch had no effect on that run: remove it from the saved config.json")


def from_json(text: str) -> ml_collections.ConfigDict:
  """Rebuilds a config saved with `to_json` (see `from_dict`).

  Raises:
    ValueError: not JSON, or an old `quirks` switch that was on and cannot be
      migrated. (Readers of a workdir's config.json parse it with
      `files.read_json`, which names a damaged file, and call `from_dict`.)
  """
  return from_dict(json.loads(text))


def from_dict(saved: dict) -> ml_collections.ConfigDict:
  """Rebuilds a config from the parsed JSON `to_json` wrote (lists come back as tuples).

  A config saved by an older version is migrated: its `quirks` section moves
  into `loss_options` (see `MOVED_QUIRKS`).

  Raises:
    ValueError: an old `quirks` switch that was on and cannot be migrated.
  """

  def fix(x):
    if isinstance(x, dict):
      return {k: fix(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(fix(v) for v in x)
    return x

  d = fix(saved)
  _migrate_quirks(d)
  return ml_collections.ConfigDict(d)



def dataset_config(arg: str | None, *, dataset: str, protocol: str, task: str, order: str = "dataset",
                   builder_config: str = "default", train_split: str = "train", eval_split: str = "val",
                   task_aliases: dict[str, str] | None = None, eval_bucket: int = 0, eval_batch_size: int = 0,
                   protocol_overrides: dict[str, dict[str, Any]] | None = None) -> ml_collections.ConfigDict:
  """The experiment config of a real dataset (shared by configs/voc.py etc.).

  Args:
    arg: the config argument (`task=15-1,method=mib,...`; keys as in
      configs/shapes.py plus `manual_dir` and `data_dir`).
    dataset: registry name.
    protocol: default training protocol ("ucd" or "ilt", see PROTOCOLS).
    task: default scenario.
    order: default class order.
    builder_config: the dataset builder's config ("auto" lets VOC pick SBD).
    train_split: training split name.
    eval_split: evaluation split name.
    task_aliases: scenario names of a paper mapped to ours (e.g. MSRC's
      "20-1" is our "19-1").
    eval_bucket: see base_config (0 = one padded evaluation shape).
    eval_batch_size: evaluation batch size (0 = the protocol's batch size).
    protocol_overrides: protocol name -> {"section.field": value} applied
      after that protocol (e.g. ADE20K's 60 epochs under "ucd").

  Returns:
    The config; `runlocal` shrinks model and schedule but keeps the dataset.
  """
  arg = parse_arg(arg, task=task, method="ft", setting="overlapped", labeling="", order=order,
                  conventions="code", protocol=protocol, manual_dir="", data_dir="", runlocal=False)
  c = base_config()
  c.dataset.name = dataset
  c.dataset.builder_config = builder_config
  c.dataset.train_split = train_split
  c.dataset.eval_split = eval_split
  c.dataset.manual_dir = arg.manual_dir
  c.dataset.data_dir = arg.data_dir
  c.task = (task_aliases or {}).get(arg.task, arg.task)
  c.method = arg.method
  c.setting = arg.setting
  c.labeling = arg.labeling
  c.class_order = arg.order.replace(";", ",")
  methods.apply_to_config(c, arg.conventions)
  apply_protocol(c, arg.protocol)
  for path, value in (protocol_overrides or {}).get(arg.protocol, {}).items():
    section, field = path.split(".")
    c[section][field] = value
  c.eval_bucket = eval_bucket
  c.eval_batch_size = eval_batch_size or c.input.batch_size
  if arg.runlocal:
    apply_runlocal(c)
  return c
