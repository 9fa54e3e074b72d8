"""Several methods x several seeds of one experiment in one command, and one table of them.

  python -m incseg_jax.sweep --config=configs/shapes.py:task=15-1,setting=overlapped \
      --methods=ft,mib,plop,mib_ucd --seeds=0,1,2 --workdir=runs/sweep [--parallel=N] [--step0_from=DIR]
      [--config.<field>=...]

Each (method, seed) is the experiment `--config` gives, with `method=<m>` put
into the config argument (a `method=` already there is replaced: methods fill
`config.losses` in `get_config`), `config.seed=<seed>` and the `--config.*`
overrides, which must exist in every method's config. It runs in
`<workdir>/<method>/seed_<seed>/`: in this process one after the other, or
with `--parallel=N` as N concurrent `python -m incseg_jax.main` subprocesses
(each writes its output to `sweep.log` in its run directory).

Shared step 0: a method whose step 0 trains like ft's (same step-0 loss, void
pixels treated alike, nothing else in the config differs; `step0_difference`)
reuses the step-0 model of an ft run of the same seed (`<workdir>/ft/seed_<s>`,
run first even when ft is not listed; then it is not in the table) through
`config.init_from`. `joint` and methods whose step-0 training differs train
their own step 0. With `--step0_from=<another sweep's workdir>` every run
instead reuses that sweep's step-0 model of its seed (ft's, or the method's
own), as the papers' 15-1 and 15-5 share their step 0.

A finished run (results.json and every task step done, under this config) is
skipped; an unfinished one resumes. A failing run is reported with its method,
seed and error line, the others go on, and the exit status is 1. At the end
`<workdir>/sweep.md`, `sweep.csv` and `sweep.json` hold one row per method:
final-step mIoU old / new / all, mean and sample standard deviation over the
finished seeds (`reporting.sweep_summary`).

`--published=<dataset>/<scenario>/<setting>[/...]` adds a paper's numbers
beside each method (old / new / all, ours minus the paper's, table and row;
docs/published.md). `--table=<paper>/<n>` (e.g. `ucd/1`) runs a published
table instead of `--methods`: one sub-sweep per experiment of the table in
`<workdir>/<scenario>_<setting>[...]/`, each with the table's methods that
exist here (the others are listed as not run) and that table's numbers
beside ours; `<workdir>/table.md` collects the sub-sweeps' tables.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags

from incseg_jax import checkpointing
from incseg_jax import config_lib
from incseg_jax import files
from incseg_jax import losses as losses_lib
from incseg_jax import methods as methods_lib
from incseg_jax import published as published_lib
from incseg_jax import reporting
from incseg_jax import runtime
from incseg_jax import tasks
from incseg_jax import workdir as workdir_lib
from incseg_jax.data import registry
from incseg_jax.published import beside as beside_lib

# The method whose step-0 model the others share, and the config fields the sweep sets itself.
BASE_METHOD = "ft"
SWEEP_FIELDS = ("method", "seed", "init_from")
# Config fields that only shape steps > 0 or that the sweep sets per run: ignored when deciding
# whether a method's step 0 is ft's (its step-0 loss is compared separately).
_NOT_STEP0_FIELDS = ("method", "losses", "loss_options", "seed", "init_from")


@dataclasses.dataclass(frozen=True)
class ConfigSource:
  """Where every run's config comes from: one config file, its argument, the command-line overrides.

  Attributes:
    path: the config file (`configs/shapes.py`).
    arg: its argument, the part after `:` (may be empty).
    overrides: dotted field path -> value, as parsed from `--config.<path>=<value>`.
    override_args: the same overrides as command-line arguments, given to
      `python -m incseg_jax.main` in parallel mode.
  """
  path: str
  arg: str = ""
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  override_args: tuple[str, ...] = ()

  def __post_init__(self):
    given = sorted(p for p in self.overrides if p in SWEEP_FIELDS)
    if given:
      raise ValueError(f"--config.{given[0]} is set by the sweep (use --methods / --seeds; init_from is the "
                       "shared ft run's workdir); drop the override")

  def argument(self, method: str) -> str:
    """The config argument with `method=<method>` (replacing any method given in it)."""
    items = [i.strip() for i in self.arg.split(",") if i.strip() and i.split("=")[0].strip() != "method"]
    return ",".join(items + [f"method={method}"])

  def spec(self, method: str) -> str:
    """The `--config` value of `method`'s runs."""
    return f"{self.path}:{self.argument(method)}"

  def make(self, method: str, seed: int, init_from: str = "") -> ml_collections.ConfigDict:
    """The config of one run: `get_config(arg + method)`, the overrides, the seed and `init_from`.

    Raises:
      ValueError: an override names a field this method's config does not have.
    """
    config = _load_config_module(self.path).get_config(self.argument(method))
    config.lock()  # an override of a missing field must fail, not add it
    for path, value in self.overrides.items():
      try:
        config.update_from_flattened_dict({path: value})
      except (KeyError, AttributeError) as e:
        raise ValueError(f"--config.{path}: method {method!r}'s config has no such field "
                         "(every override applies to every method of the sweep)") from e
    config.seed = seed
    config.init_from = init_from
    return config


