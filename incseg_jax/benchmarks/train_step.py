"""Cost of one incremental train step: compile time, step time, FLOPs, MFU, memory.

Builds exactly what `train.train_task_step` runs at task step 1 of a config:
the config's `StepSpec` (model with the step's new head, the previous step's
model as teacher, the method's active loss terms, frozen prefixes, method
states), the student initialised from the teacher by `train.init_student`
(the method's head init included), the optimizer of `train_step.make_optimizer`
and the sharded jitted step of `train_step.make_train_step`. Batches are
synthetic (random images and labels of the config's crop and batch size), so
no dataset is read: the plan comes from the dataset's metadata alone
(`experiment.plan_only`). Printed, per setting:

* build time (spec, variables, optimizer state), compile time and the first
  step; their sum is the time to the first step. Whether the compile hit the
  persistent compilation cache (`runtime.setup`, $INCSEG_JAX_CACHE) is shown:
  run the same command twice in separate processes, the first time with an
  empty cache dir, to see cold vs warm (docs/benchmarks.md).
* median step time (wall and process CPU time) and images/s, over `--steps`
  steps after the first step and `--warmup` more;
* FLOPs per step from the compiled program's `cost_analysis()`, and MFU
  against `--peak_tflops`, `--device_kind`'s entry of `PEAK_TFLOPS` or the
  detected device's entry;
* peak device memory from the compiled program's `memory_analysis()`;
* whether the input pipeline keeps up: the real tf.data pipeline of the
  config's dataset timed at the config's crop and batch size when its records
  are built, else "not measured" (TensorFlow is imported for this alone, and
  for the next line's image counts: the step needs none);
* the config's whole schedule in train steps and its duration at the median
  step time (`protocol`);
* with `--compare=torch`, the same step in plain PyTorch
  (`incseg_jax.benchmarks.torch_twin`, run by `--torch_python`) and the ratio.
* with `--profile=DIR`, a profiler trace of a few steps and the time of the
  compiled ops by phase (student forward, backward, teacher, update) and kind
  (convolution vs the rest).

Usage:
  python -m incseg_jax.benchmarks.train_step \
      --config=configs/voc.py:task=15-1,method=lwf \
      --config.model.backbone=resnet50 --config.input.batch_size=2 --config.input.crop_size=128 \
      [--steps=10] [--warmup=2] [--teacher=auto|on|off] \
      [--peak_tflops=X | --device_kind=h100|h200|a100|v4|v5e] \
      [--compare=torch --torch_python=/path/to/venv-with-torch/bin/python] [--threads=N] \
      [--json=FILE] [--profile=DIR]
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import glob
import gzip
import importlib
import importlib.util
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

from incseg_jax import allocator
from incseg_jax import runtime

def _define_flags() -> dict[str, Any]:
  """The command's flags (defined only when run as a program: importing this module, e.g. from the tests
  next to other commands, must not define `--config` or `--json` a second time)."""
  return {
      "config": config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].", lock_config=True),
      "steps": flags.DEFINE_integer("steps", 10, "Timed train steps."),
      "warmup": flags.DEFINE_integer("warmup", 2, "Untimed steps after the first one."),
      "teacher": flags.DEFINE_string(
          "teacher", "auto", "auto: as training (the step's teacher, whose forward XLA drops when no term reads "
          "it); on: require a term that reads the teacher; off: no teacher, its terms left out."),
      "peak_tflops": flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device for MFU (0: from --device_kind)."),
      "device_kind": flags.DEFINE_string("device_kind", "", "Device of the peak table: h100|h200|a100|v4|v5e ('': "
                                         "detected from the device, if known)."),
      "compare": flags.DEFINE_string("compare", "", "'torch': also time the same step in plain PyTorch."),
      "torch_python": flags.DEFINE_string("torch_python", "", "Python interpreter with torch for --compare=torch "
                                          "('': this one)."),
      "torch_malloc": flags.DEFINE_string(
          "torch_malloc", "same", "The torch twin's C allocator settings: same (this process's, incseg_jax.allocator,"
          " on a CPU twin) or system (glibc's defaults, as a plain torch script runs)."),
      "threads": flags.DEFINE_integer("threads", 0, "CPU threads for the computation (XLA, torch) and tf.data (0: "
                                      "default)."),
      "pipeline_batches": flags.DEFINE_integer("pipeline_batches", 20, "Batches timed of the real input pipeline "
                                               "(0: skip)."),
      "json": flags.DEFINE_string("json", "", "Also write the results as JSON to this file."),
      "profile": flags.DEFINE_string("profile", "", "Write a profiler trace of a few steps here and print the op "
                                     "breakdown."),
  }


_FLAGS: dict[str, Any] = {}


# Dense bf16 peak per chip, TFLOP/s, from the vendors' published figures.
PEAK_TFLOPS = {
    # NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: BF16 Tensor Core 1,979 TFLOPS "with sparsity"; dense is half.
    "h100": 989.5,
    # NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: BF16 Tensor Core 1,979 TFLOPS "with sparsity"; dense is half.
    "h200": 989.5,
    # NVIDIA A100 Tensor Core GPU datasheet: BF16 Tensor Core 312 TFLOPS (624 with sparsity).
    "a100": 312.0,
    # Google Cloud TPU v4 documentation (system architecture): 275 TFLOPS peak bf16 per chip.
    "v4": 275.0,
    # Google Cloud TPU v5e documentation: 197 TFLOPS peak bf16 per chip.
    "v5e": 197.0,
}
TEACHER_MODES = ("auto", "on", "off")
COMPARE_WITH = ("", "torch")
TORCH_MALLOC = ("same", "system")


@dataclasses.dataclass(frozen=True)
class Options:
  """The benchmark's own flags (see the flag definitions)."""
  steps: int = 10
  warmup: int = 2
  teacher: str = "auto"
  peak_tflops: float = 0.0
  device_kind: str = ""
  compare: str = ""
  torch_python: str = ""
  torch_malloc: str = "same"
  threads: int = 0
  pipeline_batches: int = 20
  json: str = ""
  profile: str = ""


