"""SSUL: the loss against a float64 NumPy reference and hand cases, the heads, the weight transfer, the
inference rule, the optimizer's parameter groups, and a run end to end (what trains after step 0)."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from incseg_jax import experiment as experiment_lib
from incseg_jax import losses
from incseg_jax import methods
from incseg_jax import models
from incseg_jax import train
from incseg_jax import train_step as ts
from incseg_jax import workdir as workdir_lib
from incseg_jax.losses import ssul as ssul_losses
from incseg_jax.methods import ssul as ssul_method
from incseg_jax.models import classifier

IGNORE = 255


def _info(k, num_channels, new):
  old = tuple(range(1, num_channels - len(new)))
  return losses.TaskInfo(index=k, num_channels=num_channels, old_channels=old, new_channels=tuple(new),
                         ignore_label=IGNORE)


def _reference(logits, unknown, labels, saliency, teacher_ext, threshold):
  """The SSUL code's steps in float64 NumPy: shift by one, carve, pseudo-label, one-hot BCE summed, mean."""
  labels = labels.astype(np.int64)
  target = np.where(labels == IGNORE, IGNORE, labels + 1)
  if saliency is not None:
    target = np.where((target == 1) & (saliency > 0), 0, target)
  if teacher_ext is not None:
    prob = 1.0 / (1.0 + np.exp(-teacher_ext.astype(np.float64)))
    score, best = prob.max(-1), prob.argmax(-1)
    target = np.where((target <= 1) & (best > 1) & (score >= threshold), best, target)
  ext = np.concatenate([unknown, logits], -1).astype(np.float64)
  total, count = 0.0, 0
  for idx in np.ndindex(*target.shape):
    t = target[idx]
    if t == IGNORE:
      continue
    y = np.zeros(ext.shape[-1])
    y[t] = 1.0
    x = ext[idx]
    p = 1.0 / (1.0 + np.exp(-x))
    total += -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum()
    count += 1
  return total / count


@pytest.mark.parametrize("with_teacher", [False, True])
def test_ssul_bce_matches_a_float64_reference(with_teacher):
  rng = np.random.default_rng(0)
  b, h, w, n_old, n = 2, 5, 6, 4, 6
  logits = rng.normal(0, 2, (b, h, w, n)).astype(np.float32)
  unknown = rng.normal(0, 2, (b, h, w, 1)).astype(np.float32)
  labels = rng.choice([0, 0, 0, 1, 2, 4, 5, IGNORE], (b, h, w)).astype(np.int32)
  saliency = (rng.random((b, h, w)) < 0.5).astype(np.uint8) * 255
  teacher = None
  if with_teacher:
    # Confident old-class scores on some pixels, so pseudo-labels are taken there.
    t = rng.normal(0, 2, (b, h, w, n_old + 1)).astype(np.float32)
    t[..., 3] += 4.0 * (rng.random((b, h, w)) < 0.4)
    teacher = {"logits": jnp.asarray(t[..., 1:]), "unknown_logits": jnp.asarray(t[..., :1])}
  inputs = losses.LossInputs(student={"logits": jnp.asarray(logits), "unknown_logits": jnp.asarray(unknown)},
                             teacher=teacher, labels=jnp.asarray(labels), images=None,
                             task=_info(int(with_teacher), n, (4, 5)), saliency=jnp.asarray(saliency))
  got = float(losses.get("ssul_bce")(inputs, threshold=0.7))
  want = _reference(logits, unknown, labels, saliency, t if with_teacher else None, 0.7)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_ssul_targets_by_hand():
  # Pixels: background not salient, background salient, class 2, void salient, background salient that the old
  # model calls class 1 at 0.9, background the old model calls class 1 at 0.6 (below 0.7), class 3 the old
  # model calls class 1 (a real label is never replaced).
  labels = jnp.asarray([[0, 0, 2, IGNORE, 0, 0, 3]])
  saliency = jnp.asarray([[0, 9, 9, 9, 9, 0, 0]])
  logit = lambda p: float(np.log(p / (1 - p)))
  low = logit(0.1)
  teacher = np.full((1, 7, 3), low, np.float32)  # extended: unknown, background, class 1
  teacher[0, 4, 2] = logit(0.9)
  teacher[0, 5, 2] = logit(0.6)
  teacher[0, 6, 2] = logit(0.95)
  targets = ssul_losses.ssul_targets(labels, saliency, jnp.asarray(teacher), ignore_label=IGNORE, threshold=0.7)
  assert targets.tolist() == [[1, 0, 3, IGNORE, 2, 1, 4]]
  assert ssul_losses.ssul_targets(labels, None, None, ignore_label=IGNORE, threshold=0.7).tolist() == \
      [[1, 1, 3, IGNORE, 1, 1, 4]]


