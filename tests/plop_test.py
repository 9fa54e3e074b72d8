"""Tests for PLOP: Local POD (`pod`), `plop_ce` and the `plop` threshold hook.

The float64 NumPy references are written from the equations (UCD paper
Eqs. 18-19) and docs/reference_code.md §12-13, in the reference code's NCHW
layout, independently of the implementation.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import incseg_jax.losses.plop  # noqa: F401  (registers plop_ce)
import incseg_jax.losses.pod  # noqa: F401  (registers pod)
import incseg_jax.methods.plop  # noqa: F401  (registers the plop method)
from incseg_jax import losses
from incseg_jax import methods
from incseg_jax.losses import plop as plop_losses
from incseg_jax.methods import plop as plop_method

IGNORE = 255
LAYERS = ("stage1", "stage2", "stage3", "stage4", "aspp", "logits")


# ----------------------------------------------------------------------------------------
# Helpers and float64 references
# ----------------------------------------------------------------------------------------


def make_task(n_old, n):
  """Step 1 with channels [0, n_old) old and [n_old, n) new."""
  return losses.TaskInfo(index=1, num_channels=n, old_channels=tuple(range(1, n_old)),
                         new_channels=tuple(range(n_old, n)), ignore_label=IGNORE)


def make_inputs(student, teacher, labels, task, extras=None):
  return losses.LossInputs(student=student, teacher=teacher, labels=jnp.asarray(labels, jnp.int32), images=None,
                           task=task, extras=extras or {})


def random_forward(rng, b, hw, n, widths=(3, 4, 5, 6), aspp=5):
  """A forward dict with 4 stages (the first at twice the size), ASPP and output-stride logits."""
  h, w = hw
  sizes = [(2 * h, 2 * w), (h, w), (h, w), (h, w)]
  return {
      "stages_pre": tuple(jnp.asarray(rng.normal(size=(b, sh, sw, c)), jnp.float32)
                          for (sh, sw), c in zip(sizes, widths)),
      "pre_logits": jnp.asarray(rng.normal(size=(b, h, w, aspp)), jnp.float32),
      "logits_os": jnp.asarray(2 * rng.normal(size=(b, h, w, n)), jnp.float32),
  }


def np_local_pod(x_bhwc, scales):
  """Local POD embedding written as the reference code does it, on NCHW float64."""
  x = np.transpose(np.asarray(x_bhwc, np.float64), (0, 3, 1, 2))**2
  b, w = x.shape[0], x.shape[-1]
  emb = []
  for s in scales:
    k = w // s
    for i in range(s):
      for j in range(s):
        t = x[..., i * k:(i + 1) * k, j * k:(j + 1) * k]
        emb.append(t.mean(axis=3).reshape(b, -1))
        emb.append(t.mean(axis=2).reshape(b, -1))
  return np.concatenate(emb, axis=1)


def np_pod(student, teacher, n_old, n, n_new, scales=(1, 2, 4), logits_weight=0.05, layers=LAYERS,
           class_schedule=True, squared=False, logits_weight_on_last=False):
  """Eq. 18 with the code's conventions (reference_code.md §12), float64.

  `logits_weight_on_last`: as the code's `features_distillation`, the small
  factor of `pod_options["switch"]["after"]` goes to the last map of the
  list (`i == len(list_attentions_a) - 1`), whatever it is.
  """

  def maps(layer):
    if layer.startswith("stage"):
      i = int(layer[5:]) - 1
      return student["stages_pre"][i], teacher["stages_pre"][i]
    if layer == "aspp":
      return student["pre_logits"], teacher["pre_logits"]
    s = np.asarray(student["logits_os"], np.float64)
    folded = s[..., :n_old].copy()
    folded[..., 0] = s[..., 0] + s[..., n_old:].sum(-1)
    return folded, teacher["logits_os"]

  total = 0.0
  for i, layer in enumerate(layers):
    a, b = maps(layer)
    d = np_local_pod(a, scales) - np_local_pod(b, scales)
    per_image = (d**2).sum(1) if squared else np.sqrt((d**2).sum(1))
    last = i == len(layers) - 1
    total += (logits_weight if (last if logits_weight_on_last else layer == "logits") else 1.0) * per_image.mean()
  factor = math.sqrt(n / n_new) if class_schedule else 1.0
  return factor * total / len(layers)


def np_softmax(z):
  z = np.asarray(z, np.float64)
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def np_entropy(logits, n_seen):
  """-mean_c p log p / ln C / ln n_seen (reference_code.md §13), float64."""
  p = np_softmax(logits)
  plogp = np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0)
  return -plogp.mean(-1) / np.log(p.shape[-1]) / np.log(n_seen)


def np_plop_ce(student_logits, teacher_logits, labels, thresholds, n_old, n, reduction="all_pixels"):
  """Eq. 19: pseudo-labels, per-image nu, CE averaged over all pixels, float64."""
  labels = np.asarray(labels)
  ent = np_entropy(teacher_logits, n)
  arg = np.asarray(teacher_logits).argmax(-1)
  bg = (labels < n_old) & (labels != IGNORE)
  ok = bg & (ent < np.asarray(thresholds)[arg])
  targets = np.where(ok, arg, np.where(bg, IGNORE, labels))
  nu = np.array([ok[i].sum() / bg[i].sum() if bg[i].sum() else 1.0 for i in range(len(labels))])
  logp = np.log(np_softmax(student_logits))
  valid = targets != IGNORE
  nll = -np.take_along_axis(logp, np.where(valid, targets, 0)[..., None], -1)[..., 0]
  per_pixel = np.where(valid, nll, 0.0) * nu[:, None, None]
  if reduction == "all_pixels":
    return per_pixel.sum() / per_pixel.size
  return per_pixel.sum() / max(valid.sum(), 1)


def np_histogram_median_bug(hist):
  """The reference's median scan, read from its code: it adds the bin index, not the count."""
  total = hist.sum()
  if total <= 0:
    return 0.0
  half, run, n = total / 2, 0.0, len(hist)
  for lb in range(n):
    lb = lb / n
    idx = int(lb * n)
    if half >= run and half <= run + hist[idx]:
      break
    run += lb * n
  with np.errstate(divide="ignore", invalid="ignore"):
    return lb + (half - run) / np.float64(hist[idx]) * (1 / n)


