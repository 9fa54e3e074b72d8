"""Tests for SDR's terms and prototype state (`incseg_jax/losses/sdr.py`, `incseg_jax/methods/sdr.py`).

The float64 NumPy reference below is a transcription of the public SDR code
(LTTM/SDR): `Trainer._update_running_stats` (train.py:460-485),
`DistillationEncoderPrototypesLoss` (utils/loss.py:476-510),
`FeaturesClusteringSeparationLoss.forward` (utils/loss.py:364-408) and
`FeaturesSparsificationLoss` (utils/loss.py:524-574), on NCHW arrays as torch
holds them. NumPy's boolean indexing lists elements in C order, which is
torch's `masked_select` order, and `reshape` is torch's `view`; so
`code_reshape=True` is the code's computation, and `code_reshape=False` the
intended per-channel one (the two agree for one image in the (C, N) views).
As in train.py, the prototypes are updated with the batch before its losses.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from incseg_jax import losses
from incseg_jax import methods
from incseg_jax.losses import sdr
from incseg_jax.losses import state as state_lib

RTOL, ATOL = 2e-5, 1e-6


# ----------------------------------------------------------------------------------------
# The SDR code in float64 NumPy
# ----------------------------------------------------------------------------------------


def ref_nearest(x, size):
  """F.interpolate(x[:, None].double(), size, mode='nearest') for (B, H, W) maps."""
  b, hh, ww = x.shape
  h, w = size
  rows = np.minimum(np.floor(np.arange(h) * np.float32(hh / h)).astype(int), hh - 1)
  cols = np.minimum(np.floor(np.arange(w) * np.float32(ww / w)).astype(int), ww - 1)
  return x[:, rows][:, :, cols]


def masked(feats, mask, view, code_reshape):
  """The class's features: `feats[mask.expand_as(feats)].view(...)`, or the intended (D, N) / (N, D)."""
  d = feats.shape[1]
  if code_reshape:
    flat = feats[np.broadcast_to(mask[:, None], feats.shape)]
    return flat.reshape(d, -1) if view == "CN" else flat.reshape(-1, d)
  cn = feats.transpose(1, 0, 2, 3)[:, mask]
  return cn if view == "CN" else cn.T


def ref_update(feats, labels_down, protos, counts, exclude_bg, code_reshape=False):
  """_update_running_stats: in place on protos (C, D) and counts (C,)."""
  cl_present = np.unique(labels_down)
  if exclude_bg:
    cl_present = cl_present[1:]
  if cl_present[-1] == 255:
    cl_present = cl_present[:-1]
  for cl in cl_present:
    features_cl = masked(feats, labels_down == cl, "CN", code_reshape)
    total = features_cl.sum(-1)
    protos[cl] = (total + counts[cl] * protos[cl]) / (counts[cl] + features_cl.shape[-1])
    counts[cl] += features_cl.shape[-1]


def ref_pm(feats, labels, outputs_old, protos, n_old, sumafter=True, sequential=False, code_reshape=False):
  """DistillationEncoderPrototypesLoss.forward at a step > 0; outputs_old (B, C_old, H, W)."""
  h, w = feats.shape[2:]
  labels_down = ref_nearest(labels, (h, w))
  if sequential:
    pseudo = labels_down * (labels_down < n_old)
  else:
    pseudo = ref_nearest(np.argmax(outputs_old, axis=1), (h, w)) * (labels_down == 0)
  cl_present = np.unique(pseudo)
  if cl_present[0] == 0:
    cl_present = cl_present[1:]
  out = 0.0
  for cl in cl_present:
    current = masked(feats, pseudo == cl, "NC", code_reshape)
    if sumafter:
      out += np.mean((current.mean(0) - protos[cl]) ** 2) / cl_present.shape[0]
    else:
      for row in current:
        out += np.mean((row - protos[cl]) ** 2) / current.shape[0]
  return out