def check_options(opts: Options) -> None:
  """Raises ValueError naming the first flag whose value is out of range."""
  if not isinstance(opts.steps, int) or opts.steps < 1:
    raise ValueError(f"--steps={opts.steps}: expected a positive integer (timed train steps)")
  if not isinstance(opts.warmup, int) or opts.warmup < 0:
    raise ValueError(f"--warmup={opts.warmup}: expected a non-negative integer (untimed steps after the first)")
  if opts.teacher not in TEACHER_MODES:
    raise ValueError(f"--teacher={opts.teacher!r}: expected one of {', '.join(TEACHER_MODES)}")
  if not math.isfinite(opts.peak_tflops) or opts.peak_tflops < 0:
    raise ValueError(f"--peak_tflops={opts.peak_tflops}: expected a positive finite number of TFLOP/s per device "
                     "(0: from --device_kind)")
  if opts.device_kind and opts.device_kind.lower() not in PEAK_TFLOPS:
    raise ValueError(f"--device_kind={opts.device_kind!r} is not in the peak table; expected one of "
                     f"{', '.join(PEAK_TFLOPS)}, or pass --peak_tflops=X")
  if opts.peak_tflops and opts.device_kind:
    raise ValueError(f"--peak_tflops={opts.peak_tflops} and --device_kind={opts.device_kind}: expected one of them "
                     "(both name the peak)")
  if opts.compare not in COMPARE_WITH:
    raise ValueError(f"--compare={opts.compare!r}: expected 'torch' or nothing")
  if opts.torch_malloc not in TORCH_MALLOC:
    raise ValueError(f"--torch_malloc={opts.torch_malloc!r}: expected one of {', '.join(TORCH_MALLOC)}")
  if opts.torch_python and opts.compare != "torch":
    raise ValueError(f"--torch_python={opts.torch_python}: only used with --compare=torch")
  if not isinstance(opts.threads, int) or opts.threads < 0:
    raise ValueError(f"--threads={opts.threads}: expected a non-negative integer (0: the default thread count)")
  if not isinstance(opts.pipeline_batches, int) or opts.pipeline_batches < 0:
    raise ValueError(f"--pipeline_batches={opts.pipeline_batches}: expected a non-negative integer (0: skip)")


def detect_kind(device_kind: str) -> str | None:
  """The `PEAK_TFLOPS` key of a `jax.Device.device_kind` string, or None when the table lacks it."""
  s = device_kind.lower()
  for key, needles in (("h100", ("h100",)), ("h200", ("h200",)), ("a100", ("a100",)), ("v4", ("tpu v4",)),
                       ("v5e", ("v5 lite", "v5e", "v5litepod"))):
    if any(n in s for n in needles):
      return key
  return None


def resolve_peak(peak_tflops: float, device_kind: str, detected: str) -> tuple[float | None, str]:
  """(peak TFLOP/s per device or None, where it comes from)."""
  if peak_tflops:
    return float(peak_tflops), "--peak_tflops"
  if device_kind:
    return PEAK_TFLOPS[device_kind.lower()], f"--device_kind={device_kind.lower()} (bf16 dense)"
  key = detect_kind(detected)
  if key:
    return PEAK_TFLOPS[key], f"detected {detected!r} = {key} (bf16 dense)"
  return None, f"no peak known for {detected!r}: pass --peak_tflops or --device_kind"


def mfu(flops: float | None, step_seconds: float, peak_tflops: float | None) -> float | None:
  """Model FLOPs utilisation: FLOPs per step / (seconds per step x peak FLOP/s); None when a factor is unknown."""
  if not flops or not peak_tflops or step_seconds <= 0:
    return None
  return flops / step_seconds / (peak_tflops * 1e12)


# ---------------------------------------------------------------------------------------------------------------
# Building the step without data.


@dataclasses.dataclass
class Bench:
  """The compiled-to-be step and its arguments."""
  config: Any
  spec: Any
  teacher_status: str
  teacher_computed: bool
  terms: tuple
  step_fn: Any
  state: Any
  teacher_vars: Any
  batches: list
  host_batches: list
  key: Any
  extras: Any
  build_s: float
  notes: list


def _dataless_config(cfg) -> tuple[Any, list[str]]:
  """A copy of `cfg` that builds without data, and what was changed for that.

  The pretrained file only sets initial weights (the step's cost does not
  depend on them) and a frequency order needs the training pixel counts (the
  classes per step, hence the cost, are those of any order).
  """
  import copy  # pylint: disable=g-import-not-at-top
  c = copy.deepcopy(cfg)
  notes = []
  with c.unlocked():
    if c.get("pretrained"):
      notes.append(f"random weights instead of config.pretrained={c.pretrained!r} (the cost does not depend on them)")
      c.pretrained = ""
    if c.class_order == "frequency":
      notes.append("class order 'dataset' instead of 'frequency' (needs the data; the classes per step are the same)")
      c.class_order = "dataset"
  return c, notes


def _dataless_experiment(cfg):
  """The `experiment.Experiment` of a `_dataless_config`, from the dataset's metadata alone (no data read).

  Its training indices are placeholders, one batch per task step: only their count enters a `StepSpec`,
  through a schedule in epochs, which is therefore not the data's here.
  """
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from incseg_jax import experiment as experiment_lib
  from incseg_jax import methods
  from incseg_jax.data import registry
  # pylint: enable=g-import-not-at-top
  meta = registry.meta(cfg.dataset.name)
  plan = experiment_lib.plan_only(cfg, meta)
  return experiment_lib.Experiment(config=cfg, meta=meta, train_split=None, eval_split=None, plan=plan,
                                   method=methods.get(cfg.method),
                                   step_indices=[np.arange(cfg.input.batch_size) for _ in plan.steps])