# ----------------------------------------------------------------------------------------
# Local POD
# ----------------------------------------------------------------------------------------

# (B, (h, w) of stages 2-4 / ASPP / logits, N_old, N): square, width not a multiple of
# 4, taller than wide, wider than tall (partial last row of regions).
POD_SHAPES = [(2, (8, 8), 3, 4), (3, (9, 9), 2, 5), (2, (10, 8), 4, 6), (1, (7, 8), 3, 5)]
POD_OPTIONS = [
    {},
    {"layers": ("stage2", "logits"), "squared": True, "logits_weight": 0.3},
    {"scales": (1, 2), "class_schedule": False, "layers": ("aspp", "stage1", "logits")},
    {"layers": ("stage1", "stage2", "aspp"), "logits_weight_on_last": True},  # PLOP without pod_logits
    {"layers": ("logits", "aspp"), "logits_weight_on_last": True, "logits_weight": 0.3},
]


@pytest.mark.parametrize("shape", POD_SHAPES)
@pytest.mark.parametrize("options", POD_OPTIONS)
def test_pod_matches_numpy(shape, options):
  b, hw, n_old, n = shape
  rng = np.random.default_rng(sum(hw) * 10 + n)
  student = random_forward(rng, b, hw, n)
  teacher = random_forward(rng, b, hw, n_old)
  got = losses.get("pod")(make_inputs(student, teacher, np.zeros((b, 4, 4)), make_task(n_old, n)), **options)
  want = np_pod(student, teacher, n_old, n, n - n_old, **options)
  np.testing.assert_allclose(float(got), want, rtol=2e-5)