def test_ssul_bce_is_zero_for_confident_right_logits_and_ignores_void():
  labels = jnp.asarray([[[0, 2, IGNORE]]])
  saliency = jnp.asarray([[[7, 0, 0]]])
  big = 40.0
  ext = np.full((1, 1, 3, 4), -big, np.float32)  # unknown, background, class 1, class 2
  ext[0, 0, 0, 0] = big  # the salient background pixel is unknown
  ext[0, 0, 1, 3] = big
  ext[0, 0, 2] = np.nan  # void: never read
  inputs = losses.LossInputs(student={"logits": jnp.asarray(ext[..., 1:]), "unknown_logits": jnp.asarray(ext[..., :1])},
                             teacher=None, labels=labels, images=None, task=_info(0, 3, (1, 2)), saliency=saliency)
  assert float(losses.get("ssul_bce")(inputs)) < 1e-12


def test_ssul_bce_needs_ssul_heads_and_saliency():
  inputs = losses.LossInputs(student={"logits": jnp.zeros((1, 2, 2, 3))}, teacher=None,
                             labels=jnp.zeros((1, 2, 2), jnp.int32), images=None, task=_info(0, 3, (1, 2)))
  with pytest.raises(ValueError, match="model.head='ssul'"):
    losses.get("ssul_bce")(inputs)
  inputs = losses.LossInputs(student={"logits": jnp.zeros((1, 2, 2, 3)), "unknown_logits": jnp.zeros((1, 2, 2, 1))},
                             teacher=None, labels=jnp.zeros((1, 2, 2), jnp.int32), images=None,
                             task=_info(0, 3, (1, 2)))
  with pytest.raises(ValueError, match="saliency"):
    losses.get("ssul_bce")(inputs)


def test_ssul_scores_add_unknown_to_background():
  logit = lambda p: np.log(p / (1 - p))
  logits = jnp.asarray([[logit(0.3), logit(0.7)], [logit(0.3), logit(0.9)]], jnp.float32)
  unknown = jnp.asarray([[logit(0.5)], [logit(0.5)]], jnp.float32)
  scores = classifier.ssul_scores(logits, unknown)
  np.testing.assert_allclose(scores, [[0.8, 0.7], [0.8, 0.9]], rtol=1e-6)
  assert jnp.argmax(scores, -1).tolist() == [0, 1]  # 0.3 + 0.5 beats 0.7, not 0.9


def _small(classes, head="ssul"):
  cfg = types.SimpleNamespace(backbone="resnet_small", decoder="deeplab_v3", output_stride=8, aspp_channels=8,
                              atrous_rates=(1, 2, 3), small_width=4, head=head)
  return models.build_model(cfg, classes)


def test_ssul_heads_layout_and_scores_in_the_outputs():
  model = _small((4, 2))
  variables = models.init_variables(model, jax.random.key(0), 32)
  heads = variables["params"]["classifier"]
  assert sorted(heads) == ["background", "head_0", "head_1", "unknown"]
  assert heads["head_0"]["logits"]["kernel"].shape[-1] == 3 and heads["head_1"]["logits"]["kernel"].shape[-1] == 2
  assert heads["unknown"]["conv"]["kernel"].shape == (3, 3, 8, 8)
  assert sorted(variables["batch_stats"]["classifier"]) == sorted(heads)
  out = model.apply(variables, jnp.ones((2, 32, 32, 3)), train=False)
  assert out["logits"].shape == (2, 32, 32, 6) and out["unknown_logits"].shape == (2, 32, 32, 1)
  np.testing.assert_allclose(out["scores"], classifier.ssul_scores(out["logits"], out["unknown_logits"]))
  assert models.prediction_scores(out) is out["scores"]
  with pytest.raises(ValueError, match="foreground class at step 0"):
    _small((1, 2)).init(jax.random.key(0), jnp.ones((1, 32, 32, 3)), train=False)
  with pytest.raises(ValueError, match="model.head='conv'"):
    _small((4,), head="conv")


def test_weight_transfer_makes_every_new_class_score_as_the_old_unknown():
  old_model, new_model = _small((4,)), _small((4, 3))
  rng = np.random.default_rng(1)
  teacher = models.init_variables(old_model, jax.random.key(0), 32)
  # Random BatchNorm statistics, so a copy that missed them would show.
  teacher = jax.tree.map(lambda a: np.asarray(a) + rng.uniform(0.1, 0.5, np.shape(a)).astype(np.float32), teacher)
  student = models.add_head(new_model, teacher, jax.random.key(1), 32)
  step = types.SimpleNamespace(index=1, new_channels=(4, 5, 6))
  student = ssul_method.ssul_head_init(teacher, student, step)
  images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)).astype(np.float32))
  old = old_model.apply(teacher, images, train=False)
  new = new_model.apply(student, images, train=False)
  for c in (4, 5, 6):
    np.testing.assert_allclose(new["logits"][..., c], old["unknown_logits"][..., 0], rtol=1e-5, atol=1e-5)
  # Not bit-equal: the old classes' logits come from a 4-wide product in one
  # model and a 7-wide one in the other, which a CPU's matmul kernels may
  # block, and so round, differently (1 ulp at 1e13 on an AMD EPYC VM).
  np.testing.assert_allclose(new["logits"][..., :4], old["logits"], rtol=1e-6, atol=0)
  with pytest.raises(ValueError, match="step 0"):
    ssul_method.ssul_head_init(teacher, student, types.SimpleNamespace(index=0, new_channels=()))