def ref_fc(feats, labels, protos, nobgr=False, code_reshape=False, loop_division=False):
  """FeaturesClusteringSeparationLoss.forward at a step > 0: (clustering, separation)."""
  h, w = feats.shape[2:]
  labels_down = ref_nearest(labels, (h, w))
  cl_present = np.unique(labels_down)
  if nobgr:
    cl_present = cl_present[1:]
  if cl_present[-1] == 255:
    cl_present = cl_present[:-1]
  local_mean = np.zeros(protos.shape)
  loss = 0.0
  for cl in cl_present:
    features_cl = masked(feats, labels_down == cl, "CN", code_reshape)
    local_mean[cl] = features_cl.mean(-1)
    loss += np.mean((features_cl - protos[cl][:, None]) ** 2)
    if loop_division:  # the code's indentation
      loss /= cl_present.shape[0]
  if not loop_division:
    loss /= cl_present.shape[0]
  reduced = local_mean[cl_present]
  dist = np.sqrt(((reduced[:, None] - reduced[None]) ** 2).sum(-1))
  with np.errstate(divide="ignore"):
    inv = 1 / dist
  finite = inv[~np.isinf(inv)]
  sep = finite.mean() if finite.size else 0.0
  return loss, sep


def ref_fs(feats, labels, normalization="max_maskedforclass", shrinking="exponential", function="ratio", eps=1e-15):
  """FeaturesSparsificationLoss.forward (reduction 'mean')."""
  h, w = feats.shape[2:]
  labels_down = ref_nearest(labels, (h, w))[:, None]
  if normalization == "max_maskedforclass":
    norm = np.zeros_like(feats)
    classes = np.unique(labels_down)
    if classes[-1] == 0:
      classes = classes[:-1]
    for cl in classes:
      cl_mask = labels_down == cl
      norm += feats / (feats[np.broadcast_to(cl_mask, feats.shape)].max() + eps) * cl_mask
  elif normalization == "max_foreachfeature":
    norm = feats / (feats.max(1, keepdims=True) + eps)
  elif normalization == "L2":
    norm = feats / np.maximum(np.sqrt((feats ** 2).sum(1, keepdims=True)), 1e-12)
  elif normalization == "softmax":
    e = np.exp(feats - feats.max(1, keepdims=True))
    norm = e / e.sum(1, keepdims=True)
  out = np.zeros(())
  if norm.sum() > 0:
    shrunk = {"squared": (norm ** 2), "power3": norm ** 3, "exponential": np.exp(norm)}[shrinking].sum(1, keepdims=True)
    if function == "ratio":
      out = shrunk / (norm.sum(1, keepdims=True) + eps)
    elif function == "lasso":
      out = np.abs(feats).sum() / 2
    elif function == "entropy":
      out = np.sum(-norm * np.log(norm + 1e-10), axis=1)
  return np.mean(out)


# ----------------------------------------------------------------------------------------
# Small inputs
# ----------------------------------------------------------------------------------------

# Step 1 of a 3 + 2 scenario: channels 0 (background), 1-2 (old), 3-4 (new).
TASK = losses.TaskInfo(index=1, num_channels=5, old_channels=(1, 2), new_channels=(3, 4))
TASK0 = losses.TaskInfo(index=0, num_channels=3, old_channels=(), new_channels=(1, 2))
D = 6


def nhwc(x):
  return jnp.asarray(np.transpose(x, (0, 2, 3, 1)), jnp.float32)


def batch(seed, b=2, h=4, w=4, size=8, classes=(0, 3, 4), old=3):
  """(features NCHW float64 >= 0, labels (B, size, size), old-model logits (B, old, size, size))."""
  rng = np.random.default_rng(seed)
  feats = np.float32(rng.random((b, D, h, w)) * 2).astype(np.float64)
  labels = rng.choice(classes, size=(b, size, size)).astype(np.int32)
  logits = np.float32(rng.normal(size=(b, old, size, size)) * 3).astype(np.float64)
  return feats, labels, logits


def state_from(protos, counts):
  counts = np.asarray(counts, np.float64)
  high = np.floor(counts / sdr.COUNT_BASE)
  return {"prototypes": jnp.asarray(protos, jnp.float32), "count_high": jnp.asarray(high, jnp.float32),
          "count_low": jnp.asarray(counts - high * sdr.COUNT_BASE, jnp.float32)}


def start_state(seed=7, num=5, counted=(40, 9, 12, 0, 0)):
  rng = np.random.default_rng(seed)
  protos = np.float32(rng.random((num, D))).astype(np.float64)
  protos[np.asarray(counted) == 0] = 0.0
  return protos, np.asarray(counted, np.int64)


def inputs(feats, labels, logits=None, state=None, task=TASK):
  teacher = None if logits is None else {"logits": nhwc(logits)}
  return losses.LossInputs(student={"encoder": nhwc(feats)}, teacher=teacher, labels=jnp.asarray(labels),
                           images=None, task=task, state=state)


