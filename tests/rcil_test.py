"""RCIL: the two-branch model and its exact merge, the pooled cube distillation vs NumPy, and a run end to end."""

import dataclasses
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from incseg_jax import checkpointing
from incseg_jax import experiment as experiment_lib
from incseg_jax import losses
from incseg_jax import methods
from incseg_jax import models
from incseg_jax import train
from incseg_jax import workdir as workdir_lib
from incseg_jax.losses import rcil as rcil_losses
from incseg_jax.methods import ewf
from incseg_jax.methods import rcil as rcil_method
from incseg_jax.models import rcil
from incseg_jax.models import resnet


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(dict(tree)), sep="/")


def _small_model(activation="leaky_relu", classes=(6, 2)):
  cfg = types.SimpleNamespace(backbone="resnet_small", decoder="deeplab_v3", output_stride=8, aspp_channels=8,
                              atrous_rates=(1, 2, 3), small_width=4, activation=activation)
  return models.build_model(cfg, classes)


def _randomise_batchnorm(variables, seed):
  """`variables` with random BatchNorm scales (some negative), biases, means and variances (some tiny)."""
  rng = np.random.default_rng(seed)
  flat = _flat(variables)
  for path, value in flat.items():
    shape, leaf = np.shape(value), path.rsplit("/", 1)[1]
    if path.startswith("batch_stats/") and leaf == "var":
      flat[path] = np.where(rng.random(shape) < 0.2, 1e-4, rng.uniform(0.05, 2.0, shape)).astype(np.float32)
    elif path.startswith("batch_stats/") and leaf == "mean":
      flat[path] = rng.normal(0.0, 0.5, shape).astype(np.float32)
    elif leaf == "scale":
      flat[path] = rng.uniform(-1.5, 1.5, shape).astype(np.float32)
    elif leaf == "bias":
      flat[path] = rng.normal(0.0, 0.3, shape).astype(np.float32)
  return traverse_util.unflatten_dict(flat, sep="/")


def _images(seed, shape=(2, 32, 32, 3)):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _assert_close(a, b, what):
  a, b = np.asarray(a), np.asarray(b)
  scale = max(float(np.max(np.abs(a))), 1.0)
  np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * scale, err_msg=what)


# The model side.


def test_the_two_branch_model_keeps_the_plain_paths_and_adds_twins():
  plain = _small_model()
  two = rcil.two_branch_model(plain, 1)
  assert two.rc_branches == rcil.Branches(freeze_first=True) and plain.rc_branches is None
  assert rcil.two_branch_model(plain, 0).rc_branches == rcil.Branches(freeze_first=False)
  plain_paths = {p: v.shape for p, v in _flat(models.abstract_variables(plain, 32)).items()}
  two_shapes = models.abstract_variables(two, 32)
  two_paths = {p: v.shape for p, v in _flat(two_shapes).items()}
  assert all(two_paths[p] == s for p, s in plain_paths.items())  # a merged checkpoint is a plain one
  twins = sorted(set(two_paths) - set(plain_paths))
  assert twins and all(rcil.plain_path(p) in plain_paths and two_paths[p] == plain_paths[rcil.plain_path(p)]
                       for p in twins)
  # As the code converts them: the residual blocks' 3x3 convs (both, in basic blocks) and the ASPP's 1x1 and
  # atrous branches; not the stem, the image pooling, the projection nor the classifier.
  layers = {f"backbone/stage{s}/block0/{n}{i}" for s in range(1, 5) for n in ("conv", "bn") for i in (1, 2)}
  layers |= {f"decoder/{n}_{b}" for n in ("conv", "bn") for b in ("1x1", "atrous0", "atrous1", "atrous2")}
  assert set(rcil.frozen_branch_prefixes(two_shapes)) == layers
  assert {rcil.plain_path(p.split("/", 1)[1].rsplit("/", 1)[0]) for p in twins} == layers


@pytest.mark.parametrize("activation", ["leaky_relu", "relu"])
def test_merge_is_exact_in_eval_mode(activation):
  plain = _small_model(activation)
  two = rcil.two_branch_model(plain, 1)
  # Independent random branches (each conv its own initialisation) and random BatchNorm statistics.
  variables = _randomise_batchnorm(models.init_variables(two, jax.random.key(0), 32), seed=1)
  merged = rcil.merge(variables)
  expected = jax.tree.map(lambda s: (s.shape, s.dtype), models.abstract_variables(plain, 32))
  assert jax.tree.map(lambda a: (a.shape, a.dtype), merged) == expected
  x = _images(2)
  got, want = plain.apply(merged, x, train=False), two.apply(variables, x, train=False)
  for key in ("logits", "logits_os", "pre_logits", "encoder"):
    _assert_close(got[key], want[key], key)
  for i, (a, b) in enumerate(zip(got["stages"], want["stages"])):
    _assert_close(a, b, f"stage{i + 1}")


