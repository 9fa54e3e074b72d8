"""Tests for the jitted train step: frozen parameters, loss sum, teacher use, non-finite guard."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from incseg_jax import losses
from incseg_jax import methods
from incseg_jax import models
from incseg_jax import train
from incseg_jax import train_step as ts
from incseg_jax.losses import regularizers
from incseg_jax.losses import state as state_lib

MODEL = dict(backbone="resnet_small", decoder="deeplab_v3", output_stride=8, aspp_channels=8,
             atrous_rates=(1, 2, 3), small_width=8, small_blocks=(1, 1, 1, 1))
OPTIM = ml_collections.ConfigDict(dict(momentum=0.9, nesterov=True, weight_decay=1e-4))


def setup(frozen_fn, bn_frozen=False):
  cfg = ml_collections.ConfigDict(dict(MODEL, bn_frozen=bn_frozen))
  teacher, student = models.build_model(cfg, (3,)), models.build_model(cfg, (3, 2))
  tvars = models.init_variables(teacher, jax.random.key(0), 32)
  svars = models.add_head(student, tvars, jax.random.key(1), 32)
  frozen = frozen_fn(svars)
  sched = ts.lr_schedule(0.1, 0.0, 0.9, 10)
  tx = ts.make_optimizer(OPTIM, sched, svars["params"], frozen)
  state = ts.TrainState(step=np.int32(0), params=svars["params"], batch_stats=svars["batch_stats"],
                        opt_state=tx.init(svars["params"]))
  task = losses.TaskInfo(index=1, num_channels=5, old_channels=(1, 2), new_channels=(3, 4))
  step = ts.make_train_step(student, teacher, [("ce", 1.0, {})], task, tx, sched, frozen)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
           "label": rng.integers(0, 5, size=(4, 32, 32)).astype(np.int32)}
  before = jax.tree.map(np.array, {"params": state.params, "batch_stats": state.batch_stats})
  state, metrics = step(state, tvars, batch, jax.random.key(0))
  after = jax.tree.map(np.array, {"params": state.params, "batch_stats": state.batch_stats})
  return before, after, frozen, metrics


def changed(before, after):
  flat_b = {models.path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(before)}
  flat_a = {models.path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(after)}
  return {k for k in flat_b if not np.array_equal(flat_b[k], flat_a[k])}, set(flat_b)


@pytest.mark.parametrize("method, frozen_groups", [
    ("ef", ("backbone/",)),
    ("e2lf", ("backbone/stem/", "backbone/stage1/")),
])
def test_method_freezing_is_exact(method, frozen_groups):
  before, after, _, metrics = setup(lambda v: methods.get(method).frozen)
  diff, every = changed(before, after)
  frozen = {k for k in every if k.split("/", 1)[1].startswith(frozen_groups)}
  assert frozen and not diff & frozen  # params (no decay either) and batch_stats bit-identical
  assert any(k.startswith("batch_stats/") for k in frozen)
  assert {k for k in every - frozen if k.startswith("params")} <= diff  # everything else trained
  assert any(k.startswith("batch_stats/") for k in diff)
  assert np.isfinite(metrics["loss"]) and metrics["loss"] == metrics["loss_ce"]


def test_bn_frozen_freezes_batchnorm_params_and_statistics():
  before, after, frozen, _ = setup(models.batchnorm_prefixes, bn_frozen=True)
  assert "backbone/stem/bn" in frozen and "decoder/bn_pool" in frozen
  diff, every = changed(before, after)
  bn = {k for k in every if models.is_frozen(k.split("/", 1)[1], frozen)}
  assert bn and not diff & bn
  assert any("conv" in k for k in diff)


def test_nothing_frozen_updates_everything():
  before, after, _, _ = setup(lambda v: ())
  diff, every = changed(before, after)
  assert {k for k in every if k.startswith("params")} <= diff


class _NoCheckpoint:
  directory = "/nowhere"

  @staticmethod
  def latest_step():
    return None


def guarded_step(terms, images_fn=lambda x: x):
  """One train step of a small model; returns (state before, state after, metrics as NumPy)."""
  cfg = ml_collections.ConfigDict(dict(MODEL, bn_frozen=False))
  model = models.build_model(cfg, (3,))
  variables = models.init_variables(model, jax.random.key(0), 32)
  sched = ts.lr_schedule(0.1, 0.0, 0.9, 10)
  tx = ts.make_optimizer(OPTIM, sched, variables["params"], ())
  state = ts.TrainState(step=np.int32(0), params=variables["params"], batch_stats=variables["batch_stats"],
                        opt_state=tx.init(variables["params"]), skipped=np.int32(0))
  task = losses.TaskInfo(index=0, num_channels=3, old_channels=(), new_channels=(1, 2))
  step = ts.make_train_step(model, None, terms, task, tx, sched)
  rng = np.random.default_rng(0)
  batch = {"image": images_fn(rng.normal(size=(2, 32, 32, 3)).astype(np.float32)),
           "label": rng.integers(0, 3, size=(2, 32, 32)).astype(np.int32)}
  before = jax.tree.map(np.array, state)
  after, metrics = step(state, None, batch, jax.random.key(0))
  return before, jax.tree.map(np.array, after), jax.device_get(metrics)


def _schedule_counts(opt_state):
  is_sched = lambda s: isinstance(s, optax.ScaleByScheduleState)
  return [int(s.count) for s in jax.tree.leaves(opt_state, is_leaf=is_sched) if is_sched(s)]


def assert_unchanged_but_counted(before, after):
  for name in ("params", "batch_stats"):
    jax.tree.map(np.testing.assert_array_equal, getattr(before, name), getattr(after, name))
  # Momentum untouched; only the lr schedule's counter moves on with the step,
  # so the applied learning rate stays the logged schedule(step).
  is_sched = lambda s: isinstance(s, optax.ScaleByScheduleState)
  strip = lambda tree: jax.tree.map(lambda s: None if is_sched(s) else s, tree, is_leaf=is_sched)
  jax.tree.map(np.testing.assert_array_equal, strip(before.opt_state), strip(after.opt_state))
  assert _schedule_counts(after.opt_state) == [c + 1 for c in _schedule_counts(before.opt_state)] != []
  assert int(after.step) == 1 and int(after.skipped) == 1


def test_nonfinite_loss_leaves_the_state_unchanged_and_is_named():
  def nan_at_pixel(x):
    x[0, 0, 0, 0] = np.nan
    return x

  before, after, metrics = guarded_step([("ce", 1.0, {})], nan_at_pixel)
  assert not metrics["finite"] and metrics["skipped_batches"] == 1
  assert_unchanged_but_counted(before, after)
  message = train.nonfinite_message(metrics, 2, 7, _NoCheckpoint())
  assert message.startswith("task step 2, train step 7: non-finite loss term(s) ce (")
  assert "no checkpoint of this task step was written" in message and "--config.nonfinite=skip" in message


def test_nonfinite_gradient_alone_is_named_gradient():
  # sqrt at 0: the value is finite (0), its gradient is not (inf * 0 = NaN).
  with losses.registered("test_nan_grad", lambda inputs: jnp.sqrt(0.0 * inputs.student["logits"].sum())):
    before, after, metrics = guarded_step([("ce", 1.0, {}), ("test_nan_grad", 1.0, {})])
  assert np.isfinite(metrics["loss"]) and not np.isfinite(metrics["grad_norm"]) and not metrics["finite"]
  assert_unchanged_but_counted(before, after)
  assert "non-finite gradient (all loss terms finite)" in train.nonfinite_message(metrics, 1, 3, _NoCheckpoint())


def test_finite_step_counts_nothing():
  _, after, metrics = guarded_step([("ce", 1.0, {})])
  assert metrics["finite"] and int(after.skipped) == 0 and metrics["skipped_batches"] == 0


def _stateful_setup():
  """A step-1 student/teacher pair with EWC's state from a made-up step-0 Fisher."""
  cfg = ml_collections.ConfigDict(dict(MODEL, bn_frozen=False))
  teacher, student = models.build_model(cfg, (3,)), models.build_model(cfg, (3, 2))
  tvars = models.init_variables(teacher, jax.random.key(0), 32)
  svars = models.add_head(student, tvars, jax.random.key(1), 32)
  rng = np.random.default_rng(1)
  previous = {"fisher": jax.tree.map(lambda x: rng.uniform(0.1, 2.0, np.shape(x)).astype(np.float32), tvars["params"])}
  opts = {"alpha": 0.9, "normalize": True}
  ctx = state_lib.StateContext(params=svars["params"], teacher_params=tvars["params"], previous=previous, task=None,
                               options=opts)
  ewc_state = regularizers.ewc_init(ctx)
  sched = ts.lr_schedule(0.1, 0.0, 0.9, 10)
  tx = ts.make_optimizer(OPTIM, sched, svars["params"], ())
  state = ts.TrainState(step=np.int32(0), params=svars["params"], batch_stats=svars["batch_stats"],
                        opt_state=tx.init(svars["params"]), method_state={"ewc": ewc_state})
  task = losses.TaskInfo(index=1, num_channels=5, old_channels=(1, 2), new_channels=(3, 4))
  step = ts.make_train_step(student, teacher, [("ce", 1.0, {}), ("ewc", 500.0, opts)], task, tx, sched,
                            states=[("ewc", regularizers.EWC, opts)])
  batch = {"image": rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
           "label": rng.integers(0, 5, size=(4, 32, 32)).astype(np.int32)}
  return student, svars, tvars, task, state, step, batch