def test_pod_zero_value_and_gradient_when_student_equals_teacher():
  rng = np.random.default_rng(0)
  teacher = random_forward(rng, 2, (8, 8), 3)
  # New channels at 0 fold into background without changing it.
  student = dict(teacher, logits_os=jnp.concatenate([teacher["logits_os"], jnp.zeros((2, 8, 8, 2))], -1))
  task = make_task(3, 5)
  fn = lambda s: losses.get("pod")(make_inputs(s, teacher, np.zeros((2, 4, 4)), task))
  value, grads = jax.value_and_grad(fn)(student)  # eager: jit may fuse the two sides differently
  assert float(value) == 0.0
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g)) and not np.any(g), "gradient must be exactly 0 (and not NaN)"


def test_pod_hand_computed():
  # Image 0: x = [[1, 2], [3, 4]] against 0; squared: [[1, 4], [9, 16]].
  #   scale 1: width means per row (2.5, 12.5), height means per column (5, 10);
  #   scale 2: four 1x1 regions, each value twice: 1, 4, 9, 16.
  #   ||.||^2 = 2.5^2 + 12.5^2 + 5^2 + 10^2 + 2 (1 + 16 + 81 + 256) = 995.5.
  # Image 1: student == teacher -> 0. Batch mean: sqrt(995.5) / 2.
  # sqrt(n_seen / n_new) = sqrt(4 / 1) = 2, one layer -> sqrt(995.5).
  x = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
  other = np.full((1, 2, 2, 1), 7.0)
  student = {"pre_logits": jnp.asarray(np.concatenate([x, other]), jnp.float32)}
  teacher = {"pre_logits": jnp.asarray(np.concatenate([np.zeros_like(x), other]), jnp.float32)}
  got = losses.get("pod")(make_inputs(student, teacher, np.zeros((2, 2, 2)), make_task(3, 4)), scales=(1, 2),
                          layers=("aspp",))
  np.testing.assert_allclose(float(got), math.sqrt(995.5), rtol=1e-6)


def test_pod_class_schedule_factor():
  rng = np.random.default_rng(1)
  student, teacher = random_forward(rng, 2, (8, 8), 6), random_forward(rng, 2, (8, 8), 6)
  opts = {"layers": ("stage1", "aspp")}
  base = float(losses.get("pod")(make_inputs(student, teacher, np.zeros((2, 4, 4)), make_task(5, 6)),
                                 class_schedule=False, **opts))
  assert base > 0
  for n_old, ratio in ((5, 6 / 1), (3, 6 / 3)):  # n_seen = 6 incl. background; n_new = 1, 3
    got = float(losses.get("pod")(make_inputs(student, teacher, np.zeros((2, 4, 4)), make_task(n_old, 6)), **opts))
    np.testing.assert_allclose(got / base, math.sqrt(ratio), rtol=1e-6)


def test_pod_folds_new_logits_into_background_by_summing():
  rng = np.random.default_rng(2)
  t = rng.normal(size=(2, 4, 4, 3))
  new = rng.normal(size=(2, 4, 4, 2))
  s = np.concatenate([t, new], -1)
  s[..., 0] -= new.sum(-1)  # background + sum(new logits) == teacher background
  inputs = lambda s: make_inputs({"logits_os": jnp.asarray(s, jnp.float32)}, {"logits_os": jnp.asarray(t, jnp.float32)},
                                 np.zeros((2, 4, 4)), make_task(3, 5))
  assert float(losses.get("pod")(inputs(s), layers=("logits",))) < 1e-5
  s[..., 1] += 0.5
  small = float(losses.get("pod")(inputs(s), layers=("logits",)))
  full = float(losses.get("pod")(inputs(s), layers=("logits",), logits_weight=1.0))
  assert small > 0
  np.testing.assert_allclose(full, 20 * small, rtol=1e-6)  # default logits weight 0.05