def synthetic_batches(spec, cfg, count: int, seed: int = 0) -> list[dict]:
  """`count` host batches: normal images and labels of {background, the step's new channels}, 5% void."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  b, s = cfg.input.batch_size // jax.process_count(), cfg.input.crop_size
  channels = np.asarray((0,) + tuple(spec.info.new_channels), np.int32)
  out = []
  for _ in range(count):
    labels = channels[rng.integers(0, len(channels), (b, s, s))]
    labels[rng.random((b, s, s)) < 0.05] = spec.info.ignore_label
    out.append({"image": rng.standard_normal((b, s, s, 3), dtype=np.float32), "label": labels})
  return out


def build(cfg, teacher_mode: str, mesh) -> Bench:
  """Everything `train.train_task_step` builds for task step 1, on synthetic batches (see module doc).

  Raises:
    ValueError: a config `validate.config` refuses, a plan with one task
      step, a method that replays images, or a teacher mode the step's terms
      do not allow.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from incseg_jax import losses as losses_lib
  from incseg_jax import methods
  from incseg_jax import models
  from incseg_jax import sharding
  from incseg_jax import train as train_lib
  from incseg_jax import train_step as ts
  from incseg_jax import validate
  # pylint: enable=g-import-not-at-top
  t0 = time.perf_counter()
  cfg, notes = _dataless_config(cfg)
  with contextlib.redirect_stdout(io.StringIO()):  # its note on random weights is about training, not cost
    validate.config(cfg)
  method = methods.get(cfg.method)
  if method.replay:
    raise ValueError(f"config.method={cfg.method!r} trains on replay images, which synthetic batches do not carry; "
                     "benchmark the method without replay (e.g. its distillation alone)")
  exp = _dataless_experiment(cfg)
  if exp.num_steps < 2:
    raise ValueError(f"config.task={cfg.task!r} has one task step; the benchmark times task step 1 (an incremental "
                     "step with a teacher): expected a scenario with two or more steps, e.g. task=15-1")
  spec = exp.step(1)
  terms = tuple(spec.terms)
  readers = [name for name, _, _ in terms if losses_lib.needs_teacher(name)]
  teacher_model = spec.teacher_model
  if teacher_mode == "on" and not readers:
    raise ValueError(f"--teacher=on: no loss term of method {cfg.method!r} reads the teacher at task step 1 (terms: "
                     f"{', '.join(t for t, _, _ in terms)}), so XLA drops its forward; pick a distillation method "
                     "(e.g. method=lwf or method=mib) or --teacher=auto")
  if teacher_mode == "off":
    terms = tuple(t for t in terms if t[0] not in readers)
    if not terms:
      raise ValueError(f"--teacher=off: every loss term of method {cfg.method!r} reads the teacher; nothing to train")
    teacher_model = None
    status = f"off (left out: {', '.join(readers)})" if readers else "off"
  elif readers:
    status = f"forward computed (read by {', '.join(readers)})"
  else:
    status = "passed as in training, read by no term (XLA drops its forward)"

  base_key = jax.random.fold_in(jax.random.key(cfg.seed), spec.index)
  # In training the teacher is step 0's checkpoint; any values cost the same, so a fresh init stands in.
  teacher_host = jax.device_get(models.init_variables(spec.teacher_model, jax.random.fold_in(base_key, 7),
                                                      cfg.input.crop_size))
  variables = train_lib.init_student(exp, spec, teacher_host, jax.random.fold_in(base_key, 1 << 30),
                                     load_pretrained=False)
  previous = train_lib.init_states(exp.step(0), teacher_host["params"], None, None) if spec.states else None
  method_state = train_lib.init_states(spec, variables["params"], teacher_host, previous) if spec.states else None
  schedule = ts.lr_schedule(spec.learning_rate, cfg.schedule.end_lr, cfg.schedule.power, spec.num_train_steps)
  tx = ts.make_optimizer(cfg.optim, schedule, variables["params"], spec.frozen, spec.lr_scales)
  state = ts.TrainState(step=np.int32(0), params=variables["params"], batch_stats=variables.get("batch_stats", {}),
                        opt_state=tx.init(variables["params"]), skipped=np.int32(0), method_state=method_state)
  state = sharding.put_replicated(state, mesh)
  teacher_vars = sharding.put_replicated(teacher_host, mesh) if teacher_model is not None else None
  # The model training runs: the method's variant where it has one (RCIL's two branches).
  step_fn = ts.make_train_step(spec.train_model, teacher_model, terms, spec.info, tx, schedule, spec.frozen,
                               spec.states)
  host_batches = synthetic_batches(spec, cfg, 2)
  batches = [sharding.put_batch(b, mesh) for b in host_batches]
  extras = None
  if method.prepare is not None and teacher_model is not None:
    forward = ts.make_teacher_forward(spec.teacher_model)
    ctx = methods.PrepareContext(
        teacher_forward=lambda images: forward(teacher_vars, sharding.put_batch({"image": images}, mesh)["image"]),
        batches=lambda: iter(host_batches), task=spec.info, options=cfg.loss_options.to_dict())
    extras = sharding.put_replicated(dict(method.prepare(ctx)), mesh)
  jax.block_until_ready((state, teacher_vars, batches, extras))
  return Bench(config=cfg, spec=spec, teacher_status=status,
               teacher_computed=bool(readers) and teacher_model is not None, terms=terms, step_fn=step_fn, state=state,
               teacher_vars=teacher_vars, batches=batches, host_batches=host_batches, key=base_key, extras=extras,
               build_s=time.perf_counter() - t0, notes=notes)


# ---------------------------------------------------------------------------------------------------------------
# Measuring.


class _CacheEvents:
  """Counts the persistent compilation cache's hits and misses (jax.monitoring events) while active."""

  def __init__(self):
    self.hits = self.misses = 0
    self.active = False

  def __call__(self, event: str, **kwargs) -> None:
    del kwargs
    if not self.active:
      return
    if event == "/jax/compilation_cache/cache_hits":
      self.hits += 1
    elif event == "/jax/compilation_cache/cache_misses":
      self.misses += 1


_CACHE_EVENTS = None


