"""PNG plots of finished runs and sweeps: mIoU per task step, per-class IoU heat maps, predictions.

  python -m incseg_jax.plot WORKDIR [WORKDIR ...] [--out=DIR] [--images=N]

A WORKDIR is a run directory (config.json, results.json) or a sweep directory
(`<sweep>/<method>/seed_<n>/`, expanded to its runs; unfinished ones are
skipped with a note). Written into --out (default `<WORKDIR>/plots` for one
WORKDIR):

* `miou_per_step.png`: mIoU old / new / all after each task step, one panel
  each, one colour per method: the mean over its seeds, with a band from the
  lowest to the highest seed (runs grouped by their config's method and seed);
  joint runs as dashed reference lines scored on each step's classes.
* `<method>_seed<s>_iou.png` per run: per-class IoU from results.json, rows =
  classes in learning order, columns = task steps: where forgetting happens.
* `<method>_seed<s>_predictions.png` per run (`--images=N`, N > 0): the first
  N evaluation images, their ground truth and each task step's prediction in
  the dataset's palette, each step's checkpoint restored as
  incseg_jax/evaluate.py does.

Other commands call `write_runs` / `write_sweep`; docs/plots.md shows what each
figure holds.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import warnings
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Patch
import numpy as np

from incseg_jax import checkpointing
from incseg_jax import experiment as experiment_lib
from incseg_jax import files
from incseg_jax import reporting
from incseg_jax import runtime
from incseg_jax import sharding
from incseg_jax import workdir as workdir_lib

# (panel, results.json key): what "old" / "new" / "all" mean is each step's record's (reporting.step_record).
SCORES = (("old", "miou_old"), ("new", "miou_new"), ("all", "miou"))
_PANEL_TITLES = {"old": "mIoU old (earlier steps' classes, no background)", "new": "mIoU new (the step's classes)",
                 "all": "mIoU all (background + every class seen)"}
RESULTS_FILE = "results.json"
MIOU_FILE = "miou_per_step.png"
_SWEEP_RUN = re.compile(r"seed_(\d+)$")
_DPI = 100


@dataclasses.dataclass(frozen=True)
class Run:
  """A finished run: its directory, its config's method and seed, its results.json."""
  path: str
  method: str
  seed: int
  results: dict[str, Any]

  @property
  def joint(self) -> bool:
    return self.results["task"] == "joint"

  @property
  def label(self) -> str:
    """File-name stem of the run's own figures, e.g. `mib_seed0`."""
    return re.sub(r"[^A-Za-z0-9_+.-]", "_", f"{self.method}_seed{self.seed}")


@dataclasses.dataclass(frozen=True)
class Band:
  """One method's scores after each task step over its seeds.

  Attributes:
    method: the configs' method.
    seeds: the seeds, in the order of `per_seed`'s rows.
    paths: the run directory of each seed.
    joint: joint runs (scored on the incremental runs' step classes).
    per_seed: score key (`SCORES`) -> (seeds, steps) array, NaN where a run has no value.
    mean, low, high, std: score key -> (steps,) mean, minimum, maximum and sample standard
      deviation (ddof=1; NaN below two values) over the seeds with a value.
  """
  method: str
  seeds: tuple[int, ...]
  paths: tuple[str, ...]
  joint: bool
  per_seed: dict[str, np.ndarray]
  mean: dict[str, np.ndarray]
  low: dict[str, np.ndarray]
  high: dict[str, np.ndarray]
  std: dict[str, np.ndarray]


# Finding and reading runs.