def close(a, b):
  np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def test_nearest_labels_is_pytorchs_nearest():
  labels = jnp.arange(8 * 7).reshape(1, 8, 7)
  got = np.asarray(sdr.nearest_labels(labels, (4, 3)))
  # rows floor(i * 2) = 0, 2, 4, 6; cols floor(j * 7/3) = 0, 2, 4 (first pixel of each cell, not its centre)
  np.testing.assert_array_equal(got[0], np.asarray(labels)[0][[0, 2, 4, 6]][:, [0, 2, 4]])
  np.testing.assert_array_equal(sdr.nearest_indices(321, 41), ref_nearest(np.arange(321)[None, :, None], (41, 1))[0, :, 0])


def test_encoder_channels_is_the_forward_encoder_width():
  from incseg_jax.models.segmodel import SegModel  # pylint: disable=g-import-not-at-top
  model = SegModel(backbone="resnet_small", decoder="deeplab_v3", classes_per_step=(3,), output_stride=8,
                   aspp_channels=8, atrous_rates=(1, 2, 3), small_width=4)
  x = jnp.zeros((1, 16, 16, 3))
  variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert sdr.encoder_channels(variables["params"]) == out["encoder"].shape[-1] == 32
  bottleneck = {"backbone": {"stage3": {"block0": {"conv3": {"kernel": np.zeros((1, 1, 4, 99))}}},
                             "stage4": {"block0": {"conv1": {"kernel": np.zeros((1, 1, 16, 8))},
                                                   "conv3": {"kernel": np.zeros((1, 1, 8, 32))},
                                                   "bn3": {"scale": np.zeros(32)}}}}}
  assert sdr.encoder_channels(bottleneck) == 32


# ----------------------------------------------------------------------------------------
# Prototype state
# ----------------------------------------------------------------------------------------


def test_prototype_update_is_the_codes_running_mean_over_batches():
  # Step 0 (background included), three batches, then step 1 (background left out).
  protos, counts = np.zeros((3, D)), np.zeros(3, np.int64)
  state = state_from(protos, counts)
  seen = {c: [] for c in range(3)}
  update = jax.jit(lambda s, f, y: sdr.updated_prototypes(s, f, y, TASK0))
  for seed in range(3):
    feats, labels, _ = batch(seed, classes=(0, 1, 2))
    ref_update(feats, ref_nearest(labels, (4, 4)), protos, counts, exclude_bg=False)
    state = update(state, nhwc(feats), jnp.asarray(labels))
    down = ref_nearest(labels, (4, 4))
    for c in range(3):
      seen[c].append(feats.transpose(0, 2, 3, 1)[down == c])
  close(state["prototypes"], protos)
  np.testing.assert_array_equal(sdr.count(state), counts)
  for c in range(3):  # the running mean is the mean over every pixel seen
    close(state["prototypes"][c], np.concatenate(seen[c]).mean(0))

  # Step 1: grown for the new classes, old rows and counts kept bit for bit.
  ctx = state_lib.StateContext(params={"backbone": {"stage4": {"k": np.zeros((1, 1, 2, D))}}}, teacher_params=None,
                               previous=jax.device_get(state), task=TASK, options={})
  grown = sdr.prototype_init(ctx)
  assert grown["prototypes"].shape == (5, D) and grown["count_low"].shape == (5,)
  np.testing.assert_array_equal(grown["prototypes"][:3], np.asarray(state["prototypes"]))
  np.testing.assert_array_equal(grown["prototypes"][3:], 0.0)
  np.testing.assert_array_equal(sdr.count(grown), np.concatenate([counts, [0, 0]]))
  protos = np.concatenate([protos, np.zeros((2, D))])
  counts = np.concatenate([counts, [0, 0]])
  state = {k: jnp.asarray(v) for k, v in grown.items()}
  update = jax.jit(lambda s, f, y: sdr.updated_prototypes(s, f, y, TASK))
  for seed in (10, 11):
    feats, labels, _ = batch(seed, classes=(0, 3, 4))
    ref_update(feats, ref_nearest(labels, (4, 4)), protos, counts, exclude_bg=True)
    state = update(state, nhwc(feats), jnp.asarray(labels))
  close(state["prototypes"], protos)
  np.testing.assert_array_equal(np.asarray(state["prototypes"])[:3], grown["prototypes"][:3])  # old ones kept
  np.testing.assert_array_equal(sdr.count(state), counts)