def test_merge_is_exact_for_bottleneck_blocks():
  kw = dict(block="bottleneck", stage_sizes=(1, 1, 1, 1), width=4, stem_kernel=3, output_stride=16,
            activation="leaky_relu")
  plain, two = resnet.ResNet(**kw), resnet.ResNet(**kw, rc_branches=rcil.Branches())
  x = _images(3)
  variables = _randomise_batchnorm(jax.jit(lambda k: two.init(k, x, train=False))(jax.random.key(4)), seed=5)
  # Only the 3x3 conv of each bottleneck has a twin, as the code's `conv2_new`.
  assert rcil.frozen_branch_prefixes(variables) == tuple(
      p for s in range(1, 5) for p in (f"stage{s}/block0/conv2", f"stage{s}/block0/bn2"))
  merged = rcil.merge(variables)
  got, want = plain.apply(merged, x, train=False), two.apply(variables, x, train=False)
  for i, (a, b) in enumerate(zip(got["stages"], want["stages"])):
    _assert_close(a, b, f"stage{i + 1}")


def test_expand_keeps_the_function_and_merge_gives_the_layers_back():
  plain = _small_model()
  two = rcil.two_branch_model(plain, 1)
  variables = models.init_variables(plain, jax.random.key(6), 32)
  variables = jax.tree.map(np.asarray, variables)
  expanded = rcil.expand(variables, models.abstract_variables(two, 32))
  flat_plain, flat_two = _flat(variables), _flat(expanded)
  for path, value in flat_two.items():
    np.testing.assert_array_equal(value, flat_plain[rcil.plain_path(path)])
  assert flat_two["params/backbone/stem/conv/kernel"] is flat_plain["params/backbone/stem/conv/kernel"]
  x = _images(7)
  _assert_close(two.apply(expanded, x, train=False)["logits"], plain.apply(variables, x, train=False)["logits"],
                "eval")
  # Equal branches mix to themselves whatever the draw, so training starts from the same function too.
  step0 = rcil.two_branch_model(plain, 0)
  train_out = step0.apply(expanded, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(8)})[0]
  _assert_close(train_out["logits"], plain.apply(variables, x, train=True, mutable=["batch_stats"])[0]["logits"],
                "train")
  # With positive BatchNorm scales, merging a layer with an identical twin gives the layer back.
  for path, value in _flat(rcil.merge(expanded)).items():
    np.testing.assert_allclose(value, flat_plain[path], rtol=1e-6, atol=1e-6, err_msg=path)


def test_expand_and_merge_refuse_mismatched_trees():
  plain = _small_model()
  two_shapes = models.abstract_variables(rcil.two_branch_model(plain, 1), 32)
  other = models.init_variables(_small_model(classes=(6,)), jax.random.key(0), 32)
  with pytest.raises(ValueError, match="head_1"):
    rcil.expand(other, two_shapes)
  variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), two_shapes)
  del variables["params"]["decoder"]["bn_1x1_new"]
  with pytest.raises(ValueError, match="decoder/conv_1x1_new has no decoder/bn_1x1_new/scale"):
    rcil.merge(variables)


def test_mix_draws_one_of_three_weights_per_channel():
  first, second = jnp.ones((2, 3, 3, 6000)), jnp.full((2, 3, 3, 6000), 3.0)
  np.testing.assert_array_equal(rcil.mix(first, second), 2.0)  # evaluation: the mean
  out = np.asarray(rcil.mix(first, second, jax.random.key(0)))
  assert (out == out[:1, :1, :1]).all()  # one draw per channel, shared by the batch and every position
  values, counts = np.unique(out[0, 0, 0], return_counts=True)
  assert values.tolist() == [1.0, 2.0, 3.0]  # first branch only, both halves, second only
  np.testing.assert_allclose(counts / out.shape[-1], [0.33, 0.34, 0.33], atol=0.025)
  np.testing.assert_array_equal(rcil.mix(first, second, jax.random.key(0)), out)