def test_pod_logits_weight_on_last_map():
  # The code's last-map factor: without the logits its 0.0005 goes to the ASPP output.
  rng = np.random.default_rng(7)
  student, teacher = random_forward(rng, 2, (8, 8), 5), random_forward(rng, 2, (8, 8), 3)
  inputs = make_inputs(student, teacher, np.zeros((2, 4, 4)), make_task(3, 5))
  pod = losses.get("pod")
  per_layer = {layer: float(pod(inputs, layers=(layer,), class_schedule=False)) for layer in LAYERS}
  no_logits = ("stage1", "stage2", "stage3", "stage4", "aspp")
  code = float(pod(inputs, layers=no_logits, class_schedule=False, logits_weight_on_last=True))
  ours = float(pod(inputs, layers=no_logits, class_schedule=False))
  np.testing.assert_allclose(code, (sum(per_layer[name] for name in no_logits[:-1]) + 0.05 * per_layer["aspp"]) / 5,
                             rtol=1e-5)
  np.testing.assert_allclose(ours, sum(per_layer[name] for name in no_logits) / 5, rtol=1e-5)
  # With the logits last (the plop preset) the option changes nothing.
  np.testing.assert_allclose(float(pod(inputs, logits_weight_on_last=True)), float(pod(inputs)), rtol=1e-6)


def test_pod_rejects_empty_regions():
  x = {"pre_logits": jnp.ones((1, 3, 8, 2))}  # side 8 // 4 = 2: the 4th row of regions starts at 6 > 3
  with pytest.raises(ValueError, match="empty regions"):
    losses.get("pod")(make_inputs(x, x, np.zeros((1, 3, 8)), make_task(2, 3)), layers=("aspp",))


# ----------------------------------------------------------------------------------------
# Pseudo-labels and plop_ce
# ----------------------------------------------------------------------------------------


def test_normalized_entropy_matches_numpy():
  logits = np.random.default_rng(3).normal(size=(2, 3, 4, 5)) * 3
  got = plop_losses.normalized_entropy(jnp.asarray(logits, jnp.float32), 8)
  np.testing.assert_allclose(np.asarray(got), np_entropy(logits, 8), rtol=1e-5, atol=1e-8)
  uniform = plop_losses.normalized_entropy(jnp.zeros((1, 4)), 7)  # -mean p log p = ln4 / 4
  np.testing.assert_allclose(float(uniform[0]), 1 / (4 * math.log(7)), rtol=1e-6)


def hand_built_example():
  """N_old = 3, n_seen = 4; two 2x3 images; see test_pseudo_labels_hand_built."""
  conf = lambda c: [20.0 if i == c else 0.0 for i in range(3)]
  teacher = np.array([
      [[conf(1), [0.0, 0.0, 0.0], conf(0)],  # old class 1 | uniform | background
       [conf(1), conf(1), conf(2)]],  # label 3 (new) | label 255 | class 2, threshold ~0
      [[conf(1), conf(2), conf(0)], [conf(0), conf(1), conf(2)]],
  ])
  labels = np.array([[[0, 0, 0], [3, IGNORE, 0]], [[3, 3, 3], [IGNORE, 3, 3]]])
  thresholds = np.array([0.01, 0.01, 1e-20], np.float32)
  return teacher, labels, thresholds


def test_pseudo_labels_hand_built():
  teacher, labels, thresholds = hand_built_example()
  targets, nu = plop_losses.pseudo_labels(jnp.asarray(labels), jnp.asarray(teacher, jnp.float32),
                                          jnp.asarray(thresholds), make_task(3, 4))
  # Image 0: confident old class -> 1; uniform (entropy 1/(3 ln 4) > 0.01) -> 255; confident
  # background -> 0; new label kept; void stays 255; class 2 above its ~0 threshold -> 255.
  np.testing.assert_array_equal(np.asarray(targets[0]), [[1, IGNORE, 0], [3, IGNORE, IGNORE]])
  # Image 1: no background pixel: labels unchanged, nu = 1.
  np.testing.assert_array_equal(np.asarray(targets[1]), labels[1])
  np.testing.assert_allclose(np.asarray(nu), [2 / 4, 1.0])  # 2 of 4 background pixels accepted