def test_state_update_sees_the_forward_gradients_and_the_penalty_trains():
  student, svars, tvars, task, state, step, batch = _stateful_setup()
  fisher0 = jax.tree.map(np.array, state.method_state["ewc"]["fisher"])
  key = jax.random.key(0)

  def ce_only(params):  # the train step's forward loss, rebuilt here: CE alone, without the penalty
    out, _ = student.apply({"params": params, "batch_stats": svars["batch_stats"]}, batch["image"], train=True,
                           mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(key, 0)})
    inputs = losses.LossInputs(student=out, teacher=None, labels=batch["label"], images=batch["image"], task=task)
    return losses.get("ce")(inputs)

  g = jax.grad(ce_only)(svars["params"])
  state, metrics = step(state, tvars, batch, key)
  # Student == teacher on every old parameter at the start: no penalty yet.
  assert float(metrics["loss_ewc"]) == 0.0 and float(metrics["loss"]) == pytest.approx(float(metrics["loss_ce"]))
  want = jax.tree.map(lambda f, gi: 0.9 * np.square(np.asarray(gi, np.float64)) + 0.1 * f, fisher0, g)
  got = state.method_state["ewc"]["fisher"]
  for (path, w), x in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(x), w, rtol=2e-4, atol=1e-9, err_msg=models.path_str(path))
  # The new head's Fisher started at ones and is updated too; the importance is not (it is the previous steps').
  assert "head_1" in got["classifier"] and "head_1" not in state.method_state["ewc"]["importance"]["classifier"]
  # After one update the old parameters moved, so the penalty is now positive.
  _, metrics = step(state, tvars, batch, key)
  assert float(metrics["loss_ewc"]) > 0.0
  assert float(metrics["loss"]) == pytest.approx(float(metrics["loss_ce"]) + 500 * float(metrics["loss_ewc"]),
                                                 rel=1e-5)