def _cache_events() -> _CacheEvents:
  """The process's one listener (jax.monitoring listeners cannot be removed one by one)."""
  global _CACHE_EVENTS
  if _CACHE_EVENTS is None:
    import jax  # pylint: disable=g-import-not-at-top
    _CACHE_EVENTS = _CacheEvents()
    jax.monitoring.register_event_listener(_CACHE_EVENTS)
  return _CACHE_EVENTS


def _flops(compiled) -> float | None:
  """FLOPs of one run of `compiled` from XLA's cost analysis (per device program), or None."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (backends without a cost model)
    return None
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _memory(compiled) -> dict | None:
  """Peak device memory of `compiled` from `memory_analysis()`, or None when the backend gives none."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  parts = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0) for k in ("argument", "output", "temp", "alias")}
  # Temporaries are one buffer-assigned block sized for the most that is live at once; donated outputs reuse
  # their arguments' buffers (alias), so they are counted once.
  planned = parts["argument"] + parts["output"] + parts["temp"] - parts["alias"]
  # peak_memory_in_bytes, where a backend fills it, can be lower than that sum (jax 0.10 on CPU reports the
  # arguments alone): the larger figure is the one the device must hold.
  reported = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
  if not planned and not reported:
    return None
  source = "peak_memory_in_bytes" if reported > planned else "arguments + outputs + temporaries - aliased"
  return dict(parts, peak=max(planned, reported), source=source)


def _time_steps(compiled, bench: Bench, count: int) -> tuple[list[float], list[float], int]:
  """Runs `count` steps, each waited for; (wall seconds, process CPU seconds, non-finite steps)."""
  import jax  # pylint: disable=g-import-not-at-top
  wall, cpu, nonfinite = [], [], 0
  for i in range(count):
    t, c = time.perf_counter(), time.process_time()
    bench.state, metrics = compiled(bench.state, bench.teacher_vars, bench.batches[i % len(bench.batches)],
                                    bench.key, bench.extras)
    jax.block_until_ready((bench.state, metrics))
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
    nonfinite += int(not bool(metrics["finite"]))
  return wall, cpu, nonfinite


def measure(bench: Bench, opts: Options) -> dict:
  """Compiles and times the step; every number of the report but the pipeline's and torch's."""
  import jax  # pylint: disable=g-import-not-at-top
  events = _cache_events()
  hits, misses = events.hits, events.misses
  events.active = True
  try:
    t = time.perf_counter()
    compiled = bench.step_fn.lower(bench.state, bench.teacher_vars, bench.batches[0], bench.key,
                                   bench.extras).compile()
    compile_s = time.perf_counter() - t
  finally:
    events.active = False
  first, _, bad_first = _time_steps(compiled, bench, 1)
  _time_steps(compiled, bench, opts.warmup)
  wall, cpu, nonfinite = _time_steps(compiled, bench, opts.steps)
  device = jax.devices()[0]
  cfg = bench.config
  step_s = statistics.median(wall)
  flops = _flops(compiled)
  peak, peak_source = resolve_peak(opts.peak_tflops, opts.device_kind, device.device_kind)
  return dict(
      build_s=bench.build_s, compile_s=compile_s, first_step_s=first[0],
      time_to_first_step_s=bench.build_s + compile_s + first[0],
      cache=dict(dir=jax.config.jax_compilation_cache_dir or "", hits=events.hits - hits,
                 misses=events.misses - misses),
      steps=opts.steps, warmup=opts.warmup, step_s_median=step_s, step_s_min=min(wall), step_s_max=max(wall),
      cpu_s_median=statistics.median(cpu), images_per_s=cfg.input.batch_size / step_s,
      nonfinite_steps=nonfinite + bad_first, flops=flops, achieved_tflops=flops / step_s / 1e12 if flops else None,
      peak_tflops=peak, peak_source=peak_source, mfu=mfu(flops, step_s, peak), memory=_memory(compiled),
      compiled=compiled)


def setting(bench: Bench, opts: Options) -> dict:
  """What was measured (config facts, device), as JSON-able values."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from incseg_jax.models import segmodel
  # pylint: enable=g-import-not-at-top
  cfg, spec = bench.config, bench.spec
  m = spec.model  # the built model: every architecture field resolved (defaults included)
  rates = m.atrous_rates or segmodel.default_atrous_rates(m.decoder, m.output_stride)
  device = jax.devices()[0]
  return dict(
      dataset=cfg.dataset.name, task=cfg.task, method=cfg.method, task_step=spec.index,
      channels=[sum(spec.teacher_model.classes_per_step), spec.info.num_channels],
      backbone=m.backbone, decoder=m.decoder, output_stride=m.output_stride, aspp_channels=m.aspp_channels,
      atrous_rates=list(rates), small_width=m.small_width, small_blocks=list(m.small_blocks),
      activation=m.activation, bn_frozen=m.bn_frozen, aspp_dropout=m.aspp_dropout,
      dtype=jnp.dtype(m.dtype).name, crop=cfg.input.crop_size, batch=cfg.input.batch_size,
      classes_per_step=list(spec.model.classes_per_step),
      teacher_classes_per_step=list(spec.teacher_model.classes_per_step),
      teacher=opts.teacher, teacher_status=bench.teacher_status, teacher_computed=bench.teacher_computed,
      terms=[[name, weight, dict(o)] for name, weight, o in bench.terms],
      num_old_channels=spec.info.num_old_channels, new_channels=list(spec.info.new_channels),
      ignore_label=spec.info.ignore_label, frozen=list(spec.frozen), learning_rate=spec.learning_rate,
      momentum=cfg.optim.momentum, nesterov=bool(cfg.optim.nesterov), weight_decay=cfg.optim.weight_decay,
      platform=device.platform, device_kind=device.device_kind, devices=jax.device_count(),
      threads=opts.threads, jax=jax.__version__, malloc=allocator.state, notes=list(bench.notes))


# ---------------------------------------------------------------------------------------------------------------
# Input pipeline.


def _records_ready(dataset_cfg) -> tuple[bool, str]:
  """Whether the dataset's records are built (so timing its pipeline builds nothing), and if not why."""
  from incseg_jax.data import registry  # pylint: disable=g-import-not-at-top
  name = dataset_cfg.name
  data_dir = dataset_cfg.data_dir or registry.default_data_dir()
  try:
    if name == "shapes":
      from incseg_jax.data import shapes  # pylint: disable=g-import-not-at-top
      builder = shapes.Shapes(config=dataset_cfg.builder_config, data_dir=data_dir)
    else:
      module = importlib.import_module(f"incseg_jax.data.{name}")
      manual = os.path.expanduser(dataset_cfg.manual_dir) if dataset_cfg.manual_dir else ""
      config = module.resolve_config(manual, dataset_cfg.builder_config, data_dir=data_dir)
      builder = module.Builder(data_dir=data_dir, config=config)
  except (ValueError, FileNotFoundError, ImportError) as e:
    return False, f"{name} records unavailable: {e}"
  if not builder.is_prepared():
    return False, f"{name} records not built in {data_dir}"
  return True, ""


