"""Tests for the ILT distillation terms (Michieli & Zanuttigh, Eqs. 3-9).

The float64 NumPy references below are written straight from the paper's
equations and the option descriptions, independently of the implementation.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from incseg_jax import losses

RTOL, ATOL = 1e-5, 1e-6
IGNORE = 255

# (B, H, W, N_old, N): N_old in {2, 4}, N in {N_old + 1, N_old + 3}.
CLS_SHAPES = [(1, 3, 4, 2, 3), (2, 5, 3, 4, 7), (3, 4, 4, 2, 5), (2, 2, 6, 4, 5)]

# (student_softmax, pixels, reduction, resolution); "os" only with pixels="all".
CLS_OPTIONS = [(s, p, r, "full") for s, p, r in itertools.product(("all", "old"), ("all", "bg_old"), ("mean", "sum"))]
CLS_OPTIONS += [(s, "all", r, "os") for s, r in itertools.product(("all", "old"), ("mean", "sum"))]

FEATURE_TERMS = ("kd_enc", "kd_dec", "spkd", "spkd_avg")


# ----------------------------------------------------------------------------------------
# Helpers and float64 references
# ----------------------------------------------------------------------------------------


def make_inputs(student, teacher, labels, n_old, n):
  """Builds LossInputs for a task step with channels [0, n_old) old, [n_old, n) new.

  Args:
    student: the student's forward dict.
    teacher: the teacher's forward dict.
    labels: (B, H, W) int labels in channel ids or IGNORE.
    n_old: channels of the previous model (background included).
    n: channels of the current model.

  Returns:
    A `losses.LossInputs`.
  """
  task = losses.TaskInfo(index=1, num_channels=n, old_channels=tuple(range(1, n_old)),
                         new_channels=tuple(range(n_old, n)), ignore_label=IGNORE)
  return losses.LossInputs(student=student, teacher=teacher, labels=jnp.asarray(labels, jnp.int32),
                           images=None, task=task)


def np_softmax(z):
  """float64 softmax over the last axis."""
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def reference_kd_cls(student_logits, teacher_logits, labels, n_old, temperature=1.0, student_softmax="all",
                     pixels="all", reduction="mean", use_labels=True):
  """Eqs. 3-5: cross-entropy on old channels between tempered softmaxes, float64.

  Args:
    student_logits: (B, H, W, N) student logits.
    teacher_logits: (B, H, W, N_old) teacher logits.
    labels: (B, H, W) labels (used only if use_labels).
    n_old: N_old.
    temperature: T.
    student_softmax: "all" (softmax over N, keep first N_old) or "old".
    pixels: "all" (label != IGNORE) or "bg_old" (label in [0, N_old)).
    reduction: "mean" (over counted pixels, 0 if none) or "sum" (divided by B).
    use_labels: False for the output-stride resolution: every pixel counts.

  Returns:
    A Python float.
  """
  s = np.asarray(student_logits, np.float64) / temperature
  t = np.asarray(teacher_logits, np.float64) / temperature
  p_old = np_softmax(t)
  if student_softmax == "all":
    q = np_softmax(s)[..., :n_old]
  else:
    q = np_softmax(s[..., :n_old])
  per_pixel = -(p_old * np.log(q)).sum(-1)
  if not use_labels:
    mask = np.ones(per_pixel.shape, bool)
  elif pixels == "all":
    mask = labels != IGNORE
  else:
    mask = (labels >= 0) & (labels < n_old)
  total = per_pixel[mask].sum()
  if reduction == "mean":
    return float(total / mask.sum()) if mask.sum() else 0.0
  return float(total / per_pixel.shape[0])


def reference_l2(student, teacher, reduction="mean"):
  """Eq. 6: mean squared difference, or squared Frobenius norm per image averaged over B."""
  d = np.asarray(student, np.float64) - np.asarray(teacher, np.float64)
  if reduction == "mean":
    return float((d**2).mean())
  return float((d**2).sum() / d.shape[0])


def reference_kd_dec(student_branches, teacher_branches, reduction="mean"):
  """Eq. 7: the per-branch distance averaged over the ASPP branches."""
  dists = [reference_l2(s, t, reduction) for s, t in zip(student_branches, teacher_branches)]
  return float(np.mean(dists))


def reference_spkd(student, teacher, average):
  """Eqs. 8-9: row-normalised Gram matrices, squared Frobenius distance / B.

  Args:
    student: (B, h, w, F) features.
    teacher: (B, h, w, F) features.
    average: True for Eq. 9 (sum over the spatial dimensions), else Eq. 8.

  Returns:
    A Python float.
  """

  def similarity(f):
    f = np.asarray(f, np.float64)
    e = f.sum(axis=(1, 2)) if average else f.reshape(f.shape[0], -1)
    g = e @ e.T
    return g / np.linalg.norm(g, axis=1, keepdims=True)

  a_s, a_t = similarity(student), similarity(teacher)
  return float(((a_s - a_t)**2).sum() / a_s.shape[0])


def random_cls_case(seed, b, h, w, n_old, n):
  """Random float32 full-res and output-stride logits for student/teacher, labels with IGNORE."""
  rng = np.random.default_rng(seed)
  hs, ws = h + 1, w + 2  # A different size from (h, w) so using the wrong key cannot pass.
  case = {
      "s": (rng.normal(size=(b, h, w, n)) * 3).astype(np.float32),
      "t": (rng.normal(size=(b, h, w, n_old)) * 3).astype(np.float32),
      "s_os": (rng.normal(size=(b, hs, ws, n)) * 3).astype(np.float32),
      "t_os": (rng.normal(size=(b, hs, ws, n_old)) * 3).astype(np.float32),
  }
  labels = rng.integers(0, n, size=(b, h, w))
  labels[rng.random((b, h, w)) < 0.25] = IGNORE
  labels.flat[0], labels.flat[-1] = IGNORE, n - 1  # At least one ignored and one new-class pixel.
  case["labels"] = labels
  return case


def cls_inputs(case, n_old, n):
  """LossInputs holding both resolutions of the logits of a `random_cls_case`."""
  student = {"logits": jnp.asarray(case["s"]), "logits_os": jnp.asarray(case["s_os"])}
  teacher = {"logits": jnp.asarray(case["t"]), "logits_os": jnp.asarray(case["t_os"])}
  return make_inputs(student, teacher, case["labels"], n_old, n)


def cls_call(name, inputs, temperature, **options):
  """Calls kd_cls / kd_cls_t; temperature=None leaves kd_cls_t's default."""
  if name == "kd_cls_t" and temperature is not None:
    options["temperature"] = temperature
  return losses.get(name)(inputs, **options)