def find_runs(workdirs: Sequence[str]) -> list[str]:
  """The run directories of `workdirs`, each a run directory or a sweep directory (expanded).

  A sweep's runs come sorted by method, then seed; those without results.json
  (unfinished or failed) are left out with a printed note. A run directory
  given itself is always kept (`load_run` then says what is missing).

  Raises:
    ValueError: a WORKDIR that is neither (the message says what was expected).
  """
  out = []
  for workdir in workdirs:
    if not os.path.isdir(workdir):
      raise ValueError(f"{workdir}: not a directory; expected a run directory ({workdir_lib.CONFIG_FILE}, "
                       f"{RESULTS_FILE}) or a sweep directory (<method>/seed_<n>/ runs)")
    if os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE)):
      out.append(workdir)
      continue
    found = []
    for config in glob.glob(os.path.join(glob.escape(workdir), "*", "seed_*", workdir_lib.CONFIG_FILE)):
      run = os.path.dirname(config)
      match = _SWEEP_RUN.search(run)
      if match:
        found.append((os.path.basename(os.path.dirname(run)), int(match.group(1)), run))
    if not found:
      raise ValueError(f"{workdir}: neither a run directory (no {workdir_lib.CONFIG_FILE}) nor a sweep directory "
                       f"(no <method>/seed_<n>/{workdir_lib.CONFIG_FILE} below it)")
    for _, _, run in sorted(found):
      if os.path.exists(os.path.join(run, RESULTS_FILE)):
        out.append(run)
      else:
        print(f"plot: skipping {run}: no {RESULTS_FILE} (unfinished or failed)", flush=True)
  return out


def load_run(path: str) -> Run:
  """The run in `path`: method and seed from its config.json, scores from its results.json.

  Raises:
    ValueError: no config.json or no results.json there; files.CorruptFileError: a damaged one.
  """
  config = workdir_lib.read_config(path, flag="plot: run directory")
  res_path = os.path.join(path, RESULTS_FILE)
  if not os.path.exists(res_path):
    raise ValueError(f"{res_path} not found: plots read a finished run's {RESULTS_FILE} (has the run finished?)")
  res = dict(files.read_results(res_path))
  res["workdir"] = path  # named in reporting.class_groups' message
  return Run(path=path, method=str(config.method), seed=int(config.seed), results=res)


def check_runs(runs: Sequence[Run]) -> None:
  """The runs fit one figure: one scenario, one dataset, one run per (method, seed).

  Raises:
    ValueError: naming the runs at fault and what differs.
  """
  if not runs:
    raise ValueError("plot: no finished run to plot")
  incremental = [r.results for r in runs if not r.joint]
  if incremental:
    reporting.class_groups(incremental, "plot")  # one scenario (dataset, task, setting, labeling, class order)
  dataset = runs[0].results["dataset"]
  for run in runs:
    if run.results["dataset"] != dataset:
      raise ValueError(f"plot: {run.path} is a run on {run.results['dataset']}, {runs[0].path} one on {dataset}: "
                       "plot each dataset's runs apart")
  seen = {}
  for run in runs:
    key = (run.method, run.seed)
    if key in seen:
      raise ValueError(f"plot: {seen[key]} and {run.path} are both method {run.method} seed {run.seed}; runs are "
                       "grouped by method and seed, so give each once (plot other variants apart)")
    seen[key] = run.path


# Figure a: mIoU per task step, seed bands.

def _mean_over(metrics: dict[str, Any], names: Sequence[str]) -> float:
  """mIoU over the named classes present in the ground truth (NaN if none), as results.json's means count."""
  iou = dict(zip(metrics["class_names"], metrics["iou"]))
  present = dict(zip(metrics["class_names"], metrics.get("present", [True] * len(metrics["iou"]))))
  vals = [iou[n] for n in names if n in iou and iou[n] is not None and present[n]]
  return float(np.mean(vals)) if vals else np.nan