@functools.cache
def _tensorflow_missing() -> str:
  """'' once TensorFlow is imported and hidden from accelerators, else why it cannot be (once per process)."""
  try:
    runtime.hide_accelerators_from_tensorflow()
  except ImportError as e:
    return f"TensorFlow is not importable: {e}; the step needs none"
  return ""


def _records_unreadable(dataset_cfg) -> str:
  """'' when the dataset's records can be read here, else why not.

  The benchmark imports TensorFlow only to read records (`pipeline_rate`, `protocol`), and hides it from
  GPUs/TPUs first: that must precede its first operation, which the dataset builders may run.
  """
  missing = _tensorflow_missing()
  if missing:
    return missing
  ready, why = _records_ready(dataset_cfg)
  return "" if ready else why


def pipeline_rate(cfg, threads: int, batches: int) -> tuple[float | None, str]:
  """Images/s of the config's real training input pipeline, or (None, why not)."""
  if not batches:
    return None, "not measured (--pipeline_batches=0)"
  why = _records_unreadable(cfg.dataset)
  if why:
    return None, f"not measured ({why})"
  # pylint: disable=g-import-not-at-top
  import numpy as np
  from incseg_jax.data import pipeline
  from incseg_jax.data import registry
  # pylint: enable=g-import-not-at-top
  builder, meta = registry.load(cfg.dataset)
  split = pipeline.load_split(builder, cfg.dataset.train_split)
  # As incseg_jax/benchmarks/input_pipeline.py's `measure` (importing that module would define its flags twice).
  warmup = 3
  it = pipeline.train_batches(split, np.arange(len(split)), np.arange(256, dtype=np.uint8), cfg.input, seed=0,
                              task_index=0, start_step=0, num_steps=warmup + batches, ignore_label=meta.ignore_label,
                              threads=threads or None)
  for _ in range(warmup):
    next(it)
  t, n = time.perf_counter(), 0
  for batch in it:
    n += batch["image"].shape[0]
  return n / (time.perf_counter() - t), f"{meta.name} {cfg.dataset.train_split}, {batches} batches"


def protocol(cfg, step_s: float) -> dict:
  """The config's whole schedule in train steps, and its hours at `step_s` per step; or {'note': why not}.

  A schedule in steps (or steps per class) is counted from the config alone. One in epochs needs each
  task step's image count, i.e. the dataset's records (built once by any run on the data), and reads them
  as training does (`experiment.build`).
  """
  from incseg_jax import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  if cfg.schedule.unit == "epochs":
    why = _records_unreadable(cfg.dataset)
    if why:
      return {"note": f"not counted: config.schedule.unit=epochs needs each task step's image count, from the "
                      f"records ({why})"}
    with contextlib.redirect_stdout(io.StringIO()):  # its notes are about training
      exp = experiment_lib.build(cfg)
    source = f"{cfg.schedule.unit}, image counts from {exp.meta.name}'s records"
    images = [len(i) for i in exp.step_indices]
  else:  # the placeholder indices do not enter a schedule in steps
    exp = _dataless_experiment(_dataless_config(cfg)[0])
    source, images = f"{cfg.schedule.unit}, from the config", None
  steps = [exp.num_train_steps(k) for k in range(exp.num_steps)]
  return dict(steps=steps, images=images, total=sum(steps), hours=sum(steps) * step_s / 3600, source=source)


def pipeline_verdict(rate: float | None, note: str, step_images_per_s: float) -> str:
  """One line: does the pipeline keep up with the step?"""
  if rate is None:
    return note
  ratio = rate / step_images_per_s
  verdict = "keeps up" if ratio >= 1 else "does NOT keep up (data loading would bound the run)"
  return f"{verdict}: {rate:.1f} images/s vs the step's {step_images_per_s:.2f} (x{ratio:.1f}; {note})"


# ---------------------------------------------------------------------------------------------------------------
# PyTorch comparison.


def torch_importable(python: str = "") -> tuple[bool, str]:
  """(True, "") when `python` ('': this interpreter) can import torch, else (False, why)."""
  hint = ("install a CPU build in a separate venv (python3 -m venv /path/torchvenv && /path/torchvenv/bin/pip install "
          "torch numpy) and pass --torch_python=/path/torchvenv/bin/python")
  # abspath, not realpath: venvs link to one base interpreter but each has its own packages.
  if not python or os.path.abspath(python) == os.path.abspath(sys.executable):
    if importlib.util.find_spec("torch") is None:
      return False, f"torch is not importable in this interpreter ({sys.executable}); {hint}"
    return True, ""
  try:
    out = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True, timeout=300)
  except OSError as e:
    return False, f"--torch_python={python} cannot be run ({e.strerror}); {hint}"
  if out.returncode:
    last = (out.stderr.strip().splitlines() or ["?"])[-1]
    return False, f"torch is not importable by --torch_python={python} ({last}); {hint}"
  return True, ""