def random_features(seed, b=3, h=3, w=4, f=5, d=6, branches=4):
  """Random float32 student/teacher feature dicts (encoder, pre_logits, aspp_branches)."""
  rng = np.random.default_rng(seed)

  def one():
    return {
        "encoder": jnp.asarray(rng.normal(size=(b, h, w, f)).astype(np.float32)),
        "pre_logits": jnp.asarray((rng.normal(size=(b, h, w, d)) * 2 + 0.5).astype(np.float32)),
        "aspp_branches": tuple(
            jnp.asarray((rng.normal(size=(b, h, w, d)) * (i + 1)).astype(np.float32)) for i in range(branches)),
    }

  return one(), one(), np.zeros((b, 4 * h, 4 * w), np.int32)


def feature_reference(name, student, teacher, **options):
  """Dispatches to the float64 reference of a feature term."""
  feature = options.get("feature", "encoder")
  reduction = options.get("reduction", "mean")
  if name == "kd_enc":
    return reference_l2(student[feature], teacher[feature], reduction)
  if name == "kd_dec":
    return reference_kd_dec(student["aspp_branches"], teacher["aspp_branches"], reduction)
  return reference_spkd(student[feature], teacher[feature], average=name == "spkd_avg")


# ----------------------------------------------------------------------------------------
# kd_cls / kd_cls_t (Eqs. 3-5)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("student_softmax, pixels, reduction, resolution", CLS_OPTIONS)
@pytest.mark.parametrize("name, temperature", [("kd_cls", None), ("kd_cls_t", None), ("kd_cls_t", 2.5)])
def test_kd_cls_matches_float64_reference(name, temperature, student_softmax, pixels, reduction, resolution):
  ref_t = {"kd_cls": 1.0, "kd_cls_t": temperature or 10.0}[name]  # kd_cls_t defaults to T = 10.
  for i, (b, h, w, n_old, n) in enumerate(CLS_SHAPES):
    case = random_cls_case(100 + i, b, h, w, n_old, n)
    got = cls_call(name, cls_inputs(case, n_old, n), temperature, student_softmax=student_softmax, pixels=pixels,
                   reduction=reduction, resolution=resolution)
    assert got.shape == ()
    os_res = resolution == "os"
    want = reference_kd_cls(case["s_os" if os_res else "s"], case["t_os" if os_res else "t"], case["labels"],
                            n_old, ref_t, student_softmax, pixels, reduction, use_labels=not os_res)
    np.testing.assert_allclose(float(got), want, rtol=RTOL, atol=ATOL, err_msg=f"shape {(b, h, w, n_old, n)}")