def test_a_skipped_batch_leaves_the_method_state_unchanged():
  _, _, tvars, _, state, step, batch = _stateful_setup()
  before = jax.tree.map(np.array, state.method_state)
  batch = dict(batch, image=np.full_like(batch["image"], np.nan))
  state, metrics = step(state, tvars, batch, jax.random.key(0))
  assert not bool(metrics["finite"])
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.method_state)):
    np.testing.assert_array_equal(a, np.asarray(b))


def test_global_norm_is_optaxs_bit_for_bit():
  # The train step's gradient norm (its finiteness check and logged metric) is optax.tree.norm written in lax.
  keys = jax.random.split(jax.random.key(5), 4)
  tree = {"conv": {"kernel": 1e-3 * jax.random.normal(keys[0], (3, 3, 8, 16))},
          "bn": {"scale": jax.random.normal(keys[1], (16,)), "bias": jnp.zeros((16,))},
          "step": jax.random.normal(keys[2], ()), "big": 1e18 * jax.random.normal(keys[3], (5, 7))}
  for t in (tree, {"only": tree["bn"]["bias"]}, dict(tree, big=jnp.full((5, 7), jnp.inf))):
    for wrap in (lambda f: f, jax.jit):
      np.testing.assert_array_equal(np.asarray(wrap(ts.global_norm)(t)), np.asarray(wrap(optax.tree.norm)(t)))
  expected = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in jax.tree.leaves(tree)))
  np.testing.assert_allclose(float(ts.global_norm(tree)), expected, rtol=1e-5)