def compare_torch(setting_: dict, opts: Options) -> dict:
  """Times the torch twin of the step; {'skipped': why} or {'failed': why} when it cannot."""
  from incseg_jax.benchmarks import torch_twin  # pylint: disable=g-import-not-at-top  (torch itself is not imported)
  ok, why = torch_importable(opts.torch_python)
  if not ok:
    return {"skipped": why}
  twin = dict(setting_, steps=opts.steps, warmup=opts.warmup,
              device="cuda" if setting_["platform"] == "gpu" else "cpu")
  try:
    torch_twin.check_setting(twin)
  except ValueError as e:
    return {"skipped": f"the torch twin cannot run this setting: {e}"}
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(torch_twin.__file__))))
  with tempfile.TemporaryDirectory() as tmp:
    path, out_path = os.path.join(tmp, "setting.json"), os.path.join(tmp, "result.json")
    with open(path, "w") as f:
      json.dump(twin, f)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    env[allocator.ENV] = twin_malloc(opts.torch_malloc, twin["device"])
    out = subprocess.run([opts.torch_python or sys.executable, "-m", "incseg_jax.benchmarks.torch_twin",
                          f"--setting={path}", f"--out={out_path}"], capture_output=True, text=True, env=env)
    if out.returncode or not os.path.exists(out_path):
      tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-5:])
      return {"failed": f"the torch twin exited {out.returncode}: {tail}"}
    with open(out_path) as f:
      return json.load(f)


def twin_malloc(torch_malloc: str, device: str) -> str:
  """INCSEG_JAX_MALLOC for the torch twin's process: this process's setting on a CPU twin unless 'system'.

  The twin imports this package, whose import applies the setting; on a GPU the setting is not wanted
  (`allocator`'s docstring), nor does it matter there: the step's buffers are device memory.
  """
  same = torch_malloc == "same" and allocator.state == "tuned" and device == "cpu"
  return "tuned" if same else "system"


# ---------------------------------------------------------------------------------------------------------------
# Profile: where the step's time goes.

_INSTR = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"([a-z][a-z0-9\-]*)\(")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)|branch_computations=\{([^}]*)\}")
_OPERAND = re.compile(r"%([\w.\-]+)")
_CONTROL = ("conditional", "while", "call", "async-start", "async-done")
# Phases, the later winning when an op without metadata inherits from its operands.
PHASES = ("update, guard, other", "teacher forward", "student forward + loss", "backward")
CONV, REST = "convolution", "elementwise, reduce, copy"


def _phase(op_name: str) -> str | None:
  if "transpose(jvp(" in op_name:
    return PHASES[3]
  if "jvp(" in op_name:
    return PHASES[2]
  if "SegModel" in op_name:
    return PHASES[1]
  return PHASES[0] if op_name else None


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str, str]]:
  """Instruction name -> (phase, kind, summary) of every instruction of an optimised HLO module's text.

  Phase from the op's `op_name` metadata (or its fused computation's):
  "backward" (transpose(jvp(...))), "student forward + loss" (jvp(...)),
  "teacher forward" (the model outside any jvp), else "update, guard, other".
  XLA leaves some ops it creates without metadata (the weight-gradient
  convolutions among them): those take the latest phase of their operands, so
  a convolution of a forward activation with an output gradient is backward.
  Kind: "convolution" when the op is (or its fused computation holds) a
  convolution, a dot, or a library call for either (cuDNN, cuBLAS on a GPU),
  else "elementwise, reduce, copy". Control-flow ops (whose bodies are listed
  themselves) get "control".
  Summary: the opcode, result shape and, for a convolution (or the one in a
  fusion), its window, e.g. "convolution f32[2,8,8,512] window={size=3x3
  pad=2_2x2_2 rhs_dilate=2x2}".
  """
  comps: dict[str, list[tuple[str, str, str, list[str], list[str], str]]] = collections.defaultdict(list)
  current = ""
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith((" ", "\t")):
      current = header.group(1)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, rest = m.groups()
    op = _OPCODE.search(rest)
    opcode = op.group(1) if op else ""
    target = re.search(r'custom_call_target="([^"]*)"', rest) if opcode == "custom-call" else None
    if target and "conv" in target.group(1).lower():  # cuDNN's convolutions on a GPU
      opcode = "convolution"
    elif target and re.search(r"gemm|matmul", target.group(1).lower()):  # cuBLAS(Lt)'s matrix products
      opcode = "dot"
    op_name = re.search(r'op_name="([^"]*)"', rest)
    calls = []
    for a, b in _CALLS.findall(rest):
      calls += [a] if a else [c.strip().lstrip("%") for c in b.split(",")]
    operands = [o for o in _OPERAND.findall(rest) if o not in calls]
    window = re.search(r"window=\{[^}]*\}", rest)
    summary = f"{opcode} {rest.split(' ')[0]}" + (f" {window.group(0)}" if window else "")
    comps[current].append((name, opcode, op_name.group(1) if op_name else "", calls, operands, summary))

  heavy: dict[str, bool] = {}

  def has_heavy(comp: str, seen=()) -> bool:
    if comp not in heavy:
      heavy[comp] = any(op in ("convolution", "dot") or any(has_heavy(c, seen + (comp,)) for c in calls
                                                             if c not in seen)
                        for _, op, _, calls, _, _ in comps.get(comp, ()))
    return heavy[comp]

  def conv_summary(comp: str) -> str:
    found = [summary for _, op, _, _, _, summary in comps.get(comp, ()) if op in ("convolution", "dot")]
    return found[0] if found else ""

  def root_phase(comp: str) -> str | None:
    phases = [_phase(n) for _, _, n, _, _, _ in comps.get(comp, ()) if n]
    return phases[-1] if phases else None

  out = {}
  for instrs in comps.values():
    phase_of: dict[str, str] = {}
    for name, opcode, op_name, calls, operands, summary in instrs:  # scheduled HLO: operands before users
      if opcode in _CONTROL:
        out[name] = ("control", "control", summary)
        continue
      phase = _phase(op_name) or (root_phase(calls[0]) if calls else None)
      if phase is None:
        inherited = [PHASES.index(phase_of[o]) for o in operands if o in phase_of]
        phase = PHASES[max(inherited)] if inherited else PHASES[0]
      phase_of[name] = phase
      conv = opcode in ("convolution", "dot") or any(has_heavy(c) for c in calls)
      inner = conv_summary(calls[0]) if calls and conv else ""
      out[name] = (phase, CONV if conv else REST, f"{summary.split(' ')[0]}: {inner}" if inner else summary)
  return out