_MODULES: dict[str, Any] = {}


def _load_config_module(path: str):
  """The config file as a module (loaded once per path, as ml_collections' config_flags would)."""
  path = os.path.abspath(path)
  if path not in _MODULES:
    if not os.path.exists(path):
      raise FileNotFoundError(f"--config: no config file {path}")
    spec = importlib.util.spec_from_file_location(f"incseg_sweep_config_{len(_MODULES)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _MODULES[path] = module
  return _MODULES[path]


def override_args(argv: Sequence[str], flag_values=None) -> tuple[str, ...]:
  """The `--config.<field>` arguments in `argv` as given (`--config.a=1`, `--config.a 1`, `--noconfig.b`).

  A value given as the next argument is kept with its flag, except for
  boolean fields (`--config.b` alone means True), which `flag_values` tells.
  """
  out = []
  i = 0
  while i < len(argv):
    arg = argv[i]
    m = re.match(r"^--?(no)?config\.([^=]+)(=.*)?$", arg)
    i += 1
    if not m:
      continue
    out.append(arg)
    name = f"config.{m.group(2)}"
    boolean = flag_values is not None and name in flag_values and flag_values[name].boolean
    if m.group(3) is None and not m.group(1) and not boolean and i < len(argv):
      out.append(argv[i])
      i += 1
  return tuple(out)


# ---------------------------------------------------------------------------
# Sharing step 0.


def step0_difference(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> str | None:
  """Why `config`'s step 0 is not `base`'s (ft's) plain training; None when it can reuse base's step-0 model.

  Compared: the joint flag (a single step of every class never shares), every
  config field but the method's own (`_NOT_STEP0_FIELDS`), the label policy
  where it changes step-0 training (void pixels trained as background:
  `Method.void_as_background`), and the loss terms active at step 0
  (`methods.active_terms(config, 0)`). Terms with other names still count as
  the same when they compute the same loss (`same_step0_loss`), as PLOP's
  `plop_ce` and MiB's `unbiased_ce` do without a previous model. A method
  whose terms carry state (EWC's Fisher) accumulates it from step 0, and one
  that trains a variant of the model (RCIL's two branches), so each trains
  its own.
  """
  method, base_method = methods_lib.get(config.method), methods_lib.get(base.method)
  if method.joint:
    return "one step of every class (joint training)"
  reasons = []
  differences = files.json_diff(_step0_fields(base), _step0_fields(config), elementwise=False)
  if differences:
    reasons.append(f"config differs from {base.method}'s: " + "; ".join(differences))
  if method.void_as_background != base_method.void_as_background:
    reasons.append("trains void pixels as background" if method.void_as_background
                   else f"ignores void pixels, which {base.method} trains as background")
  mine, theirs = methods_lib.active_terms(config, 0), methods_lib.active_terms(base, 0)
  if mine != theirs and not same_step0_loss(mine, theirs):
    reasons.append(f"step-0 loss {_terms(mine)} is not {base.method}'s {_terms(theirs)}")
  states = [name for name, _, _ in methods_lib.state_terms(config)]
  if states != [name for name, _, _ in methods_lib.state_terms(base)]:
    reasons.append(f"accumulates the state of {', '.join(states) or 'no term'} from step 0")
  if method.train_variant is not None and method.train_variant is not base_method.train_variant:
    reasons.append("trains another model at step 0 (its two-branch variant, merged at the end of the step)")
  return "; ".join(reasons) or None


def _step0_fields(config) -> dict[str, Any]:
  d = config_lib.experiment_fields(config)
  for key in _NOT_STEP0_FIELDS:
    d.pop(key, None)
  return d


def _terms(terms) -> str:
  """`w*name{options}` per term, with only the options that differ from the term's defaults."""
  def shown(name, opts):
    defaults = losses_lib.option_defaults(name)
    return {k: v for k, v in opts.items() if k not in defaults or defaults[k] != v}
  return " + ".join((f"{w:g}*" if w != 1 else "") + name + (f"{shown(name, opts)}" if shown(name, opts) else "")
                    for name, w, opts in terms)


def same_step0_loss(a: Sequence[tuple[str, float, dict[str, Any]]], b: Sequence[tuple[str, float, dict[str, Any]]],
                    trials: int = 2) -> bool:
  """Whether two step-0 losses (`active_terms` lists) are one function of the logits and labels.

  Both weighted sums are evaluated, value and gradient with respect to the
  logits, on random probe batches (random logits, every channel as a label,
  a fifth of the pixels ignored, so a different reduction shows). A term that
  reads anything but the student's logits fails the probe and counts as
  different: sharing is only claimed when it is certain.
  """
  channels, ignore = 6, 255
  info = losses_lib.TaskInfo(index=0, num_channels=channels, old_channels=(),
                             new_channels=tuple(range(1, channels)), ignore_label=ignore)
  rng = np.random.default_rng(0)

  def total(terms, logits, labels):
    inputs = losses_lib.LossInputs(student={"logits": logits}, teacher=None, labels=labels,
                                   images=jnp.zeros(labels.shape + (3,)), task=info)
    return sum(w * losses_lib.get(name)(inputs, **opts) for name, w, opts in terms)

  for _ in range(trials):
    logits = jnp.asarray(3 * rng.normal(size=(2, 8, 8, channels)), jnp.float32)
    labels = rng.integers(0, channels, size=(2, 8, 8))
    labels[rng.random(labels.shape) < 0.2] = ignore
    labels = jnp.asarray(labels, jnp.int32)
    try:
      va, ga = jax.value_and_grad(lambda x: total(a, x, labels))(logits)  # pylint: disable=cell-var-from-loop
      vb, gb = jax.value_and_grad(lambda x: total(b, x, labels))(logits)  # pylint: disable=cell-var-from-loop
    except Exception:  # pylint: disable=broad-except
      return False  # e.g. a term reading features or extras: not provably plain CE
    if not (np.allclose(va, vb, rtol=1e-5, atol=1e-7) and np.allclose(ga, gb, rtol=1e-5, atol=1e-7)):
      return False
  return True


# ---------------------------------------------------------------------------
# The plan: every run, its workdir and the run whose step 0 it reuses.


@dataclasses.dataclass
class Run:
  """One (method, seed) run of the sweep.

  Attributes:
    method: the method name (its directory name, `+` kept).
    seed: `config.seed`.
    workdir: `<sweep workdir>/<method>/seed_<seed>`.
    config: the run's full config (`init_from` set when it shares step 0).
    base: the (method, seed) of the run whose step-0 model it reuses, or None.
    in_table: listed in `--methods` (the ft base run of a sweep without ft is not).
  """
  method: str
  seed: int
  workdir: str
  config: ml_collections.ConfigDict
  base: tuple[str, int] | None = None
  in_table: bool = True

  @property
  def key(self) -> tuple[str, int]:
    return (self.method, self.seed)

  @property
  def name(self) -> str:
    return f"{self.method} seed {self.seed}"


@dataclasses.dataclass
class Plan:
  """What a sweep runs: `runs` in start order (base runs first), `step0[method]` = None (shares) or why not.

  `step0_from` is the other sweep every run takes its step 0 from (`--step0_from`), or empty.
  """
  runs: list[Run]
  step0: dict[str, str | None]
  step0_from: str = ""

  def describe(self) -> str:
    if self.step0_from:
      return (f"step 0 of every run from {self.step0_from} (via config.init_from): {BASE_METHOD}'s for "
              + ", ".join(m for m, why in self.step0.items() if why is None)
              + "; its own for " + (", ".join(m for m, why in self.step0.items() if why is not None) or "none"))
    shared = [m for m, why in self.step0.items() if why is None and m != BASE_METHOD]
    own = [f"  {m}: {why}" for m, why in self.step0.items() if why is not None]
    lines = []
    if shared:
      lines.append(f"step 0 shared (the {BASE_METHOD} run of the same seed, via config.init_from): "
                   + ", ".join(shared))
    if own:
      lines.append("own step 0:\n" + "\n".join(own))
    return "\n".join(lines)


def run_dir(workdir: str, method: str, seed: int) -> str:
  return os.path.join(workdir, method, f"seed_{seed}")


def make_plan(source: ConfigSource, method_names: Sequence[str], seeds: Sequence[int], workdir: str,
              step0_from: str = "") -> Plan:
  """Every run's config and workdir, and which methods share the ft run's step 0.

  Args:
    source: where every run's config comes from.
    method_names: the methods (`--methods`).
    seeds: the seeds (`--seeds`).
    workdir: the sweep directory.
    step0_from: another sweep's directory whose step-0 models every run reuses
      (`--step0_from`, e.g. the 15-5 sweep for a 15-1 sweep, as the papers'
      15-1 and 15-5 share their step 0): a method sharing ft's step 0 takes
      `<step0_from>/ft/seed_<s>`, any other `<step0_from>/<method>/seed_<s>`.
      Each must hold a finished step 0; `config.init_from`'s identity checks
      refuse one trained differently. Empty: step 0 is trained in this sweep.

  Raises:
    ValueError: an unknown method, an override some method's config lacks, an
      empty list of methods or seeds, or a `step0_from` run without a finished step 0.
  """
  method_names = list(dict.fromkeys(m.strip() for m in method_names if m.strip()))
  seeds = list(dict.fromkeys(seeds))
  if not method_names or not seeds:
    raise ValueError("give at least one method (--methods) and one seed (--seeds)")
  base_configs = {s: source.make(BASE_METHOD, s) for s in seeds}
  step0 = {}
  for m in method_names:
    step0[m] = None if m == BASE_METHOD else step0_difference(source.make(m, seeds[0]), base_configs[seeds[0]])
  if step0_from:
    return _plan_from_other_sweep(source, method_names, seeds, workdir, step0, step0_from)
  needs_base = BASE_METHOD in method_names or any(why is None for why in step0.values())
  runs = []
  for s in seeds:
    base_dir = run_dir(workdir, BASE_METHOD, s)
    if needs_base:
      runs.append(Run(BASE_METHOD, s, base_dir, base_configs[s], in_table=BASE_METHOD in method_names))
    for m in method_names:
      if m == BASE_METHOD:
        continue
      shares = step0[m] is None
      runs.append(Run(m, s, run_dir(workdir, m, s), source.make(m, s, init_from=base_dir if shares else ""),
                      base=(BASE_METHOD, s) if shares else None))
  return Plan(runs=runs, step0=step0)


def _plan_from_other_sweep(source: ConfigSource, method_names: Sequence[str], seeds: Sequence[int], workdir: str,
                           step0: dict[str, str | None], step0_from: str) -> Plan:
  """`make_plan` when every run's step 0 comes from the sweep in `step0_from` (no base run here)."""
  runs, missing = [], []
  for s in seeds:
    for m in method_names:
      source_dir = run_dir(step0_from, BASE_METHOD if step0[m] is None else m, s)
      if not checkpointing.is_done(source_dir, 0):
        missing.append(source_dir)
      runs.append(Run(m, s, run_dir(workdir, m, s), source.make(m, s, init_from=source_dir)))
  if missing:
    raise ValueError(f"--step0_from={step0_from}: no finished step 0 in " + ", ".join(missing)
                     + " (run that sweep with these methods and seeds first)")
  return Plan(runs=runs, step0=step0, step0_from=step0_from)


def num_task_steps(config) -> int:
  """Task steps of the experiment, from the scenario and the dataset's class count (no data read)."""
  return len(tasks.parse_scenario(config.task, registry.meta(config.dataset.name).num_fg))


def is_finished(config, workdir: str) -> bool:
  """Whether `workdir` holds this experiment finished: same config, every task step done, results.json written."""
  path = os.path.join(workdir, "results.json")
  config_path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if not os.path.exists(path) or not os.path.exists(config_path):
    return False
  with open(config_path) as f:
    if workdir_lib.config_differences(config, f.read(), config_path):
      return False  # another experiment's: the run itself says what differs (and refuses)
  n = num_task_steps(config)
  res = files.read_results(path)
  return len(res.get("steps", [])) == n and all(checkpointing.is_done(workdir, k) for k in range(n))


# ---------------------------------------------------------------------------
# Running: in this process or as subprocesses, a run starting once its base run finished.


def _error_line(e: BaseException) -> str:
  """The error on one line: a message that lists details below its first line keeps them ("a; b")."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  text = lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "") if lines else ""
  return text if isinstance(e, runtime.EXPECTED_ERRORS) and text else f"{type(e).__name__}: {text}"


class _Finished:
  """A job that has already ended (in-process runs finish inside `start`)."""

  def __init__(self, error: str | None):
    self.error = error

  def poll(self) -> tuple[bool, str | None]:
    return True, self.error

  def stop(self) -> None:
    pass


def start_in_process(run: Run) -> _Finished:
  """Runs `train.run` here, to the end; an exception becomes the run's error line (traceback if unexpected)."""
  from incseg_jax import train  # pylint: disable=g-import-not-at-top  (TensorFlow and orbax load here)
  try:
    train.run(run.config, run.workdir)
  except Exception as e:  # pylint: disable=broad-except  (one failing run must not stop the sweep)
    if not isinstance(e, runtime.EXPECTED_ERRORS):
      traceback.print_exc()
    return _Finished(_error_line(e))
  return _Finished(None)


def main_command(source: ConfigSource, run: Run) -> list[str]:
  """The `python -m incseg_jax.main` command line of `run` (what `--parallel` starts)."""
  cmd = [sys.executable, "-m", "incseg_jax.main", f"--config={source.spec(run.method)}", f"--workdir={run.workdir}",
         *source.override_args, f"--config.seed={run.seed}"]
  if run.config.init_from:
    cmd.append(f"--config.init_from={run.config.init_from}")
  return cmd


class _Subprocess:
  """A run as a `python -m incseg_jax.main` subprocess writing to `<run dir>/sweep.log`."""

  LOG = "sweep.log"

  def __init__(self, cmd: list[str], workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self.log_path = os.path.join(workdir, self.LOG)
    self._log = open(self.log_path, "a")  # pylint: disable=consider-using-with  (closed in poll/stop)
    self._log.write("$ " + " ".join(cmd) + "\n")
    self._log.flush()
    self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

  def poll(self) -> tuple[bool, str | None]:
    rc = self.proc.poll()
    if rc is None:
      return False, None
    self._log.close()
    return True, None if rc == 0 else f"exit status {rc}: {last_error_line(self.log_path)} (log: {self.log_path})"

  def stop(self) -> None:
    if self.proc.poll() is None:
      self.proc.terminate()
      self.proc.wait()
    self._log.close()


def last_error_line(log_path: str) -> str:
  """The last `error: ...` line of a run's log with its indented detail lines joined ("a; b"), else its last
  non-empty line."""
  with open(log_path, errors="replace") as f:
    f.seek(max(0, os.path.getsize(log_path) - 65536))
    lines = [ln.rstrip() for ln in f.read().splitlines() if ln.strip()]
  starts = [i for i, ln in enumerate(lines) if ln.startswith("error:")]
  if not starts:
    return lines[-1].strip() if lines else "(no output)"
  details = []
  for ln in lines[starts[-1] + 1:]:
    if not ln[:1].isspace():  # the message's detail lines are indented
      break
    details.append(ln.strip())
  return lines[starts[-1]] + (" " + "; ".join(details) if details else "")


def execute(runs: Sequence[Run], start: Callable[[Run], Any], parallel: int = 1,
            poll_seconds: float = 0.5) -> dict[tuple[str, int], str | None]:
  """Runs `runs` (in order, at most `parallel` at once), each after its base run finished.

  Finished runs (`is_finished`) are skipped. A run whose base run failed is
  not started and fails with that reason.

  Args:
    runs: the plan's runs, base runs before the runs that need them.
    start: run -> a job with `poll() -> (ended, error line or None)` and `stop()`.
    parallel: most jobs at once.
    poll_seconds: wait between polls while every slot is busy.

  Returns:
    (method, seed) -> None (finished) or the error line, for every run.
  """
  outcome: dict[tuple[str, int], str | None] = {}
  pending = []
  for run in runs:  # decided once: nothing but this sweep's runs changes the workdirs meanwhile
    if is_finished(run.config, run.workdir):
      outcome[run.key] = None
      print(f"sweep: {run.name}: finished in {run.workdir}, skipped", flush=True)
    else:
      pending.append(run)
  active: list[tuple[Run, Any, float]] = []
  try:
    while pending or active:
      for run in list(pending):
        if run.base is not None and run.base not in outcome:
          continue  # its base run is still to come or running
        if run.base is not None and outcome[run.base] is not None:
          pending.remove(run)
          outcome[run.key] = f"not run: its step-0 base run ({run.base[0]} seed {run.base[1]}) failed"
          print(f"sweep: {run.name}: {outcome[run.key]}", flush=True)
          continue
        if len(active) >= parallel:
          break
        pending.remove(run)
        shared = f" (step 0 from {run.config.init_from})" if run.config.init_from else ""
        print(f"sweep: {run.name}: running in {run.workdir}{shared}", flush=True)
        t0 = time.time()
        active.append((run, start(run), t0))
      if pending and not active:
        raise RuntimeError(f"sweep: runs wait for base runs that are not in the plan: {[r.name for r in pending]}")
      still = []
      for run, job, t0 in active:
        ended, error = job.poll()
        if not ended:
          still.append((run, job, t0))
          continue
        outcome[run.key] = error
        took = f"{time.time() - t0:.0f} s"
        print(f"sweep: {run.name}: " + (f"FAILED after {took}: {error}" if error else f"done ({took})"), flush=True)
      if still and len(still) == len(active):
        time.sleep(poll_seconds)
      active = still
  finally:
    for _, job, _ in active:  # interrupted: no orphaned trainings
      job.stop()
  return outcome


# ---------------------------------------------------------------------------
# The sweep.


OUTPUTS = ("sweep.md", "sweep.csv", "sweep.json")


def run_sweep(source: ConfigSource, method_names: Sequence[str], seeds: Sequence[int], workdir: str,
              parallel: int = 1, step0_from: str = "", published: str = "", table: str = "",
              start: Callable[[Run], Any] | None = None, plot_images: int = -1) -> int:
  """Plans, runs and tabulates a sweep; returns the exit status (0, or 1 when a run failed).

  Args:
    source, method_names, seeds, workdir, parallel, step0_from: see `make_plan` and `execute`.
    published: a published experiment's key (`voc/15-5/overlapped`) whose
      numbers go beside ours (`published.beside`); empty: none.
    table: with `published`, only that table's numbers (`ucd/1`).
    start: run -> job (`execute`); default: in this process (`parallel` 1)
      or as subprocesses.
    plot_images: >= 0 also writes the plots of the finished runs into
      `<workdir>/plots` (`incseg_jax.plot`) with this many evaluation images
      per prediction grid (0: no grids); -1 writes none.

  Raises:
    ValueError: bad methods, seeds or overrides, or runs that are not the
      `published` experiment (before anything runs).
  """
  if parallel < 1:
    raise ValueError(f"--parallel={parallel}: expected at least 1")
  plan = make_plan(source, method_names, seeds, workdir, step0_from)
  beside = None
  if published:  # checked before anything runs
    beside = beside_lib.prepare(published, run_shape(source.make(BASE_METHOD, seeds[0])), table or None)
  print(plan.describe(), flush=True)
  if start is None and parallel == 1:
    start = start_in_process
  elif start is None:
    start = lambda run: _Subprocess(main_command(source, run), run.workdir)
  outcome = execute(plan.runs, start, parallel)
  summary = collect(plan, outcome, beside)
  summary["config"] = f"{source.path}:{source.arg}"
  summary["overrides"] = list(source.override_args)
  write_outputs(workdir, summary)
  print(reporting.sweep_markdown(summary), flush=True)
  finished = [r.workdir for r in plan.runs if r.in_table and outcome.get(r.key) is None
              and is_finished(r.config, r.workdir)]
  if finished and plot_images >= 0:
    from incseg_jax import plot  # pylint: disable=g-import-not-at-top  (matplotlib only when plotting)
    written = plot.write_runs(finished, os.path.join(workdir, "plots"), images=plot_images)
    print(f"sweep: {len(written)} plots in {os.path.join(workdir, 'plots')}", flush=True)
  failed = summary["failed"]
  print(f"sweep: {len(plan.runs)} runs, {len(failed)} failed; table in {os.path.join(workdir, OUTPUTS[0])}",
        flush=True)
  for f in failed:
    print(f"FAILED: {f['method']} seed {f['seed']}: {f['error']}", file=sys.stderr, flush=True)
  return 1 if failed else 0


def run_shape(config) -> beside_lib.RunShape:
  """What `published.beside.prepare` checks, from a run's config (no data read)."""
  return beside_lib.RunShape(config.dataset.name, config.task, config.setting, config.labeling or None,
                             config.class_order, registry.meta(config.dataset.name).num_fg)


def collect(plan: Plan, outcome: Mapping[tuple[str, int], str | None],
            beside: beside_lib.Beside | None = None) -> dict[str, Any]:
  """The sweep summary over the finished runs of the listed methods, with the failures and sharing decisions.

  With `beside`, also the paper's numbers beside ours (`summary["published"]`).
  """
  results: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in plan.step0}
  for run in plan.runs:
    if run.in_table and outcome.get(run.key) is None and is_finished(run.config, run.workdir):
      results[run.method][run.seed] = files.read_results(os.path.join(run.workdir, "results.json"))
  summary = reporting.sweep_summary(results)
  summary["seeds"] = sorted({r.seed for r in plan.runs})
  summary["step0"] = {m: "shared" if why is None and m != BASE_METHOD else (why or "base")
                      for m, why in plan.step0.items()}
  if plan.step0_from:
    summary["step0_from"] = plan.step0_from
  summary["failed"] = [{"method": r.method, "seed": r.seed, "error": outcome[r.key]}
                       for r in plan.runs if outcome.get(r.key) is not None]
  if beside is not None:
    summary["published"] = beside_lib.sweep_rows(beside, results)
  return summary


def write_outputs(workdir: str, summary: dict[str, Any]) -> None:
  """sweep.md, sweep.csv and sweep.json in `workdir` (each atomically)."""
  os.makedirs(workdir, exist_ok=True)
  md, csv_path, json_path = (os.path.join(workdir, name) for name in OUTPUTS)
  files.write_text_atomic(md, reporting.sweep_markdown(summary) + "\n")
  files.write_text_atomic(csv_path, reporting.sweep_csv(summary))
  files.write_json_atomic(json_path, summary)


def parse_seeds(values: Sequence[str]) -> list[int]:
  try:
    return [int(v) for v in values if v.strip()]
  except ValueError:
    raise ValueError(f"--seeds={','.join(values)}: expected integers, e.g. --seeds=0,1,2") from None


# ---------------------------------------------------------------------------
# A published table: one sub-sweep per experiment of the table.

# The training protocol of each paper's tables (config_lib.PROTOCOLS), set for real datasets unless given.
PAPER_PROTOCOL = {"ilt": "ilt", "ucd": "ucd"}
TABLE_OUTPUT = "table.md"


@dataclasses.dataclass
class SubSweep:
  """One experiment of a published table, as a sweep.

  Attributes:
    key: the experiment (`published.Key`).
    source: the config source of its runs (the scenario, setting, labeling and order of `key`).
    methods: the table's methods for it that run here, in the table's order.
    workdir: `<sweep workdir>/<key.slug>`.
    skipped: one line per row of the table not run, with why.
    notes: what was set or could not be, one line each.
  """
  key: published_lib.Key
  source: ConfigSource
  methods: list[str]
  workdir: str
  skipped: list[str]
  notes: list[str]


def _with_items(arg: str, items: Mapping[str, str]) -> str:
  """The config argument `arg` with `items` set (replacing the same keys)."""
  kept = [i.strip() for i in arg.split(",") if i.strip() and i.split("=")[0].strip() not in items]
  return ",".join(kept + [f"{k}={v}" for k, v in items.items()])


def table_plan(source: ConfigSource, table_id: str, workdir: str, only: Sequence[str] = ()) -> list[SubSweep]:
  """The sub-sweeps of `--table=table_id`: every experiment of the table with its methods that exist here.

  The config's dataset must be the table's; `shapes` stands in for VOC (its
  tables only), with `order=frequency` for the first paper's VOC frequency
  order. On a real dataset the paper's protocol is added unless `--config`
  gives one. Rows with no preset here, the first paper's step-0 row M0 and
  methods that cannot run as configured (replay without `--config.replay.dir`)
  are listed in `skipped`, not run.

  Args:
    source: the config source (`--config`, its overrides).
    table_id: `ucd/1`, `ilt/3`, ...
    workdir: the sweep directory.
    only: if given, only these of the table's methods (`--methods`).

  Raises:
    ValueError: an unknown or untranscribed table, a config of another
      dataset, or `only` naming a method the table does not have.
  """
  grid = published_lib.table(table_id)
  paper = table_id.split("/")[0]
  dataset = source.make(BASE_METHOD, 0).dataset.name
  stand_in = beside_lib.STAND_IN.get(dataset) == grid.dataset
  if dataset != grid.dataset and not stand_in:
    if dataset in beside_lib.STAND_IN:
      fit = [t["id"] for t in published_lib.tables()
             if t["status"] == "transcribed" and t["dataset"] == beside_lib.STAND_IN[dataset]]
      raise ValueError(f"--table={table_id} is on {grid.dataset}; {dataset} stands in for "
                       f"{beside_lib.STAND_IN[dataset]} only: one of {', '.join(fit)}")
    raise ValueError(f"--table={table_id} is on {grid.dataset}, but --config is on {dataset}")
  everything = {m for ms in grid.methods.values() for m in ms}
  unknown = [m for m in only if m not in everything]
  if unknown:
    raise ValueError(f"--methods={','.join(only)}: {', '.join(unknown)} not in table {table_id} (its methods: "
                     f"{', '.join(sorted(everything))})")
  given = {i.split("=")[0].strip() for i in source.arg.split(",") if i.strip()}
  subs = []
  for key in grid.keys:
    items, notes = {"task": key.scenario, "setting": key.setting}, []
    if key.labeling:
      items["labeling"] = key.labeling
    if key.order:
      items["order"] = beside_lib.STAND_IN_ORDER.get(key.order, key.order) if stand_in else key.order
      if items["order"] != key.order:
        notes.append(f"order={items['order']} ({dataset}'s training pixel counts) stands in for the paper's "
                     f"order={key.order}")
    if key.pretrain:
      notes.append(f"the paper pre-trained on {key.pretrain}: the backbone is yours to set (--config.pretrained)")
    if not stand_in and "protocol" not in given:
      items["protocol"] = PAPER_PROTOCOL[paper]
      notes.append(f"protocol={items['protocol']} (the paper's; give protocol= in --config for another)")
    sub = dataclasses.replace(source, arg=_with_items(source.arg, items))
    methods, skipped = [], []
    for m in grid.methods[str(key)]:
      if only and m not in only:
        continue
      if m == published_lib.STEP0:
        skipped.append(f"{m}: the step-0 model, not a method (compare prints it as 'M0 (step 0)')")
        continue
      try:
        method = methods_lib.get(m)
        replay_dir = sub.make(m, 0).replay.dir if method.replay else "given"
      except ValueError as e:
        skipped.append(f"{m}: {e}")
        continue
      if not replay_dir:
        skipped.append(f"{m}: needs replay images of the old classes (--config.replay.dir)")
        continue
      methods.append(m)
    if not only:
      skipped += [f"{row}: {why}" for row, why in grid.unmatched]
    subs.append(SubSweep(key, sub, methods, os.path.join(workdir, key.slug), skipped, notes))
  return subs


def run_table(source: ConfigSource, table_id: str, seeds: Sequence[int], workdir: str, parallel: int = 1,
              only: Sequence[str] = (), start: Callable[[Run], Any] | None = None) -> int:
  """Runs every sub-sweep of `table_plan` (skipping and resuming as a sweep does), each printed with the
  table's numbers beside ours; writes `<workdir>/table.md`. Returns 1 when a run failed, else 0.

  Raises:
    ValueError: see `table_plan`, `run_sweep`.
  """
  subs = table_plan(source, table_id, workdir, only)
  grid = published_lib.table(table_id)
  print(f"sweep --table={table_id} ({grid.caption.split('. ')[0]}): {len(subs)} sub-sweeps: "
        + ", ".join(str(s.key) for s in subs), flush=True)
  statuses = []
  sections = [f"# {table_id}: {grid.caption}", ""]
  for i, sub in enumerate(subs):
    print(f"sweep --table={table_id} [{i + 1}/{len(subs)}]: {sub.key} in {sub.workdir}", flush=True)
    lines = [f"note: {n}" for n in sub.notes] + [f"not run: {s}" for s in sub.skipped]
    for line in lines:
      print(f"  {line}", flush=True)
    sections += [f"## {sub.key}", ""] + [f"- {line}" for line in lines] + ([""] if lines else [])
    if not sub.methods:
      print("  nothing to run here", flush=True)
      sections += ["nothing to run here", ""]
      continue
    statuses.append(run_sweep(sub.source, sub.methods, seeds, sub.workdir, parallel, published=str(sub.key),
                              table=table_id, start=start))
    with open(os.path.join(sub.workdir, OUTPUTS[0])) as f:
      sections += [f.read().rstrip("\n"), ""]
  os.makedirs(workdir, exist_ok=True)
  files.write_text_atomic(os.path.join(workdir, TABLE_OUTPUT), "\n".join(sections))
  print(f"sweep --table={table_id}: tables in {os.path.join(workdir, TABLE_OUTPUT)}", flush=True)
  return 1 if any(statuses) else 0


# ---------------------------------------------------------------------------
# Command line (the flags are defined only when run as a program, so that importing this
# module next to incseg_jax.main or incseg_jax.evaluate defines no flag twice).


def _define_flags() -> None:
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg] (without method=).",
                                  lock_config=True)
  flags.DEFINE_list("methods", None, "Methods to run, e.g. ft,mib,plop,ef+kd_cls_t (with --table: only these "
                    "of the table's).")
  flags.DEFINE_list("seeds", ["0"], "Seeds (config.seed) of every method.")
  flags.DEFINE_string("workdir", None, "Sweep directory: <workdir>/<method>/seed_<seed>/ and sweep.{md,csv,json}.")
  flags.DEFINE_integer("parallel", 1, "Runs at once: 1 runs them in this process, N > 1 as N subprocesses.")
  flags.DEFINE_string("step0_from", "", "Another sweep's directory whose step-0 models every run reuses "
                      "(e.g. the 15-5 sweep's for a 15-1 sweep).")
  flags.DEFINE_string("published", "", "Put a paper's numbers beside ours: the experiment's key, e.g. "
                      "voc/15-5/overlapped (docs/published.md).")
  flags.DEFINE_integer("plot_images", 0, "Plots of the finished runs in <workdir>/plots (incseg_jax.plot) with this "
                       "many evaluation images per prediction grid (0: curves and heat maps only; -1: no plots).")
  flags.DEFINE_string("table", "", "Run a published table (e.g. ucd/1): one sub-sweep per experiment of it, "
                      "with its numbers beside ours (docs/published.md).")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  runtime.setup_command(argv)
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS
  path, _, arg = config_flags.get_config_filename(fv["config"]).partition(":")
  with runtime.clear_errors():
    source = ConfigSource(path=path, arg=arg, overrides=dict(config_flags.get_override_values(fv["config"])),
                          override_args=override_args(sys.argv[1:], fv))
    if fv.table:
      if fv.published or fv.step0_from:
        raise ValueError("--table runs each experiment of the table with its numbers beside ours: drop "
                         + " and ".join(f for f in ("--published", "--step0_from") if fv[f[2:]].value))
      status = run_table(source, fv.table, parse_seeds(fv.seeds), fv.workdir, fv.parallel, fv.methods or ())
    elif not fv.methods:
      raise ValueError("give --methods (or --table=<paper>/<table>, e.g. --table=ucd/1)")
    else:
      status = run_sweep(source, fv.methods, parse_seeds(fv.seeds), fv.workdir, fv.parallel, fv.step0_from,
                         published=fv.published, plot_images=fv.plot_images)
  sys.exit(status)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=runtime.parse_flags)