def test_prototype_rule_update_reads_the_student_encoder_and_options():
  feats, labels, _ = batch(3, classes=(0, 3))
  protos, counts = start_state()
  state = state_from(protos, counts)

  def update(s, f, y):  # as the train step calls it, inside the jit
    u = state_lib.UpdateInputs(grads=None, params=None, step=jnp.int32(0),
                               options={"background_prototype": "always"}, student={"encoder": f}, labels=y, task=TASK)
    return sdr.PM_PROTOTYPES.update(s, u)

  new = jax.jit(update)(state, nhwc(feats), jnp.asarray(labels))
  ref_update(feats, ref_nearest(labels, (4, 4)), protos, counts, exclude_bg=False)
  close(new["prototypes"], protos)
  np.testing.assert_array_equal(sdr.count(new), counts)


@pytest.mark.parametrize("rule, index, background_moves", [("first_step", 0, True), ("first_step", 1, False),
                                                           ("never", 0, False), ("always", 1, True)])
def test_background_prototype_rules(rule, index, background_moves):
  task = losses.TaskInfo(index=index, num_channels=5, old_channels=(1, 2), new_channels=(3, 4))
  feats, labels, _ = batch(4, classes=(0, 3))
  protos, counts = start_state()
  new = sdr.updated_prototypes(state_from(protos, counts), nhwc(feats), jnp.asarray(labels), task, rule)
  assert (not np.allclose(new["prototypes"][0], protos[0])) == background_moves
  assert (float(sdr.count(new)[0]) > counts[0]) == background_moves
  assert float(sdr.count(new)[3]) > 0
  np.testing.assert_array_equal(np.asarray(new["prototypes"])[[1, 2, 4]], np.float32(protos[[1, 2, 4]]))


def test_counts_stay_exact_beyond_float32_integers():
  big = 2 ** 24 + 1  # not a float32
  feats = np.ones((1, D, 2, 2))
  labels = np.full((1, 2, 2), 3, np.int32)
  protos, counts = start_state()
  counts[3] = big - 1
  state = state_from(protos, counts)
  for _ in range(3):
    state = sdr.updated_prototypes(state, nhwc(feats), jnp.asarray(labels), TASK)
  exact = int(state["count_high"][3]) * 2 ** 23 + int(state["count_low"][3])
  assert exact == big - 1 + 12
  assert 0 <= float(state["count_low"][3]) < sdr.COUNT_BASE


# ----------------------------------------------------------------------------------------
# The terms against the code (intended per-channel computation)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mean_first", [True, False])
@pytest.mark.parametrize("old_labels", ["pseudo", "ground_truth"])
def test_prototype_matching_matches_the_code(mean_first, old_labels):
  classes = (0, 1, 2, 3, 4) if old_labels == "ground_truth" else (0, 3, 4)
  feats, labels, logits = batch(5, classes=classes)
  labels[0, :4] = 0  # plenty of background for the pseudo-labels
  protos, counts = start_state()
  state = state_from(protos, counts)
  rule = "always" if old_labels == "ground_truth" else "first_step"
  got = losses.get("sdr_pm")(inputs(feats, labels, logits, state), mean_first=mean_first, old_labels=old_labels,
                             background_prototype=rule)
  ref_update(feats, ref_nearest(labels, (4, 4)), protos, counts, exclude_bg=rule == "first_step")
  want = ref_pm(feats, labels, logits, protos, TASK.num_old_channels, sumafter=mean_first,
                sequential=old_labels == "ground_truth")
  assert want > 0
  close(got, want)


@pytest.mark.parametrize("no_background", [False, True])
def test_attraction_and_repulsion_match_the_code(no_background):
  feats, labels, _ = batch(6, classes=(0, 3, 4))
  protos, counts = start_state()
  state = state_from(protos, counts)
  att = losses.get("sdr_att")(inputs(feats, labels, state=state), no_background=no_background)
  rep = losses.get("sdr_rep")(inputs(feats, labels), no_background=no_background)
  ref_update(feats, ref_nearest(labels, (4, 4)), protos, counts, exclude_bg=True)
  want_att, want_rep = ref_fc(feats, labels, protos, nobgr=no_background)
  close(att, want_att)
  close(rep, want_rep)
  # The code's division inside the class loop (a reference bug, off by default).
  buggy = losses.get("sdr_att")(inputs(feats, labels, state=state_from(*start_state())), no_background=no_background,
                                divide_inside_loop=True)
  close(buggy, ref_fc(feats, labels, protos, nobgr=no_background, loop_division=True)[0])
  assert not np.isclose(float(buggy), float(att))