@pytest.mark.parametrize("freeze_first", [True, False])
def test_a_frozen_first_branch_uses_its_running_statistics(freeze_first):
  two = rcil.two_branch_model(_small_model(), int(freeze_first))
  variables = _randomise_batchnorm(models.init_variables(two, jax.random.key(9), 32), seed=10)
  _, updated = two.apply(variables, _images(11), train=True, mutable=["batch_stats"],
                         rngs={"dropout": jax.random.key(12)})
  before, after = _flat(variables["batch_stats"]), _flat(updated["batch_stats"])
  for first, twin in (("backbone/stage2/block0/bn1/mean", "backbone/stage2/block0/bn1_new/mean"),
                      ("decoder/bn_atrous1/var", "decoder/bn_atrous1_new/var")):
    assert np.array_equal(before[first], after[first]) == freeze_first, first
    assert not np.array_equal(before[twin], after[twin]), twin


# The losses, against a float64 NumPy transcription of the code's two functions.


def _avg_pool_ref(x, k):
  """torch avg_pool2d(x, (k, k), stride=1, padding=k // 2), count_include_pad, on (B, H, W, C)."""
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  h, w = x.shape[1] + 2 * p - k + 1, x.shape[2] + 2 * p - k + 1
  out = np.zeros((x.shape[0], h, w, x.shape[3]))
  for i in range(h):
    for j in range(w):
      out[:, i, j] = xp[:, i:i + k, j:j + k].sum(axis=(1, 2)) / (k * k)
  return out


def _channel_pool_ref(x):
  """torch avg_pool2d(x.permute(0, 2, 1, 3), (3, 1), stride=1, padding=(1, 0)) on (B, H, W, C): channels."""
  xp = np.pad(x, ((0, 0), (0, 0), (0, 0), (1, 1)))
  return (xp[..., :-2] + xp[..., 1:-1] + xp[..., 2:]) / 3


def _fold_ref(new, old_channels):
  out = np.zeros(new.shape[:-1] + (old_channels,))
  out[..., 0] = new[..., 0] + new[..., old_channels:].sum(-1)
  out[..., 1:] = new[..., 1:old_channels]
  return out


def _code_ref(old_maps, new_maps, n_current, n_new, spatial):
  """`features_distillation_spatial` / `_channel` (VOC factors) on lists of (B, h, w, C) float64 maps."""
  if not spatial:
    old_maps, new_maps = old_maps[:-1], new_maps[:-1]
  loss = 0.0
  for i, (a, b) in enumerate(zip(old_maps, new_maps)):
    if a.shape[-1] != b.shape[-1]:
      b = _fold_ref(b, a.shape[-1])
    a, b = a**2, b**2
    norm = lambda d: np.sqrt((d.reshape(d.shape[0], -1)**2).sum(1)).mean()
    if spatial:
      layer = sum(norm(_avg_pool_ref(a, k) - _avg_pool_ref(b, k)) for k in (4, 8, 12, 16, 20, 24)) / 6
    else:
      layer = norm(_channel_pool_ref(a) - _channel_pool_ref(b))
    factor = 0.0005 if i == len(old_maps) - 1 else 0.01
    loss += layer * np.sqrt(n_current / n_new) * factor
  return loss / len(old_maps)


def _maps(rng, channels, scale=1.0):
  """A forward dict with 4 non-square stages, the ASPP output and output-stride logits."""
  shapes = [(2, 13, 11, 5), (2, 9, 7, 6), (2, 9, 7, 7), (2, 9, 7, 8)]
  return {"stages": tuple((scale * rng.normal(size=s)).astype(np.float32) for s in shapes),
          "pre_logits": (scale * rng.normal(size=(2, 9, 7, 4))).astype(np.float32),
          "logits_os": (scale * rng.normal(size=(2, 9, 7, channels))).astype(np.float32)}


def _inputs(student, teacher):
  """Step 1 of 6 + 3 channels: the teacher's logits have 6 channels, the student's 9."""
  task = losses.TaskInfo(index=1, num_channels=9, old_channels=(1, 2, 3, 4, 5), new_channels=(6, 7, 8))
  return losses.LossInputs(student=jax.tree.map(jnp.asarray, student), teacher=jax.tree.map(jnp.asarray, teacher),
                           labels=None, images=None, task=task)