def test_plop_ce_hand_built_matches_numpy():
  teacher, labels, thresholds = hand_built_example()
  student = np.random.default_rng(4).normal(size=(2, 2, 3, 4))
  inputs = make_inputs({"logits": jnp.asarray(student, jnp.float32)}, {"logits": jnp.asarray(teacher, jnp.float32)},
                       labels, make_task(3, 4), {"plop_thresholds": jnp.asarray(thresholds)})
  # By hand: image 0 counts pixels (0,0) -> 1, (0,2) -> 0, (1,0) -> 3 at nu 0.5; image 1 its five 3s.
  logp = np.log(np_softmax(student))
  want = (0.5 * -(logp[0, 0, 0, 1] + logp[0, 0, 2, 0] + logp[0, 1, 0, 3])
          - sum(logp[1, i, j, 3] for i, j in [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2)])) / 12
  np.testing.assert_allclose(float(losses.get("plop_ce")(inputs)), want, rtol=1e-5)
  # The prepare-only options (the method's defaults, with the reference bug on) are accepted and change nothing.
  options = dict(methods.get("plop").options["plop_ce"], histogram_median=True)
  np.testing.assert_allclose(float(losses.get("plop_ce")(inputs, **options)), want, rtol=1e-5)


# (B, H, W, N_old, N)
CE_SHAPES = [(2, 5, 6, 3, 4), (3, 4, 4, 2, 5), (1, 6, 3, 4, 7)]


@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("reduction", ["all_pixels", "valid"])
def test_plop_ce_matches_numpy(shape, reduction):
  b, h, w, n_old, n = shape
  rng = np.random.default_rng(b * 100 + h * 10 + n)
  student = rng.normal(size=(b, h, w, n))
  teacher = rng.normal(size=(b, h, w, n_old)) * rng.uniform(0.5, 6, size=(b, h, w, 1))
  labels = rng.choice([0, 0, 0, IGNORE] + list(range(n_old, n)), size=(b, h, w))
  labels[0] = 0  # one image all background
  ent = np_entropy(teacher, n)
  thresholds = rng.uniform(ent.min(), ent.max(), size=n_old).astype(np.float32)

  @jax.jit
  def loss(s, t, y, thr):  # extras arrive as traced arrays, as in the train step
    return losses.get("plop_ce")(make_inputs({"logits": s}, {"logits": t}, y, make_task(n_old, n),
                                             {"plop_thresholds": thr}), reduction=reduction)

  got = loss(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32), labels, jnp.asarray(thresholds))
  want = np_plop_ce(student, teacher, labels, thresholds, n_old, n, reduction)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_plop_ce_without_teacher_is_ce():
  rng = np.random.default_rng(5)
  logits = jnp.asarray(rng.normal(size=(2, 4, 5, 3)), jnp.float32)
  labels = rng.choice([0, 1, 2, IGNORE], size=(2, 4, 5))
  task = losses.TaskInfo(index=0, num_channels=3, old_channels=(), new_channels=(1, 2), ignore_label=IGNORE)
  inputs = make_inputs({"logits": logits}, None, labels, task)
  for reduction in ("all_pixels", "valid"):
    np.testing.assert_allclose(float(losses.get("plop_ce")(inputs, reduction=reduction)),
                               float(losses.get("ce")(inputs, reduction=reduction)), rtol=1e-7)
  assert not losses.needs_teacher("plop_ce") and losses.needs_teacher("pod")


def test_plop_ce_needs_thresholds_with_a_teacher():
  teacher, labels, _ = hand_built_example()
  inputs = make_inputs({"logits": jnp.zeros((2, 2, 3, 4))}, {"logits": jnp.asarray(teacher)}, labels, make_task(3, 4))
  with pytest.raises(ValueError, match="plop_thresholds"):
    losses.get("plop_ce")(inputs)


# ----------------------------------------------------------------------------------------
# Thresholds
# ----------------------------------------------------------------------------------------