@pytest.mark.parametrize("name", ["kd_cls", "kd_cls_t"])
def test_kd_cls_defaults(name):
  # Defaults: T = 10 (kd_cls_t) / 1 (kd_cls), softmax over all channels, all valid pixels, mean, full res.
  b, h, w, n_old, n = CLS_SHAPES[1]
  case = random_cls_case(7, b, h, w, n_old, n)
  got = losses.get(name)(cls_inputs(case, n_old, n))
  want = reference_kd_cls(case["s"], case["t"], case["labels"], n_old, 10.0 if name == "kd_cls_t" else 1.0)
  np.testing.assert_allclose(float(got), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("student_softmax, pixels, reduction, resolution", CLS_OPTIONS)
def test_kd_cls_t_at_temperature_one_equals_kd_cls(student_softmax, pixels, reduction, resolution):
  b, h, w, n_old, n = CLS_SHAPES[2]
  inputs = cls_inputs(random_cls_case(11, b, h, w, n_old, n), n_old, n)
  options = dict(student_softmax=student_softmax, pixels=pixels, reduction=reduction, resolution=resolution)
  plain = losses.get("kd_cls")(inputs, **options)
  tempered = losses.get("kd_cls_t")(inputs, temperature=1.0, **options)
  assert float(tempered) == float(plain)


# Hand-computed case: B=2, H=1, W=2, N_old=2, N=3; teacher logits 0 -> p_old = (1/2, 1/2) everywhere.
# Student logits (at T = 1):  image 0: px0 (0, 0, log 2) label 0, px1 anything, label 255;
#                             image 1: px0 (0, 0, 0) label 1 (old), px1 (log 2, 0, 0) label 2 (new).
# softmax "all": q = (1/4, 1/4) -> 2 log 2;  q = (1/3, 1/3) -> log 3;  q = (1/2, 1/4) -> 3/2 log 2.
# softmax "old": q = (1/2, 1/2) -> log 2;    q = (1/2, 1/2) -> log 2;  q = (2/3, 1/3) -> log 3 - 1/2 log 2.
_L2, _L3 = np.log(2.0), np.log(3.0)
_HAND_PER_PIXEL = {"all": (2 * _L2, _L3, 1.5 * _L2), "old": (_L2, _L2, _L3 - 0.5 * _L2)}


@pytest.mark.parametrize("student_softmax", ["all", "old"])
@pytest.mark.parametrize("pixels", ["all", "bg_old"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name, temperature", [("kd_cls", None), ("kd_cls_t", 1.0), ("kd_cls_t", 2.0)])
def test_kd_cls_hand_computed(name, temperature, student_softmax, pixels, reduction):
  scale = temperature or 1.0  # Student logits scaled by T so that z / T is the T = 1 case.
  student = np.array([[[[0, 0, _L2], [5, -3, 1]]], [[[0, 0, 0], [_L2, 0, 0]]]], np.float32) * scale
  teacher = np.zeros((2, 1, 2, 2), np.float32)
  labels = np.array([[[0, IGNORE]], [[1, 2]]])
  a, b, c = _HAND_PER_PIXEL[student_softmax]
  want = {("all", "mean"): (a + b + c) / 3, ("all", "sum"): (a + b + c) / 2,
          ("bg_old", "mean"): (a + b) / 2, ("bg_old", "sum"): (a + b) / 2}[pixels, reduction]
  inputs = make_inputs({"logits": jnp.asarray(student)}, {"logits": jnp.asarray(teacher)}, labels, 2, 3)
  got = cls_call(name, inputs, temperature, student_softmax=student_softmax, pixels=pixels, reduction=reduction)
  np.testing.assert_allclose(float(got), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["kd_cls", "kd_cls_t"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kd_cls_bg_old_ignores_new_class_pixels(name, reduction):
  b, h, w, n_old, n = CLS_SHAPES[1]
  case = random_cls_case(21, b, h, w, n_old, n)
  new_or_ignored = (case["labels"] >= n_old)  # New channels and 255.
  assert new_or_ignored.any()
  changed = dict(case)
  rng = np.random.default_rng(0)
  changed["s"] = np.where(new_or_ignored[..., None], rng.normal(size=case["s"].shape) * 9, case["s"]).astype(np.float32)
  changed["t"] = np.where(new_or_ignored[..., None], rng.normal(size=case["t"].shape) * 9, case["t"]).astype(np.float32)
  fn = losses.get(name)
  base = fn(cls_inputs(case, n_old, n), pixels="bg_old", reduction=reduction)
  moved = fn(cls_inputs(changed, n_old, n), pixels="bg_old", reduction=reduction)
  np.testing.assert_allclose(float(moved), float(base), rtol=RTOL, atol=ATOL)
  # With pixels="all" the new-class pixels do count, so the same change moves the loss.
  base_all = fn(cls_inputs(case, n_old, n), pixels="all", reduction=reduction)
  moved_all = fn(cls_inputs(changed, n_old, n), pixels="all", reduction=reduction)
  assert abs(float(moved_all) - float(base_all)) > 1e-3


@pytest.mark.parametrize("name", ["kd_cls", "kd_cls_t"])
@pytest.mark.parametrize("pixels", ["all", "bg_old"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kd_cls_no_counted_pixels_is_zero(name, pixels, reduction):
  b, h, w, n_old, n = CLS_SHAPES[0]
  case = random_cls_case(3, b, h, w, n_old, n)
  # All ignored, or (for bg_old) only ignored and new-class labels.
  case["labels"] = np.full((b, h, w), IGNORE) if pixels == "all" else np.where(case["labels"] < n_old, n - 1, IGNORE)
  got = losses.get(name)(cls_inputs(case, n_old, n), pixels=pixels, reduction=reduction)
  assert float(got) == 0.0


@pytest.mark.parametrize("name", ["kd_cls", "kd_cls_t"])
def test_kd_cls_os_resolution_only_with_all_pixels(name):
  b, h, w, n_old, n = CLS_SHAPES[0]
  with pytest.raises(ValueError):
    losses.get(name)(cls_inputs(random_cls_case(4, b, h, w, n_old, n), n_old, n), resolution="os", pixels="bg_old")


@pytest.mark.parametrize("name, temperature", [("kd_cls", None), ("kd_cls_t", None), ("kd_cls_t", 3.0)])
@pytest.mark.parametrize("pixels, reduction, resolution",
                         [("all", "mean", "full"), ("bg_old", "sum", "full"), ("all", "mean", "os")])
def test_kd_cls_self_distillation_is_teacher_entropy_with_zero_gradient(name, temperature, pixels, reduction,
                                                                        resolution):
  # Student == teacher with N == N_old: the loss is the teacher's entropy at T, and its gradient is 0.
  b, h, w, n_old = 2, 3, 4, 4
  case = random_cls_case(5, b, h, w, n_old, n_old)
  case["labels"][0, 0, 1] = IGNORE
  t, t_os = case["t"], case["t_os"]
  ref_t = {"kd_cls": 1.0, "kd_cls_t": temperature or 10.0}[name]
  key = "logits_os" if resolution == "os" else "logits"
  teacher = {"logits": jnp.asarray(t), "logits_os": jnp.asarray(t_os)}
  options = dict(student_softmax="all", pixels=pixels, reduction=reduction, resolution=resolution)

  def loss(student_logits):
    student = dict(teacher, **{key: student_logits})
    return cls_call(name, make_inputs(student, teacher, case["labels"], n_old, n_old), temperature, **options)

  z = np.asarray(teacher[key], np.float64)
  p = np_softmax(z / ref_t)
  entropy = -(p * np.log(p)).sum(-1)
  if resolution == "os":
    mask = np.ones(entropy.shape, bool)
  else:
    mask = (case["labels"] < n_old) if pixels == "bg_old" else (case["labels"] != IGNORE)
  want = entropy[mask].sum() / (mask.sum() if reduction == "mean" else b)
  value, grad = jax.value_and_grad(loss)(teacher[key])
  np.testing.assert_allclose(float(value), want, rtol=RTOL, atol=ATOL)
  assert float(value) > 0.1
  np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-6)
  # Sanity: a different student gets a non-zero gradient.
  assert np.abs(np.asarray(jax.grad(loss)(teacher[key] * 0.5))).max() > 1e-6


# ----------------------------------------------------------------------------------------
# kd_enc, kd_dec (Eqs. 6-7), spkd, spkd_avg (Eqs. 8-9)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"reduction": "mean"}, {"reduction": "sum"}, {"feature": "pre_logits"},
                                     {"feature": "pre_logits", "reduction": "sum"}, {"feature": "encoder",
                                                                                    "reduction": "sum"}])
def test_kd_enc_matches_float64_reference(options):
  for seed, shape in enumerate([dict(b=1, h=2, w=3, f=4, d=3), dict(b=3, h=3, w=4, f=5, d=6)]):
    student, teacher, labels = random_features(seed, **shape)
    got = losses.get("kd_enc")(make_inputs(student, teacher, labels, 2, 3), **options)
    assert got.shape == ()
    np.testing.assert_allclose(float(got), feature_reference("kd_enc", student, teacher, **options), rtol=RTOL,
                               atol=ATOL)


@pytest.mark.parametrize("options", [{}, {"reduction": "mean"}, {"reduction": "sum"}])
@pytest.mark.parametrize("branches", [1, 3, 4])
def test_kd_dec_matches_float64_reference(options, branches):
  for seed, shape in enumerate([dict(b=1, h=2, w=3, d=3), dict(b=3, h=3, w=4, d=6)]):
    student, teacher, labels = random_features(seed + 10, branches=branches, **shape)
    got = losses.get("kd_dec")(make_inputs(student, teacher, labels, 2, 3), **options)
    assert got.shape == ()
    np.testing.assert_allclose(float(got), feature_reference("kd_dec", student, teacher, **options), rtol=RTOL,
                               atol=ATOL)


@pytest.mark.parametrize("name", ["spkd", "spkd_avg"])
@pytest.mark.parametrize("options", [{}, {"feature": "encoder"}, {"feature": "pre_logits"}])
def test_spkd_matches_float64_reference(name, options):
  for seed, shape in enumerate([dict(b=2, h=2, w=3, f=4, d=3), dict(b=4, h=3, w=4, f=5, d=6)]):
    student, teacher, labels = random_features(seed + 20, **shape)
    got = losses.get(name)(make_inputs(student, teacher, labels, 2, 3), **options)
    assert got.shape == ()
    np.testing.assert_allclose(float(got), feature_reference(name, student, teacher, **options), rtol=RTOL,
                               atol=ATOL)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_kd_enc_kd_dec_hand_computed(reduction):
  # B=2, (h, w, F)=(1, 2, 3): 12 elements. kd_enc: diff 1 everywhere -> mean 1, sum 12 / 2 = 6.
  # kd_dec with 2 branches, diffs 1 and 2: mean (1 + 4) / 2 = 2.5; sum (12 + 48) / 2 / 2 = 15.
  zeros = jnp.zeros((2, 1, 2, 3))
  student = {"encoder": zeros + 1.0, "aspp_branches": (zeros + 1.0, zeros - 2.0)}
  teacher = {"encoder": zeros, "aspp_branches": (zeros, zeros)}
  inputs = make_inputs(student, teacher, np.zeros((2, 4, 8)), 2, 3)
  enc = losses.get("kd_enc")(inputs, reduction=reduction)
  dec = losses.get("kd_dec")(inputs, reduction=reduction)
  np.testing.assert_allclose(float(enc), {"mean": 1.0, "sum": 6.0}[reduction], rtol=RTOL)
  np.testing.assert_allclose(float(dec), {"mean": 2.5, "sum": 15.0}[reduction], rtol=RTOL)


def test_spkd_hand_computed():
  # B=2, (h, w, F) = (1, 2, 2).
  # Student rows (flattened): (.5, 0, .5, 0), (0, .5, 0, .5): G = diag(.5, .5) -> A = I; spatial sums
  # (1, 0), (0, 1) -> A = I as well.
  # Teacher rows: (.5, 0, .5, 0), (1, 0, 0, 0): G = [[.5, .5], [.5, 1]] -> A rows (1, 1)/sqrt2, (1, 2)/sqrt5,
  # so spkd = ((1 - 1/sqrt2)^2 + 1/2 + 1/5 + (1 - 2/sqrt5)^2) / 2 = (4 - sqrt2 - 4/sqrt5) / 2.
  # Spatial sums (1, 0), (1, 0): A rows (1, 1)/sqrt2 twice, so spkd_avg = 2 (2 - sqrt2) / 2 = 2 - sqrt2.
  student = {"encoder": jnp.array([[[[.5, 0], [.5, 0]]], [[[0, .5], [0, .5]]]], jnp.float32)}
  teacher = {"encoder": jnp.array([[[[.5, 0], [.5, 0]]], [[[1, 0], [0, 0]]]], jnp.float32)}
  inputs = make_inputs(student, teacher, np.zeros((2, 1, 2)), 2, 3)
  np.testing.assert_allclose(float(losses.get("spkd")(inputs)), (4 - np.sqrt(2) - 4 / np.sqrt(5)) / 2, rtol=RTOL)
  np.testing.assert_allclose(float(losses.get("spkd_avg")(inputs)), 2 - np.sqrt(2), rtol=RTOL)


def _student_arrays(name, student, options):
  """The student's arrays a feature term differentiates through."""
  if name == "kd_dec":
    return student["aspp_branches"]
  return student[options.get("feature", "encoder")]


def _with_student_arrays(name, student, arrays, options):
  """A copy of the student dict with the term's arrays replaced."""
  key = "aspp_branches" if name == "kd_dec" else options.get("feature", "encoder")
  return dict(student, **{key: arrays})


@pytest.mark.parametrize("name", FEATURE_TERMS)
@pytest.mark.parametrize("options", [{}, {"feature": "pre_logits", "reduction": "sum"}])
def test_feature_terms_zero_value_and_gradient_at_teacher(name, options):
  if name in ("spkd", "spkd_avg"):
    options = {k: v for k, v in options.items() if k == "feature"}  # No reduction option.
  if name == "kd_dec":
    options = {k: v for k, v in options.items() if k == "reduction"}  # Always the ASPP branches.
  student, teacher, labels = random_features(30)

  def loss(arrays):
    return losses.get(name)(make_inputs(_with_student_arrays(name, student, arrays, options), teacher, labels, 2, 3),
                            **options)

  at_teacher = _student_arrays(name, teacher, options)
  value, grad = jax.value_and_grad(loss)(at_teacher)
  np.testing.assert_allclose(float(value), 0.0, atol=1e-7)
  for g in jax.tree_util.tree_leaves(grad):
    np.testing.assert_allclose(np.asarray(g), 0.0, atol=1e-6)
  # Sanity: away from the teacher both are non-zero.
  value, grad = jax.value_and_grad(loss)(_student_arrays(name, student, options))
  assert float(value) > 1e-4
  assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grad)) > 1e-6


@pytest.mark.parametrize("name", FEATURE_TERMS)
def test_feature_terms_non_negative(name):
  for seed in range(5):
    student, teacher, labels = random_features(40 + seed, b=2 + seed % 3)
    for options in ({}, {"reduction": "sum"}) if name in ("kd_enc", "kd_dec") else ({},):
      assert float(losses.get(name)(make_inputs(student, teacher, labels, 2, 3), **options)) >= 0.0


@pytest.mark.parametrize("name", ["spkd", "spkd_avg"])
@pytest.mark.parametrize("feature", ["encoder", "pre_logits"])
def test_spkd_invariant_to_positive_scaling_of_student(name, feature):
  student, teacher, labels = random_features(50)
  fn = losses.get(name)
  base = fn(make_inputs(student, teacher, labels, 2, 3), feature=feature)
  assert float(base) > 1e-3
  for scale in (0.01, 0.5, 7.0, 300.0):
    scaled = dict(student, **{feature: student[feature] * scale})
    got = fn(make_inputs(scaled, teacher, labels, 2, 3), feature=feature)
    np.testing.assert_allclose(float(got), float(base), rtol=RTOL, atol=ATOL, err_msg=f"scale {scale}")
  # The L2 term is not scale invariant (so the comparison above can tell the two apart).
  scaled = dict(student, encoder=student["encoder"] * 7.0)
  assert abs(float(losses.get("kd_enc")(make_inputs(scaled, teacher, labels, 2, 3)))
             - float(losses.get("kd_enc")(make_inputs(student, teacher, labels, 2, 3)))) > 1e-2


# ----------------------------------------------------------------------------------------
# Registry and jit
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kd_cls", "kd_cls_t", *FEATURE_TERMS])
def test_needs_teacher(name):
  assert losses.needs_teacher(name) is True


@pytest.mark.parametrize("name, options", [("kd_cls", {}), ("kd_cls_t", {"pixels": "bg_old", "reduction": "mean"}),
                                           ("kd_cls_t", {"resolution": "os", "student_softmax": "old"}),
                                           ("kd_enc", {}), ("kd_dec", {"reduction": "sum"}), ("spkd", {}),
                                           ("spkd_avg", {})])
def test_jit_matches_eager(name, options):
  # The train step calls the terms inside jit (options static, arrays traced).
  b, h, w, n_old, n = CLS_SHAPES[1]
  case = random_cls_case(60, b, h, w, n_old, n)
  case["labels"][...] = np.where(case["labels"] < n_old, n - 1, case["labels"])  # bg_old: nothing counted.
  feats_s, feats_t, _ = random_features(61, b=b)
  student = dict(feats_s, logits=jnp.asarray(case["s"]), logits_os=jnp.asarray(case["s_os"]))
  teacher = dict(feats_t, logits=jnp.asarray(case["t"]), logits_os=jnp.asarray(case["t_os"]))
  fn = losses.get(name)

  def call(student, teacher, labels):
    return fn(make_inputs(student, teacher, labels, n_old, n), **options)

  eager = call(student, teacher, case["labels"])
  jitted = jax.jit(call)(student, teacher, jnp.asarray(case["labels"]))
  np.testing.assert_allclose(float(jitted), float(eager), rtol=RTOL, atol=ATOL)
  assert np.isfinite(float(jitted))