def _code_maps(d):
  return [np.asarray(m, np.float64) for m in (*d["stages"], d["pre_logits"], d["logits_os"])]


@pytest.mark.parametrize("term,spatial", [("pcd_spatial", True), ("pcd_channel", False)])
def test_pooled_cube_distillation_matches_the_code(term, spatial):
  rng = np.random.default_rng(0)
  teacher, student = _maps(rng, 6), _maps(rng, 9)  # the student has the step's 3 new channels
  opts = methods.get("rcil").options[term]
  got = 0.01 * float(losses.get(term)(_inputs(student, teacher), **opts))
  want = _code_ref(_code_maps(teacher), _code_maps(student), n_current=9, n_new=3, spatial=spatial)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Without the class schedule and with every map weighted 1: the mean of the maps' values.
  value = lambda **kw: float(losses.get(term)(_inputs(student, teacher), **dict(opts, class_schedule=False,
                                                                               last_weight=1.0, **kw)))
  np.testing.assert_allclose(value(), np.mean([value(layers=(name,)) for name in opts["layers"]]), rtol=1e-6)


def _as_student(teacher, new_logits):
  """The teacher's maps, its logits followed by `new_logits` (the student's new channels)."""
  return dict(teacher, logits_os=np.concatenate([teacher["logits_os"], new_logits], axis=-1))


@pytest.mark.parametrize("term", ["pcd_spatial", "pcd_channel"])
def test_pooled_cube_distillation_invariances(term):
  rng = np.random.default_rng(1)
  fn = lambda s, t, **kw: float(losses.get(term)(_inputs(s, t), **kw))
  teacher = _maps(rng, 6)
  # The student equals the teacher, its new channels at logit 0 (folded into background, they change nothing).
  same = _as_student(teacher, np.zeros((2, 9, 7, 3), np.float32))
  assert fn(same, teacher) == 0.0
  # A finite gradient there (the L2 norm's derivative is infinite at 0), as at a step's first train step: zero
  # where the difference is exactly 0, a unit direction where rounding left it above 0.
  grads = jax.grad(lambda s: losses.get(term)(_inputs(s, teacher)))(jax.tree.map(jnp.asarray, same))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.all(np.asarray(jax.grad(lambda d: rcil_losses.per_image_norm(d).sum())(jnp.zeros((2, 3, 4)))) == 0)
  student = _maps(rng, 9)
  base = fn(student, teacher)
  assert base > 0
  # The maps (the folded logits too) are squared first: signs do not matter.
  np.testing.assert_allclose(fn(jax.tree.map(lambda a: -a, student), teacher), base, rtol=1e-6)
  features = ("stage1", "stage2", "stage3", "stage4", "aspp")
  if term == "pcd_spatial":  # pools each channel alone: a common channel order does not matter
    perm = lambda d: dict(d, stages=tuple(m[..., ::-1] for m in d["stages"]), pre_logits=d["pre_logits"][..., ::-1])
  else:  # pools each position alone: a common order of the positions does not matter
    perm = lambda d: dict(d, stages=tuple(m[:, ::-1, ::-1] for m in d["stages"]),
                          pre_logits=d["pre_logits"][:, ::-1, ::-1])
  np.testing.assert_allclose(fn(perm(student), perm(teacher), layers=features),
                             fn(student, teacher, layers=features), rtol=1e-5)


def test_pooled_cube_distillation_refuses_bad_options():
  rng = np.random.default_rng(2)
  inputs = _inputs(_maps(rng, 9), _maps(rng, 6))
  with pytest.raises(ValueError, match="pcd_spatial: unknown layer 'stage'"):
    losses.get("pcd_spatial")(inputs, layers=("stage",))
  with pytest.raises(ValueError, match="pcd_channel: layer 'stage5': the model has 4 stages"):
    losses.get("pcd_channel")(inputs, layers=("stage5",))
  with pytest.raises(ValueError, match=r"pcd_spatial: kernels=\(0,\)"):
    losses.get("pcd_spatial")(inputs, kernels=(0,))


# The preset.