def hand_built_entropies():
  """(values, classes) in two chunks, 6 classes (class 2 and 5 never the argmax)."""
  first = ([0.002, 0.004, 0.0001, 0.005, 0.015, 0.003], [0, 0, 1, 3, 3, 4])
  second = ([0.006, 0.0003, 0.025, 0.035, 0.045, 0.007, 0.002, 0.009], [0, 1, 3, 3, 3, 4, 4, 4])
  return [(np.asarray(v, np.float32), np.asarray(c)) for v, c in (first, second)]


def test_exact_median_thresholds_hand_built():
  stats = plop_method.ExactMedians(6)
  for values, classes in hand_built_entropies():
    stats.add(values, classes)
  got = stats.thresholds(0.001)
  # 0: median(0.002, 0.004, 0.006); 1: median 0.0002 -> floor; 2: never seen -> floor;
  # 3: median of 0.005..0.045; 4: even count: (0.003 + 0.007) / 2; 5: never seen.
  np.testing.assert_allclose(got, [0.004, 0.001, 0.001, 0.025, 0.005, 0.001], rtol=1e-6)


def test_histogram_median_hand_built():
  stats = plop_method.ReferenceHistograms(6, 100)
  for values, classes in hand_built_entropies():
    stats.add(values, classes)
  got = stats.thresholds(0.001)
  # 0: all in bin 0, stops there: 0 + (1.5 / 3) * 0.01 = 0.005 (true median 0.004).
  # 1: 0 + (1 / 2) * 0.01 = 0.005 (true 0.0002, floored to 0.001).
  # 3: one value in each of bins 0-4: the index sums overshoot half = 2.5, the scan runs off
  #    the end and divides by bin 99's count (0): -inf, raised to the floor (true 0.025).
  # 4: all four in bin 0: 0 + (2 / 4) * 0.01 = 0.005 (true median 0.005 too).
  np.testing.assert_allclose(got, [0.005, 0.005, 0.001, 0.001, 0.005, 0.001], rtol=1e-6)


def test_histogram_median_can_be_inf():
  hist = np.zeros(100, np.int64)
  hist[1:99] = 102  # half = 4998 never lies in [index sum, index sum + count]; bin 99 empty
  assert plop_method.reference_histogram_median(hist) == np.inf
  assert plop_method.reference_histogram_median(np.zeros(100, np.int64)) == 0.0
  np.testing.assert_allclose(plop_method.reference_histogram_median(np.eye(100, dtype=np.int64)[0] * 7), 0.005)


class FakeContext:
  """A PrepareContext stand-in: batch k's first image pixel holds k; teacher logits are fixed per k."""

  def __init__(self, logits, labels, floor=0.001, **plop_ce_options):
    self.logits, self.labels = logits, labels
    self.task = make_task(logits[0].shape[-1], 5)
    self.options = {"plop_ce": dict(plop_ce_options, threshold_floor=floor)}

  def teacher_forward(self, images):
    return {"logits": jnp.asarray(self.logits[int(images[0, 0, 0, 0])], jnp.float32)}

  def batches(self):
    for k, labels in enumerate(self.labels):
      yield {"image": np.full(labels.shape + (3,), k, np.float32), "label": labels}


def fake_context(old_labels=(), **plop_ce_options):
  """Two batches; `old_labels`: old-class ids the labels also hold (sequential + labeling=keep)."""
  rng = np.random.default_rng(6)
  n_old = 4
  logits, labels = [], []
  for _ in range(2):
    z = rng.normal(size=(2, 6, 6, n_old)) * rng.uniform(0.2, 4, size=(2, 6, 6, 1))
    z[..., 3] -= 100  # class 3 is never the argmax -> the floor
    z[:, :2, :, 2] += 30  # very confident class 2 in the first rows: its median falls under the floor
    logits.append(z)
    labels.append(rng.choice([0, 0, 0, 4, IGNORE] + list(old_labels), size=(2, 6, 6)))
  return FakeContext(logits, labels, **plop_ce_options)