def test_repulsion_without_pairs_is_zero_and_drops_coinciding_means():
  feats = np.ones((1, D, 2, 2))
  labels = np.zeros((1, 2, 2), np.int32)
  assert float(losses.get("sdr_rep")(inputs(feats, labels))) == 0.0
  labels[0, 0] = 3  # two classes with the same mean feature: the code's inf entry, left out
  assert float(losses.get("sdr_rep")(inputs(feats, labels))) == 0.0
  g = jax.grad(lambda f: losses.get("sdr_rep")(
      losses.LossInputs(student={"encoder": f}, teacher=None, labels=jnp.asarray(labels), images=None, task=TASK)))(
          nhwc(feats))
  assert np.all(np.isfinite(g))


@pytest.mark.parametrize("options", [{}, {"shrinking": "squared"}, {"shrinking": "power3"},
                                     {"normalization": "max_foreachfeature"}, {"normalization": "L2"},
                                     {"normalization": "softmax", "function": "entropy"}, {"function": "lasso"}])
def test_sparsification_matches_the_code(options):
  feats, labels, _ = batch(8, classes=(0, 3, 4, 255))
  close(losses.get("sdr_fs")(inputs(feats, labels), **options), ref_fs(feats, labels, **options))


def test_sparsification_is_zero_on_background_only_batches():
  feats, _, _ = batch(9)
  labels = np.zeros((2, 8, 8), np.int32)
  assert ref_fs(feats, labels) == 0.0
  assert float(losses.get("sdr_fs")(inputs(feats, labels))) == 0.0


def test_sparsification_on_one_hot_features():
  # Every pixel one-hot with maximum 1: normalised features are the one-hot
  # vectors, so the ratio is (e + D - 1) / 1 at each pixel. A uniform feature
  # of the same maximum gives D e / D = e: the code's exponential ratio is
  # lower for dense features, and its gradient at a one-hot raises the zeros.
  eye = np.eye(D)[np.arange(8) % D]  # (8, D)
  feats = eye.reshape(2, 2, 2, D).transpose(0, 3, 1, 2)
  labels = np.repeat(np.repeat(np.array([[[0, 3], [4, 3]], [[3, 0], [0, 4]]]), 4, 1), 4, 2).astype(np.int32)
  fs = losses.get("sdr_fs")
  close(fs(inputs(feats, labels)), math.e + D - 1)
  close(fs(inputs(np.ones_like(feats), labels)), math.e)
  g = jax.grad(lambda f: fs(losses.LossInputs(student={"encoder": f}, teacher=None, labels=jnp.asarray(labels),
                                              images=None, task=TASK)))(nhwc(feats))
  zeros = np.asarray(nhwc(feats)) == 0
  assert np.all(np.asarray(g)[zeros] < 0)


def test_matching_and_attraction_vanish_when_features_equal_prototypes():
  rng = np.random.default_rng(12)
  protos = rng.random((5, D))
  labels = np.array([[[0, 0, 3, 3], [0, 0, 4, 4], [0, 0, 3, 0], [4, 0, 0, 0]]] * 2, np.int32)  # at feature size
  logits = np.zeros((2, 3, 4, 4))
  logits[:, 1, :, :2] = 5.0  # old class 1 on the left, 2 elsewhere
  logits[:, 2, :, 2:] = 5.0
  pseudo = np.where(labels == 0, np.argmax(logits, axis=1), labels)
  feats = protos[pseudo].transpose(0, 3, 1, 2)  # each pixel its (pseudo-)class's prototype
  state = state_from(protos, (30, 10, 10, 5, 5))
  assert abs(float(losses.get("sdr_pm")(inputs(feats, labels, logits, state)))) < 1e-12  # float32 means
  # Attraction: the background's prototype too (it is not moved at step 1).
  feats_att = protos[labels].transpose(0, 3, 1, 2)
  close(losses.get("sdr_att")(inputs(feats_att, labels, state=state)), 0.0)
  moved = losses.get("sdr_pm")(inputs(feats + 0.5, labels, logits, state))
  close(moved, 0.25)