def test_the_preset_and_its_combinations():
  m = methods.get("rcil")
  assert m.train_variant is rcil_method.TWO_BRANCHES and m.head_init is not None
  assert dict(m.losses) == {"unbiased_ce": 1.0, "unbiased_kd": 100.0, "pcd_spatial": 0.01, "pcd_channel": 0.01}
  assert (m.void_as_background, m.unseen_eval) == (False, "background")
  both = methods.get("rcil+ewf")  # merged first, then fused with the previous model
  assert both.train_variant is rcil_method.TWO_BRANCHES and both.fuse is ewf.ewf_fuse
  other = dataclasses.replace(rcil_method.TWO_BRANCHES, merge=lambda v: v)
  with methods.registered(methods.Method(name="other_variant", losses={"ce": 1.0}, train_variant=other)):
    with pytest.raises(ValueError, match="more than one part trains a model variant"):
      methods.get("rcil+other_variant")


@pytest.mark.long
def test_rcil_end_to_end_saves_plain_checkpoints(smoke_config, tmp_path):
  merges = []

  def recording(variables):
    merged = rcil.merge(variables)
    merges.append((jax.device_get(variables), merged))
    return merged

  cfg = smoke_config("method=rcil,task=15-5")
  cfg.schedule.inc_length = 3  # step 1: a periodic (two-branch) checkpoint at train step 2, the final (plain) at 3
  method = dataclasses.replace(methods.get("rcil"),
                               train_variant=dataclasses.replace(rcil_method.TWO_BRANCHES, merge=recording))
  with methods.registered(method):
    exp = experiment_lib.build(cfg)
    spec0, spec1 = exp.step(0), exp.step(1)
    assert spec0.model.rc_branches is None and spec1.model.rc_branches is None
    assert spec0.train_model.rc_branches == rcil.Branches(freeze_first=False) and spec0.frozen == ()
    assert spec1.train_model.rc_branches == rcil.Branches(freeze_first=True)
    frozen = rcil.frozen_branch_prefixes(models.abstract_variables(spec1.train_model, cfg.input.crop_size))
    assert spec1.frozen == frozen and "decoder/conv_atrous0" in frozen

    workdir = str(tmp_path / "run")
    first = train.run(cfg, workdir)
    assert len(merges) == 2  # once per task step, step 0 included
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    saved = [jax.device_get(workdir_lib.restore_step(exp, workdir, k, mesh)) for k in (0, 1)]
    for k, (trained, merged) in enumerate(merges):
      plain_shapes = models.abstract_variables(exp.step(k).model, cfg.input.crop_size)
      assert jax.tree.map(lambda a: a.shape, saved[k]) == jax.tree.map(lambda a: a.shape, plain_shapes)
      assert not any("_new" in p for p in _flat(saved[k]))
      assert jax.tree.all(jax.tree.map(np.array_equal, saved[k], merged))
    # Step 0 trains both branches; step 1 keeps the plain-named branch (step 0's merged layer) frozen, its
    # BatchNorm statistics included, and trains the twin.
    trained0, trained1 = _flat(merges[0][0]), _flat(merges[1][0])
    teacher = _flat(saved[0])
    changed = lambda flat, p: not np.array_equal(flat[p], teacher[rcil.plain_path(p)])
    assert any(changed(trained1, p) for p in trained1 if "_new/" in p)
    for p in trained1:
      if p.split("/", 1)[1].rsplit("/", 1)[0] in frozen:
        np.testing.assert_array_equal(trained1[p], teacher[p], err_msg=p)
    assert any(not np.array_equal(trained0[p], trained0[rcil.plain_path(p)]) for p in trained0 if "_new/" in p)
    assert np.isfinite(first["steps"][1]["metrics"]["miou"])

    # A crash after the final (plain) checkpoint but before the step was marked done: the resume restores it
    # as it is, merges nothing, and reports the same numbers.
    task_dir = checkpointing.task_dir(workdir, 1)
    os.remove(os.path.join(task_dir, "done.json"))
    again = train.run(cfg, workdir)
    assert len(merges) == 2
    assert again["steps"][1]["metrics"] == first["steps"][1]["metrics"]
    # The same crash, and the final checkpoint damaged: the resume falls back to the periodic two-branch one,
    # trains the last train step again and merges it into the same model.
    model_files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(task_dir, "3", "model")) for f in fs]
    damaged = max(model_files, key=os.path.getsize)
    data = bytearray(open(damaged, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(damaged, "wb") as f:
      f.write(data)
    os.remove(os.path.join(task_dir, "done.json"))
    third = train.run(cfg, workdir)
    assert len(merges) == 3 and os.path.isdir(os.path.join(task_dir, "damaged_3"))
    assert third["steps"][1]["metrics"] == first["steps"][1]["metrics"]