def trace_op_times(trace_dir: str) -> dict[str, float]:
  """Op name -> total seconds of the complete ('X') events of the perfetto trace under `trace_dir`."""
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True))
  if not paths:
    return {}
  with gzip.open(paths[-1], "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  # On a GPU or TPU the trace has device processes ("/device:GPU:0"): their "XLA Ops" line times each HLO op
  # once, while their stream lines repeat it per kernel (a fusion's kernel bears the fusion's name) and the
  # host's lines time launches. On the CPU the ops run on host threads, and every line is read.
  devices = {e.get("pid") for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
             and str((e.get("args") or {}).get("name", "")).startswith("/device:")}
  op_lines = {(e.get("pid"), e.get("tid")) for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
              and e.get("pid") in devices and (e.get("args") or {}).get("name") == "XLA Ops"}
  out: dict[str, float] = collections.defaultdict(float)
  for e in events:
    if e.get("ph") == "X" and "dur" in e and (not op_lines or (e.get("pid"), e.get("tid")) in op_lines):
      out[e["name"]] += float(e["dur"]) * 1e-6
  return out


def profile(bench: Bench, compiled, trace_dir: str, steps: int = 3, top: int = 8) -> dict:
  """Traces `steps` steps and splits the compiled ops' time by phase and kind (see `hlo_ops`).

  Returns:
    dict(step_s: wall seconds per traced step, per: {"phase / kind": seconds
    per step}, unattributed_s: step time no compiled op accounts for
    (dispatch, waits), top: the `top` slowest ops, note: why nothing was
    attributed, if so).
  """
  import jax  # pylint: disable=g-import-not-at-top
  ops = hlo_ops(compiled.as_text())
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    wall, _, _ = _time_steps(compiled, bench, steps)
  times = trace_op_times(trace_dir)
  per: dict[str, float] = collections.defaultdict(float)
  timed_ops = []
  for name, seconds in times.items():
    phase, kind, summary = ops.get(name, (None, None, None))
    if phase is None or phase == "control":
      continue
    per[f"{phase} / {kind}"] += seconds / steps
    timed_ops.append((seconds / steps, name, phase, summary))
  timed_ops.sort(reverse=True)
  step_s = sum(wall) / steps
  result = dict(step_s=step_s, per=dict(sorted(per.items(), key=lambda kv: -kv[1])), trace_dir=trace_dir,
                unattributed_s=step_s - sum(per.values()), note="",
                top=[dict(seconds=t, name=n, phase=p, op=o) for t, n, p, o in timed_ops[:top]])
  if not per:
    result["note"] = ("the trace's events do not carry the HLO op names on this backend; open the trace in "
                      "TensorBoard's profile plugin or Perfetto instead")
  return result


# ---------------------------------------------------------------------------------------------------------------
# Report.


def _si(x: float | None, unit: str) -> str:
  if x is None:
    return "n/a"
  for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= factor:
      return f"{x / factor:.2f} {prefix}{unit}"
  return f"{x:.2f} {unit}"


def report(results: dict) -> list[str]:
  """The printed lines, one field each."""
  s, r = results["setting"], results["measured"]
  lines = [
      f"train-step benchmark, {results['date']}: jax {s['jax']}, {s['platform']} ({s['device_kind']}) x{s['devices']}"
      f", threads {s['threads'] or 'default'}, C allocator {s['malloc']}",
      f"setting: {s['dataset']} {s['task']} method={s['method']}, task step {s['task_step']} "
      f"({s['channels'][0]} -> {s['channels'][1]} channels), {s['decoder']} {s['backbone']} OS{s['output_stride']}, "
      f"crop {s['crop']}, batch {s['batch']}, {s['dtype']}",
      "loss terms: " + ", ".join(f"{n} x{w:g}" for n, w, _ in s["terms"]),
      f"teacher: {s['teacher']}: {s['teacher_status']}",
  ]
  lines += [f"note: {n}" for n in s["notes"]]
  cache = r["cache"]
  state = "hit" if cache["hits"] and not cache["misses"] else "miss" if cache["misses"] else "not used"
  lines += [
      f"build (spec, variables, optimizer state): {r['build_s']:.2f} s",
      f"compile: {r['compile_s']:.2f} s (persistent cache: {state}, {cache['hits']} hits / {cache['misses']} misses,"
      f" dir {cache['dir'] or 'off'})",
      f"first step: {r['first_step_s']:.2f} s",
      f"time to first step (build + compile + first step): {r['time_to_first_step_s']:.2f} s",
      f"step time: median {1e3 * r['step_s_median']:.1f} ms (min {1e3 * r['step_s_min']:.1f}, max "
      f"{1e3 * r['step_s_max']:.1f}; {r['steps']} steps after the first and {r['warmup']} warm-up), process CPU "
      f"time median {1e3 * r['cpu_s_median']:.1f} ms",
      f"images/s: {r['images_per_s']:.2f}",
      f"FLOPs per step: {_si(r['flops'], 'FLOP')} (XLA cost_analysis, per device program)",
      f"achieved: {_si(r['achieved_tflops'] and r['achieved_tflops'] * 1e12, 'FLOP/s')}",
  ]
  if r["mfu"] is None:
    why = "FLOPs unknown" if r["flops"] is None else r["peak_source"]
    lines.append(f"MFU: n/a ({why})")
  else:
    lines.append(f"MFU: {100 * r['mfu']:.1f}% of {r['peak_tflops']:g} TFLOP/s ({r['peak_source']})")
  mem = r["memory"]
  if mem is None:
    lines.append("peak device memory: n/a (the backend gives no memory_analysis)")
  else:
    lines.append(f"peak device memory: {mem['peak'] / 2**30:.3f} GiB ({mem['source']}; arguments "
                 f"{mem['argument'] / 2**30:.3f}, temporaries {mem['temp'] / 2**30:.3f} GiB)")
  if r["nonfinite_steps"]:
    lines.append(f"note: {r['nonfinite_steps']} steps were not finite on the synthetic batches (their update was "
                 "skipped; the step still ran in full)")
  lines.append(f"input pipeline: {results['pipeline']}")
  lines.append(f"protocol: {protocol_line(results.get('protocol'))}")
  t = results.get("torch")
  if t is None:
    lines.append("torch: not compared (pass --compare=torch)")
  elif "skipped" in t or "failed" in t:
    lines.append(f"torch: {'skipped' if 'skipped' in t else 'failed'}: {t.get('skipped') or t.get('failed')}")
  else:
    lines.append(f"torch {t['torch']} ({t['mode']}, {t['threads']} threads, C allocator {t['malloc']}): "
                 f"first step {t['first_step_s']:.2f} s, "
                 f"step median {1e3 * t['step_s_median']:.1f} ms, process CPU time median {1e3 * t['cpu_s_median']:.1f}"
                 f" ms, images/s {t['images_per_s']:.2f}, conv+matmul FLOPs {_si(t.get('flops'), 'FLOP')}"
                 + (f", peak memory {t['peak_memory_bytes'] / 2**30:.3f} GiB" if t.get("peak_memory_bytes") else ""))
    lines.append(f"ratio ours / torch: step time {r['step_s_median'] / t['step_s_median']:.2f}, CPU time "
                 f"{r['cpu_s_median'] / t['cpu_s_median']:.2f} (> 1: ours is slower)")
  p = results.get("profile")
  if p:
    lines.append(f"profile ({p['trace_dir']}): {1e3 * p['step_s']:.1f} ms per traced step")
    for key, sec in p["per"].items():
      lines.append(f"  {key}: {1e3 * sec:.1f} ms ({100 * sec / p['step_s']:.0f}%)")
    lines.append(f"  not in any compiled op (dispatch, waits): {1e3 * p['unattributed_s']:.1f} ms")
    for op in p["top"]:
      lines.append(f"  top op {1e3 * op['seconds']:.1f} ms: {op['name']} ({op['phase']}) {op['op']}")
    if p["note"]:
      lines.append(f"  {p['note']}")
  return lines


def _duration(seconds: float) -> str:
  if seconds >= 3600:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def protocol_line(p: dict | None) -> str:
  """`protocol`'s result as one line."""
  if not p:
    return "not counted"
  if "note" in p:
    return p["note"]
  per = ", ".join(f"{n:,}" + (f" ({p['images'][k]:,} images)" if p["images"] else "")
                  for k, n in enumerate(p["steps"]))
  return (f"{p['total']:,} train steps over {len(p['steps'])} task steps ({per}; {p['source']}): "
          f"{_duration(p['hours'] * 3600)} at this step time (train steps alone: no evaluation, checkpoints or "
          "compiles; task step 0, without a teacher, costs less per step)")


def run(cfg, opts: Options) -> dict:
  """Builds, compiles and times the step of `cfg`; returns the JSON-able results and prints the report."""
  import jax  # pylint: disable=g-import-not-at-top
  from incseg_jax import sharding  # pylint: disable=g-import-not-at-top
  check_options(opts)
  bench = build(cfg, opts.teacher, sharding.make_mesh())
  measured = measure(bench, opts)
  compiled = measured.pop("compiled")
  results = dict(date=time.strftime("%Y-%m-%d %H:%M"), setting=setting(bench, opts), measured=measured)
  rate, note = pipeline_rate(bench.config, opts.threads, opts.pipeline_batches)
  results["pipeline"] = pipeline_verdict(rate, note, measured["images_per_s"])
  results["pipeline_images_per_s"] = rate
  results["protocol"] = protocol(cfg, measured["step_s_median"])
  if opts.profile:
    results["profile"] = profile(bench, compiled, opts.profile)
  if opts.compare == "torch":
    results["torch"] = compare_torch(results["setting"], opts)
  jax.block_until_ready(bench.state)
  for line in report(results):
    print(line, flush=True)
  if opts.json:
    with open(opts.json, "w") as f:
      json.dump(results, f, indent=1)
  return results


_JAX_MEMORY_ENV = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR")


def thread_flags(threads: int) -> str:
  """XLA_FLAGS that keep XLA's CPU computation to `threads` threads ('' for the default)."""
  if threads == 1:
    return "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  if threads > 1:
    return f"intra_op_parallelism_threads={threads}"
  return ""


def main(argv):
  f = {name: holder.value for name, holder in _FLAGS.items()}
  with runtime.clear_errors():
    opts = Options(steps=f["steps"], warmup=f["warmup"], teacher=f["teacher"], peak_tflops=f["peak_tflops"],
                   device_kind=f["device_kind"], compare=f["compare"], torch_python=f["torch_python"],
                   torch_malloc=f["torch_malloc"],
                   threads=f["threads"], pipeline_batches=f["pipeline_batches"], json=f["json"],
                   profile=f["profile"])
    check_options(opts)  # before TensorFlow and the backend load
    if f["config"] is None:
      raise ValueError("--config is required, e.g. --config=configs/voc.py:task=15-1,method=lwf")
    extra = thread_flags(opts.threads)
    if extra:  # read when the backend starts, i.e. at the first device query below
      os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {extra}".strip()
    if opts.compare == "torch" and not any(os.environ.get(v) for v in _JAX_MEMORY_ENV):
      # The torch twin runs next in another process on the same accelerator, while this one holds what it
      # allocated: JAX's default (75% of the device taken at start) would leave the twin a quarter.
      os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    # TensorFlow only when records are read (`_tensorflow_missing`): the step itself needs none, and
    # accelerator images often have JAX and PyTorch without it (docs/benchmarks.md, "On a GPU").
    runtime.setup_command(argv, tensorflow=False)
    run(f["config"], opts)


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  app.run(main, flags_parser=runtime.parse_flags)