def expected_thresholds(ctx, histogram_bug=False, background_only=True):
  """The thresholds over the pixels labelled 0 (the code's pre-pass), or labelled < N_old (`background_only=False`)."""
  n_old = ctx.task.num_old_channels
  values = {c: [] for c in range(n_old)}
  for z, labels in zip(ctx.logits, ctx.labels):
    ent, arg = np_entropy(z, ctx.task.num_channels), z.argmax(-1)
    bg = labels == 0 if background_only else (labels < n_old) & (labels != IGNORE)
    for c in range(n_old):
      values[c].extend(ent[bg & (arg == c)])
  out = []
  for c in range(n_old):
    v = np.asarray(values[c])
    if histogram_bug:
      hist = np.bincount(np.minimum((v * 100).astype(int), 99), minlength=100)
      m = np_histogram_median_bug(hist)
      out.append(0.001 if 0.001 > m else m)
    else:
      out.append(max(np.median(v), 0.001) if v.size else 0.001)
  return np.asarray(out)


def test_prepare_hook_on_fake_context():
  ctx = fake_context()
  got = plop_method.plop_prepare(ctx)
  assert set(got) == {"plop_thresholds"}
  thresholds = np.asarray(got["plop_thresholds"])
  assert thresholds.shape == (4,) and thresholds.dtype == np.float32
  want = expected_thresholds(ctx)
  assert want[0] > 0.001 and want[1] > 0.001 and want[2] == 0.001 and want[3] == 0.001  # the example covers both
  np.testing.assert_allclose(thresholds, want, rtol=1e-5)
  off = np.asarray(plop_method.plop_prepare(fake_context(histogram_median=False))["plop_thresholds"])
  np.testing.assert_array_equal(off, thresholds)
  buggy = np.asarray(plop_method.plop_prepare(fake_context(histogram_median=True))["plop_thresholds"])
  np.testing.assert_allclose(buggy, expected_thresholds(ctx, histogram_bug=True), rtol=1e-5)
  assert not np.allclose(buggy, thresholds)


def test_prepare_hook_median_background_only():
  # Labels that keep old-class ids (sequential + labeling=keep): the train step
  # relabels them (label < N_old), the code's pre-pass counts only label 0.
  ctx = fake_context(old_labels=(1, 2, 3))
  ours = np.asarray(plop_method.plop_prepare(ctx)["plop_thresholds"])
  np.testing.assert_allclose(ours, expected_thresholds(ctx, background_only=False), rtol=1e-5)
  code_ctx = fake_context(old_labels=(1, 2, 3), median_background_only=True)
  code = np.asarray(plop_method.plop_prepare(code_ctx)["plop_thresholds"])
  np.testing.assert_allclose(code, expected_thresholds(ctx, background_only=True), rtol=1e-5)
  assert not np.allclose(code, ours)
  # Without old-class labels (overlapped / disjoint) both count the same pixels.
  np.testing.assert_array_equal(np.asarray(plop_method.plop_prepare(fake_context(median_background_only=True))
                                           ["plop_thresholds"]),
                                np.asarray(plop_method.plop_prepare(fake_context())["plop_thresholds"]))
  # plop_ce accepts the option (read by the hook only).
  teacher, labels, thresholds = hand_built_example()
  inputs = make_inputs({"logits": jnp.zeros((2, 2, 3, 4))}, {"logits": jnp.asarray(teacher, jnp.float32)}, labels,
                       make_task(3, 4), {"plop_thresholds": jnp.asarray(thresholds)})
  assert float(losses.get("plop_ce")(inputs, median_background_only=True)) == float(losses.get("plop_ce")(inputs))


def test_plop_method_preset():
  m = methods.get("plop")
  assert dict(m.losses) == {"plop_ce": 1.0, "pod": 0.01}
  assert m.prepare is plop_method.plop_prepare and m.head_init is not None
  assert not m.void_as_background and m.unseen_eval == "background"
  assert m.options["pod"]["logits_weight"] * m.losses["pod"] == pytest.approx(0.0005)  # the code's logits factor
  # The reference bug is an option of the term, listed (so the command line can set it) and off.
  assert m.options["plop_ce"]["histogram_median"] is False
  assert methods.get("plop_ucd").options["plop_ce"]["histogram_median"] is False