def test_lr_scales_give_each_prefix_its_rate_and_frozen_wins():
  params = {"backbone": {"a": jnp.ones(2), "b": {"c": jnp.ones(2)}}, "head": {"x": jnp.ones(2)},
            "frozen": {"y": jnp.ones(2)}}
  optim = ml_collections.ConfigDict(dict(momentum=0.0, nesterov=False, weight_decay=0.0))
  tx = ts.make_optimizer(optim, optax.constant_schedule(0.5), params, ("frozen",),
                         (("backbone", 0.1), ("backbone/b", 0.01), ("frozen", 3.0)))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  flat = traverse_util.flatten_dict(updates, sep="/")
  np.testing.assert_allclose(flat["backbone/a"], -0.05)
  np.testing.assert_allclose(flat["backbone/b/c"], -0.005)
  np.testing.assert_allclose(flat["head/x"], -0.5)
  np.testing.assert_allclose(flat["frozen/y"], 0.0)


def test_ssul_combines_only_where_it_can():
  assert methods.get("ssul+ewf").head == "ssul"
  with pytest.raises(ValueError, match="initialises new heads"):
    methods.get("ssul+mib")


def test_ssul_step_specs(smoke_config):
  cfg = smoke_config("method=ssul,task=15-5")
  assert cfg.model.head == "ssul"
  exp = experiment_lib.build(cfg)
  s0, s1 = exp.step(0), exp.step(1)
  assert s0.frozen == () and dict(s0.lr_scales) == {"backbone": 0.1} and not s0.train_model.bn_frozen
  assert s1.learning_rate == cfg.schedule.base_lr != cfg.schedule.inc_lr
  assert dict(s1.lr_scales) == {"classifier/background": 1e-4} and s1.train_model.bn_frozen
  assert not s1.model.bn_frozen  # the checkpointed model is the plain one
  bn = models.batchnorm_prefixes(models.abstract_variables(s1.train_model, cfg.input.crop_size))
  assert {"backbone", "decoder", "classifier/head_0", "classifier/head_1/bn", "classifier/unknown/bn"} <= set(s1.frozen)
  assert set(bn) <= set(s1.frozen)
  assert not any(p in s1.frozen for p in ("classifier/unknown", "classifier/background", "classifier/head_1"))


def test_an_ssul_run_trains_only_the_new_unknown_and_background_heads(smoke_config, tmp_path):
  cfg = smoke_config("method=ssul,task=15-5")
  workdir = str(tmp_path / "run")
  result = train.run(cfg, workdir)
  exp = experiment_lib.build(cfg)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  flat = [traverse_util.flatten_dict(jax.device_get(workdir_lib.restore_step(exp, workdir, k, mesh)), sep="/")
          for k in (0, 1)]
  moved = {p for p in flat[0] if not np.array_equal(flat[0][p], flat[1][p])}
  assert moved, "step 1 changed nothing"
  for p in moved:
    head = p.split("/")[2] if p.split("/")[1] == "classifier" else None
    assert head in ("unknown", "background") and "/bn/" not in p and not p.startswith("batch_stats"), p
  assert any("/unknown/" in p for p in moved)
  # The background head moves at 1e-4 x the rate: by far less than the unknown head.
  delta = lambda name: max(float(np.max(np.abs(flat[1][p] - flat[0][p]))) for p in moved if f"/{name}/" in p)
  assert any("/background/" in p for p in moved), "the background head did not train"
  assert delta("background") < 1e-2 * delta("unknown")
  steps = result["steps"]
  assert len(steps) == 2 and all(np.isfinite(s["metrics"]["miou"]) for s in steps)


def test_a_model_head_that_is_not_the_methods_is_refused(smoke_config):
  from incseg_jax import validate  # pylint: disable=g-import-not-at-top
  cfg = smoke_config("method=ssul,task=15-5")
  cfg.model.head = "linear"
  with pytest.raises(ValueError, match=r"config.model.head='linear', but method 'ssul' trains the 'ssul' head"):
    validate.config(cfg)
  cfg = smoke_config("method=mib,task=15-5")
  cfg.model.head = "ssul"
  with pytest.raises(ValueError, match="config.model.head='ssul'"):
    validate.config(cfg)
