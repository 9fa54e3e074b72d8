"""PLOP (Douillard et al., CVPR 2021): the `plop` preset and its threshold hook.

This module owns the preset and `plop_prepare`, which computes the per-class
entropy thresholds of the pseudo-labels before each incremental step; the
terms are in `incseg_jax/losses/plop.py` (`plop_ce`) and
`incseg_jax/losses/pod.py` (`pod`). As in the public code:
  * `plop` = plop_ce (weight 1; plain CE at step 0, pseudo-labels + nu after)
    + lambda_pod x pod with lambda_pod = 0.01 (Eq. 20; the per-layer weights
    inside `pod` are relative to it, see that module), MiB's background-based
    initialisation of the new heads (the code's `init_balanced`);
  * labels (docs/reference_code.md §10): void stays ignored in training,
    classes not yet learned count as background in evaluation.

Thresholds (docs/reference_code.md §13). Over one epoch of the step's training
batches, the previous model labels every background pixel with its argmax
class and its normalised entropy (`losses.plop.normalized_entropy`); the
threshold of class c is the median entropy of the pixels whose argmax is c,
raised to at least `threshold_floor` (0.001). A class that is never the
argmax on background gets the floor: the code starts it at 0 and raises it to
the floor, so such pixels are kept only when very confident. We take the
exact median (the mean of the two middle values for an even count), which
holds the epoch's background entropies in memory (4 bytes per background
pixel). The code approximates it from 100-bin histograms and, in doing so,
adds bin *indices* instead of counts while scanning for the half-count.
The `plop_ce` option `histogram_median=True` (off by default;
`--config.loss_options.plop_ce.histogram_median=True`) reproduces that
computation (thresholds can then come out -inf, inf or NaN: -inf is raised to
the floor, inf accepts every pixel of the class, NaN none, as in the code).

Which pixels the pre-pass counts. We count the pixels the train step
relabels, label < N_old (background and old classes) and not void, so the
thresholds are medians over the population they are applied to. The code's
pre-pass counts only the pixels labelled 0 (`labels == 0`), while its train
step relabels `labels < N_old`; the two differ only where training labels keep
old-class ids (our `setting=sequential` with `labeling=keep`; the overlapped and
disjoint settings turn old classes into 0). The `plop_ce` option
`median_background_only=True` (off by default) counts the pixels labelled 0,
as the code does (docs/reference_code.md, "Reference bugs").
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from incseg_jax.losses import plop as plop_losses
from incseg_jax.losses import pod as pod_losses
from incseg_jax.methods import Method, PrepareContext, register
from incseg_jax.methods.mib import mib_head_init


@functools.partial(jax.jit, static_argnums=1)
def _entropy_and_argmax(logits, num_seen):
  return plop_losses.normalized_entropy(logits, num_seen), jnp.argmax(logits, axis=-1)


class ExactMedians:
  """Per-class exact medians of streamed (value, class) pairs."""

  def __init__(self, num_classes: int):
    self._chunks = [[] for _ in range(num_classes)]

  def add(self, values: np.ndarray, classes: np.ndarray) -> None:
    order = np.argsort(classes, kind="stable")
    counts = np.bincount(classes, minlength=len(self._chunks))
    for c, chunk in enumerate(np.split(values[order], np.cumsum(counts)[:-1])):
      if chunk.size:
        self._chunks[c].append(chunk)

  def thresholds(self, floor: float) -> np.ndarray:
    out = [max(float(np.median(np.concatenate(chunks))), floor) if chunks else floor for chunks in self._chunks]
    return np.asarray(out, np.float32)


def reference_histogram_median(histogram: np.ndarray) -> float:
  """The public code's median from one class's histogram, bug included.

  Args:
    histogram: (nb_bins,) counts of values in [0, 1), bin i = [i/n, (i+1)/n).

  Returns:
    The code's estimate (0 for an empty histogram): the scan meant to add
    each bin's count to the running sum adds the bin's index instead, so it
    usually stops in a wrong bin or runs off the end (then dividing by the
    last bin's count, often 0: +-inf or NaN). Python float arithmetic as in
    the code (e.g. int(0.29 * 100) == 28).
  """
  nb_bins = len(histogram)
  total = float(histogram.sum())
  if total <= 0:
    return 0.0
  half = total / 2
  running = 0.0
  for index in range(nb_bins):
    lower = index / nb_bins
    bin_index = int(lower * nb_bins)
    if running <= half <= running + histogram[bin_index]:
      break
    running += lower * nb_bins  # the bug: should be histogram[bin_index]
  with np.errstate(divide="ignore", invalid="ignore"):
    return float(lower + (np.float64(half - running) / np.float64(histogram[bin_index])) * (1 / nb_bins))


class ReferenceHistograms:
  """Per-class 100-bin histograms and the code's median (`histogram_median`)."""

  def __init__(self, num_classes: int, nb_bins: int):
    self._hist = np.zeros((num_classes, nb_bins), np.int64)

  def add(self, values: np.ndarray, classes: np.ndarray) -> None:
    nb_bins = self._hist.shape[1]
    bins = np.minimum((values * np.float32(nb_bins)).astype(np.int64), nb_bins - 1)
    self._hist += np.bincount(classes * nb_bins + bins, minlength=self._hist.size).reshape(self._hist.shape)

  def thresholds(self, floor: float) -> np.ndarray:
    medians = [reference_histogram_median(h) for h in self._hist]
    # The code's Python `max(median, floor)`: NaN stays NaN (floor > NaN is False).
    return np.asarray([floor if floor > m else m for m in medians], np.float32)


def plop_prepare(ctx: PrepareContext) -> Mapping[str, Any]:
  """Computes PLOP's per-class entropy thresholds over one epoch (module doc).

  Options are read from `ctx.options["plop_ce"]`: `threshold_floor` (0.001),
  `histogram_median` (False: exact medians; True: the public code's
  histogram median, a reference bug), `nb_bins` (100, with
  `histogram_median` only) and `median_background_only` (False: the pixels
  the train step relabels, label < N_old; True: only those labelled 0, as the
  code's pre-pass; module doc).

  Returns:
    {THRESHOLDS_KEY: (N_old,) float32}, indexed by the old model's argmax.
  """
  opts = dict(ctx.options.get("plop_ce", {}))
  floor = float(opts.get("threshold_floor", 0.001))
  task = ctx.task
  n_old = task.num_old_channels
  if opts.get("histogram_median", False):
    stats = ReferenceHistograms(n_old, int(opts.get("nb_bins", 100)))
  else:
    stats = ExactMedians(n_old)
  for batch in ctx.batches():
    logits = ctx.teacher_forward(batch["image"])["logits"]
    entropy, argmax = jax.device_get(_entropy_and_argmax(logits, task.num_channels))
    labels = np.asarray(batch["label"])
    if opts.get("median_background_only", False):
      background = labels == 0
    else:
      background = plop_losses.background_mask(labels, n_old, task.ignore_label)
    stats.add(np.asarray(entropy, np.float32)[background], np.asarray(argmax, np.int64)[background])
  return {plop_losses.THRESHOLDS_KEY: stats.thresholds(floor)}


register(Method(
    name="plop", losses={"plop_ce": 1.0, "pod": 0.01},
    options={"plop_ce": {"reduction": "all_pixels", "min_nu": 0.0, "threshold_floor": 0.001, "nb_bins": 100,
                         "histogram_median": False},
             "pod": {"scales": (1, 2, 4), "logits_weight": 0.05, "layers": pod_losses.LAYERS,
                     "class_schedule": True, "squared": False}},
    head_init=mib_head_init, prepare=plop_prepare, void_as_background=False, unseen_eval="background",
    doc="PLOP: CE on entropy pseudo-labels (nu-scaled) + 0.01 x Local POD + MiB head init"))