def test_terms_trace_on_the_state_their_rule_builds():
  # validate.experiment traces each term on the state its rule's `init` gives.
  feats, labels, logits = batch(2)

  def term(f, state, name):
    return losses.get(name)(losses.LossInputs(student={"encoder": f}, teacher={"logits": nhwc(logits)},
                                              labels=jnp.asarray(labels), images=None, task=TASK, state=state))

  params = {"backbone": {"stage4": {"conv": {"kernel": np.zeros((1, 1, 3, feats.shape[1]), np.float32)}}}}
  for name in ("sdr_pm", "sdr_att"):
    state = sdr.prototype_init(state_lib.StateContext(params=params, teacher_params=None, previous=None, task=TASK,
                                                      options={}))
    assert jax.eval_shape(lambda f, s, n=name: term(f, s, n), nhwc(feats), state).shape == ()


# ----------------------------------------------------------------------------------------
# The reference bug: the code's reshapes of the masked features
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [1, 2])
def test_mixed_channels_reproduces_the_codes_reshape(b):
  feats, labels, logits = batch(13, b=b, classes=(0, 3, 4))
  labels[:, :4] = 0
  protos, counts = start_state()
  ref_update(feats, ref_nearest(labels, (4, 4)), protos, counts, exclude_bg=True, code_reshape=True)
  want_pm = ref_pm(feats, labels, logits, protos, TASK.num_old_channels, code_reshape=True)
  want_pm_rows = ref_pm(feats, labels, logits, protos, TASK.num_old_channels, sumafter=False, code_reshape=True)
  want_att, want_rep = ref_fc(feats, labels, protos, code_reshape=True)
  fresh = lambda: state_from(*start_state())
  pm = losses.get("sdr_pm")
  close(pm(inputs(feats, labels, logits, fresh()), mixed_channels=True), want_pm)
  close(pm(inputs(feats, labels, logits, fresh()), mixed_channels=True, mean_first=False), want_pm_rows)
  close(losses.get("sdr_att")(inputs(feats, labels, state=fresh()), mixed_channels=True), want_att)
  close(losses.get("sdr_rep")(inputs(feats, labels), mixed_channels=True), want_rep)
  # The state rule accumulates with the code's reshape too.
  u = state_lib.UpdateInputs(grads=None, params=None, step=jnp.int32(0), options={"mixed_channels": True},
                             student={"encoder": nhwc(feats)}, labels=jnp.asarray(labels), task=TASK)
  close(sdr.ATT_PROTOTYPES.update(fresh(), u)["prototypes"], protos)
  # The (N, C) view mixes channels even for one image; the (C, N) views only across images.
  assert not np.isclose(float(pm(inputs(feats, labels, logits, fresh()))), want_pm)
  intended_att = float(losses.get("sdr_att")(inputs(feats, labels, state=fresh())))
  assert np.isclose(intended_att, want_att, rtol=RTOL) == (b == 1)


# ----------------------------------------------------------------------------------------
# The preset
# ----------------------------------------------------------------------------------------


def test_sdr_preset_is_the_codes():
  method = methods.get("sdr")
  assert dict(method.losses) == {"unbiased_ce": 1.0, "unbiased_kd": 100.0, "sdr_pm": 0.01, "sdr_att": 1e-3,
                                 "sdr_rep": 1e-3, "sdr_fs": 1e-3}
  assert method.options["sdr_fs"] == {"normalization": "max_maskedforclass", "shrinking": "exponential",
                                      "function": "ratio", "eps": 1e-15}
  assert method.options["sdr_pm"]["mean_first"] and not method.options["sdr_pm"]["mixed_channels"]
  assert method.void_as_background and method.unseen_eval == "ignore" and method.head_init is None
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({"method": "sdr", "losses": {}, "loss_options": {}, "task": "15-1"})
  methods.apply_to_config(config, "paper")
  assert config.loss_options.unbiased_kd.class_reduction == "sum"
  assert [n for n, _, _ in methods.active_terms(config, 0)] == ["unbiased_ce"]
  assert len(methods.active_terms(config, 1)) == 6
  assert sorted((n, r.name) for n, r, _ in methods.state_terms(config)) == [("sdr_att", "sdr_att"), ("sdr_pm", "sdr_pm")]