def step_scores(res: dict[str, Any], reference: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
  """Score key -> (steps,) array after each task step, NaN where there is none (e.g. "old" at step 0).

  An incremental run's numbers are its records' own. A joint run (one step)
  is scored on the classes of each step of `reference` (an incremental run's
  results): old = that step's old classes, new = its new ones, all =
  background and every class seen so far, so it reads as an upper bound step
  by step.

  Raises:
    ValueError: a joint run without a reference.
  """
  if res["task"] != "joint":
    return {key: np.asarray([np.nan if s["metrics"][key] is None else s["metrics"][key] for s in res["steps"]],
                            np.float64) for _, key in SCORES}
  if reference is None:
    raise ValueError(f"plot: joint run {res.get('workdir', '')} needs an incremental run to be scored per step")
  final = res["steps"][-1]["metrics"]
  background = reference["channel_names"][0]
  out = {key: [] for _, key in SCORES}
  for step in reference["steps"]:
    old, new = list(step["old_classes"]), list(step["new_classes"])
    out["miou_old"].append(_mean_over(final, old))
    out["miou_new"].append(_mean_over(final, new))
    out["miou"].append(_mean_over(final, [background] + old + new))
  return {key: np.asarray(v, np.float64) for key, v in out.items()}


def _stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(mean, min, max, sample std) over axis 0 ignoring NaN; NaN where nothing (or, for std, one value) is left."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns ("old" at step 0) are expected
    std = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else np.full(values.shape[1], np.nan)
    return np.nanmean(values, axis=0), np.nanmin(values, axis=0), np.nanmax(values, axis=0), std


def seed_bands(runs: Sequence[Run]) -> list[Band]:
  """One `Band` per method (order of first appearance), its seeds' runs only, seeds ascending.

  Joint runs are scored on the first incremental run's steps (`step_scores`);
  without any incremental run there is no per-step figure and no band.
  """
  incremental = [r for r in runs if not r.joint]
  if not incremental:
    return []
  reference = incremental[0].results
  groups: dict[tuple[str, bool], list[Run]] = {}
  for run in runs:
    groups.setdefault((run.method, run.joint), []).append(run)
  bands = []
  for (method, joint), members in groups.items():
    members = sorted(members, key=lambda r: r.seed)
    scores = [step_scores(r.results, reference) for r in members]
    per_seed = {key: np.stack([s[key] for s in scores]) for _, key in SCORES}
    stats = {key: _stats(v) for key, v in per_seed.items()}
    bands.append(Band(method=method, seeds=tuple(r.seed for r in members), paths=tuple(r.path for r in members),
                      joint=joint, per_seed=per_seed, mean={k: s[0] for k, s in stats.items()},
                      low={k: s[1] for k, s in stats.items()}, high={k: s[2] for k, s in stats.items()},
                      std={k: s[3] for k, s in stats.items()}))
  return bands


def _scenario(res: dict[str, Any]) -> str:
  text = " ".join(str(res[k]) for k in ("dataset", "task", "setting") if res.get(k))
  return text + (f" ({res['labeling']})" if res.get("labeling") else "")


def miou_figure(bands: Sequence[Band], title: str) -> Figure:
  """Figure a: three panels (old, new, all), mean line and min-max band per method, in %."""
  fig = Figure(figsize=(14, 4.2), dpi=_DPI, layout="constrained")
  axes = fig.subplots(1, len(SCORES), sharey=True)
  palette = matplotlib.colormaps["tab10" if len(bands) <= 10 else "tab20"]
  for ax, (panel, key) in zip(axes, SCORES):
    for i, band in enumerate(bands):
      x = np.arange(band.mean[key].shape[0])
      colour = "0.25" if band.joint else palette(i % palette.N)
      style = dict(linestyle="--", marker=None) if band.joint else dict(linestyle="-", marker="o", markersize=4)
      ax.plot(x, 100 * band.mean[key], color=colour, label=f"{band.method} (n={len(band.seeds)})", **style)
      if len(band.seeds) > 1:
        ax.fill_between(x, 100 * band.low[key], 100 * band.high[key], color=colour, alpha=0.18, linewidth=0)
    steps = max(b.mean[key].shape[0] for b in bands)
    ax.set_xticks(np.arange(steps))
    ax.set_xlabel("task step")
    ax.set_title(_PANEL_TITLES[panel], fontsize=10)
    ax.grid(alpha=0.3)
  # One y range for the three panels (shared), from 0 to just above the highest band or line.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
    top = np.nanmax([np.nanmax(np.r_[b.high[key], b.mean[key]]) for b in bands for _, key in SCORES])
  axes[0].set_ylim(0, 100 * min(1.0, top * 1.05) if np.isfinite(top) and top > 0 else 100)
  axes[0].set_ylabel("mIoU (%)")
  handles, labels = axes[-1].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside right upper", fontsize=9)
  fig.suptitle(title, fontsize=11)
  return fig


# Figure b: per-class IoU heat map of one run.

def iou_matrix(res: dict[str, Any]) -> tuple[list[str], np.ndarray]:
  """(class names in learning order (channel order, background first), (classes, steps) IoU).

  Entry [c, k] is results.json's `iou[c]` of step k, NaN where it has none
  (not learned yet, or neither in the ground truth nor predicted): the numbers
  of results.md's per-class table.
  """
  names = list(res["channel_names"])
  matrix = np.full((len(names), len(res["steps"])), np.nan)
  for k, step in enumerate(res["steps"]):
    for c, value in enumerate(step["metrics"]["iou"]):
      if value is not None:
        matrix[c, k] = value
  return names, matrix


def _step_label(step: dict[str, Any]) -> str:
  new = step["new_classes"]
  return f"{step['task_step']}\n+{new[0]}" if len(new) == 1 else f"{step['task_step']}\n+{len(new)} classes"


def iou_figure(run: Run) -> Figure:
  """Figure b: the heat map of `iou_matrix`, in %, with the classes each step added set apart."""
  names, matrix = iou_matrix(run.results)
  steps = run.results["steps"]
  rows, cols = matrix.shape
  fig = Figure(figsize=(max(5.0, 1.1 * cols + 3.5), max(3.5, 0.26 * rows + 1.8)), dpi=_DPI, layout="constrained")
  ax = fig.subplots()
  cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.88")
  image = ax.imshow(np.ma.masked_invalid(100 * matrix), cmap=cmap, vmin=0, vmax=100, aspect="auto",
                    interpolation="nearest")
  if rows * cols <= 1200:  # numbers stay legible; ADE20K's 151 rows get colours only
    for c in range(rows):
      for k in range(cols):
        if not np.isnan(matrix[c, k]):
          v = 100 * matrix[c, k]
          ax.text(k, c, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 55 else "black")
  # A line under each step's classes: rows above it existed when the step was evaluated.
  for step in steps[:-1]:
    ax.axhline(len(step["metrics"]["iou"]) - 0.5, color="white", linewidth=1.5)
  ax.set_yticks(np.arange(rows), names, fontsize=8 if rows <= 40 else 5)
  ax.set_xticks(np.arange(cols), [_step_label(s) for s in steps], fontsize=8)
  ax.set_xlabel("task step (+ classes it added)")
  fig.colorbar(image, ax=ax, label="IoU (%)", shrink=0.8)
  ax.set_title(f"{run.label}: per-class IoU after each task step\n{_scenario(run.results)}; "
               "grey: not learned yet or not scored", fontsize=10)
  return fig


# Figure c: predictions of a few fixed evaluation images.

@dataclasses.dataclass(frozen=True)
class Grid:
  """What figure c shows of one run.

  Attributes:
    ids: the images' example ids (the first N of the eval split).
    rgb: per image, (h, w, 3) uint8.
    truth: per image, the ground truth coloured with the dataset's palette.
    steps: the task steps shown (those with a finished checkpoint).
    step_labels: column title of each step.
    channels: per step, per image, the predicted channel map (h, w).
    preds: per step, per image, the prediction coloured with the palette.
    legend: (name, RGB) of every class (and void) that appears in the grid.
  """
  ids: list[str]
  rgb: list[np.ndarray]
  truth: list[np.ndarray]
  steps: list[int]
  step_labels: list[str]
  channels: list[list[np.ndarray]]
  preds: list[list[np.ndarray]]
  legend: list[tuple[str, tuple[int, int, int]]]


def prediction_grid(path: str, images: int, mesh=None) -> Grid:
  """The first `images` evaluation images of the run in `path`, their ground truth and every step's prediction.

  As incseg_jax/evaluate.py: the saved config rebuilds the experiment, each
  finished step's final checkpoint is restored (identity-checked) and applied
  in eval mode.

  Raises:
    ValueError: no run there, or no finished task step.
  """
  # Imported here: it loads TensorFlow (~5 s), which the other figures do not need.
  from incseg_jax import evaluation  # pylint: disable=g-import-not-at-top
  config = workdir_lib.read_config(path, flag="plot: run directory")
  exp = experiment_lib.build(config)
  steps = [k for k in range(exp.num_steps) if checkpointing.is_done(path, k)]
  if not steps:
    raise ValueError(f"plot: {path} has no finished task step to show predictions of")
  mesh = mesh if mesh is not None else sharding.make_mesh()
  shown = evaluation.fixed_images(exp.eval_split, images, config.input)
  palette, channel_class = exp.meta.palette, evaluation.channel_classes(exp.plan)
  channels = []
  for k in steps:
    variables = workdir_lib.restore_step(exp, path, k, mesh)
    channels.append(evaluation.predict_fixed(exp.step(k).model, variables, shown, mesh))
  names = exp.meta.class_names
  labels = [np.unique(x) for x in shown.labels] + [channel_class[np.unique(p)] for row in channels for p in row]
  used = np.unique(np.concatenate(labels))
  legend = [(names[c], tuple(int(v) for v in palette[c])) for c in used if c < len(names)]
  if any(c >= len(names) for c in used):
    legend.append(("void", evaluation.IGNORE_COLOUR))
  step_labels = []
  for k in steps:
    new = [names[c] for c in exp.plan.steps[k].new_classes]
    step_labels.append(f"step {k}: +{new[0]}" if len(new) == 1 else f"step {k}: +{len(new)} classes")
  return Grid(ids=shown.ids, rgb=shown.rgb, truth=[evaluation.colourise(x, palette) for x in shown.labels],
              steps=steps, step_labels=step_labels, channels=channels,
              preds=[[evaluation.prediction_colours(p, channel_class, palette) for p in row] for row in channels],
              legend=legend)


def grid_figure(grid: Grid, title: str) -> Figure:
  """Figure c: one row per image: image, ground truth, then each step's prediction."""
  rows, cols = len(grid.ids), 2 + len(grid.steps)
  cell = 1.7
  fig = Figure(figsize=(cell * cols + 0.6, cell * rows + 1.4), dpi=_DPI, layout="constrained")
  axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
  titles = ["image", "ground truth"] + grid.step_labels
  for i in range(rows):
    panels = [grid.rgb[i], grid.truth[i]] + [grid.preds[s][i] for s in range(len(grid.steps))]
    for j, panel in enumerate(panels):
      ax = axes[i, j]
      ax.imshow(panel, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(titles[j], fontsize=8)
    axes[i, 0].set_ylabel(grid.ids[i], fontsize=7)
  handles = [Patch(facecolor=np.asarray(rgb) / 255.0, edgecolor="0.5", label=name) for name, rgb in grid.legend]
  fig.legend(handles=handles, loc="outside lower center", ncol=min(6, max(1, len(handles))), fontsize=7)
  fig.suptitle(title, fontsize=10)
  return fig


# Writing.

def _save(fig: Figure, path: str) -> str:
  """Writes `fig` as PNG atomically (a reader never sees half a file) and returns `path`."""
  tmp = f"{path}.tmp.{os.getpid()}"
  fig.savefig(tmp, format="png")
  os.replace(tmp, path)
  return path


def _check_out(out_dir: str) -> None:
  problem = files.unwritable(out_dir)
  if problem:
    raise ValueError(f"plot output directory {out_dir} {problem}; expected a directory this process can create "
                     "and write (--out)")


def _check_images(images: int) -> None:
  if isinstance(images, bool) or not isinstance(images, (int, np.integer)) or images < 0:
    raise ValueError(f"plot: images={images!r}, expected a non-negative number of evaluation images (0: no "
                     "prediction grids)")


def write_runs(run_dirs: Sequence[str], out_dir: str, images: int = 0, mesh=None) -> list[str]:
  """Writes the plots of finished runs into `out_dir` (created if missing) and returns the paths written.

  Args:
    run_dirs: run directories (see `find_runs` for sweep directories); all of
      one scenario (joint runs of its dataset may join).
    out_dir: where the PNGs go.
    images: evaluation images per prediction grid; 0 writes none (no
      checkpoint is read then, only results.json and config.json).
    mesh: device mesh for the prediction grids (default: every device).

  Returns:
    `miou_per_step.png` (when there is an incremental run), then per run
    `<label>_iou.png` and, with `images`, `<label>_predictions.png`.

  Raises:
    ValueError: bad arguments or runs that do not fit one figure, each named.
  """
  return _write(checked_runs(run_dirs, out_dir, images), out_dir, images, mesh)


def checked_runs(run_dirs: Sequence[str], out_dir: str, images: int) -> list[Run]:
  """`write_runs`' checks of its arguments; returns the runs read.

  Raises:
    ValueError: as `write_runs`.
  """
  _check_images(images)
  _check_out(out_dir)
  runs = [load_run(path) for path in run_dirs]
  check_runs(runs)
  return runs


def _write(runs: Sequence[Run], out_dir: str, images: int, mesh) -> list[str]:
  os.makedirs(out_dir, exist_ok=True)
  written = []
  bands = seed_bands(runs)
  if bands:
    reference = next(r for r in runs if not r.joint).results
    title = (f"{_scenario(reference)}: mIoU after each task step (line: mean over seeds, band: lowest to highest "
             "seed)")
    written.append(_save(miou_figure(bands, title), os.path.join(out_dir, MIOU_FILE)))
  else:
    print("plot: only joint runs: no per-step mIoU figure", flush=True)
  for run in runs:
    written.append(_save(iou_figure(run), os.path.join(out_dir, f"{run.label}_iou.png")))
  for run in runs:
    if images:
      grid = prediction_grid(run.path, images, mesh)
      title = f"{run.label}: predictions after each task step ({_scenario(run.results)})"
      written.append(_save(grid_figure(grid, title), os.path.join(out_dir, f"{run.label}_predictions.png")))
  return written


def write_sweep(sweep_dir: str, out_dir: str | None = None, images: int = 0, mesh=None) -> list[str]:
  """`write_runs` of a sweep directory's finished runs; `out_dir` defaults to `<sweep_dir>/plots`."""
  return write_runs(find_runs([sweep_dir]), out_dir or os.path.join(sweep_dir, "plots"), images, mesh)


# Command line (the flags are defined only when run as a program, so that importing this
# module next to incseg_jax.sweep or incseg_jax.compare defines no flag twice).


def _define_flags() -> None:
  flags.DEFINE_string("out", "", "Directory for the PNGs (default: <WORKDIR>/plots when one WORKDIR is given).")
  flags.DEFINE_integer("images", 4, "Evaluation images per prediction grid (the first N of the eval split); 0: "
                       "no grids, no checkpoint read.")


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError("give one or more run or sweep directories")
  fv = flags.FLAGS
  if not fv["verbosity"].present:
    # orbax warns at every read-only restore (three lines per task step of every run): errors only.
    logging.set_verbosity(logging.ERROR)
  runtime.setup(tensorflow=False)
  with runtime.clear_errors():
    out = fv.out
    if not out:
      if len(workdirs) > 1:
        raise ValueError(f"{len(workdirs)} WORKDIRs given: say where the plots go with --out=DIR")
      out = os.path.join(workdirs[0], "plots")
    # Flags and runs are checked before TensorFlow loads; only the prediction grids need it.
    runs = checked_runs(find_runs(workdirs), out, fv.images)
    if fv.images:
      runtime.hide_accelerators_from_tensorflow()
    for path in _write(runs, out, fv.images, None):
      print(path, flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
