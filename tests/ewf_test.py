"""EWF: the fusion rule on hand trees, frozen old heads, and the fused model as the step's final checkpoint."""

import math
import os

import jax
import numpy as np
import pytest

from incseg_jax import checkpointing
from incseg_jax import experiment as experiment_lib
from incseg_jax import methods
from incseg_jax import train
from incseg_jax import validate
from incseg_jax import workdir as workdir_lib
from incseg_jax.methods import ewf


def _tree(backbone, head0, mean, head1=None):
  params = {"backbone": {"conv": {"kernel": np.asarray(backbone, np.float32)}},
            "classifier": {"head_0": {"bias": np.asarray(head0, np.float32)}}}
  if head1 is not None:
    params["classifier"]["head_1"] = {"bias": np.asarray(head1, np.float32)}
  return {"params": params, "batch_stats": {"backbone": {"bn": {"mean": np.asarray(mean, np.float32)}}}}


def test_fusion_weight_is_the_codes_merge_weight():
  # VOC 15-1, first incremental step: 1 new class, 16 old (background included).
  assert ewf.fusion_weight(1, 16) == pytest.approx(math.sqrt(1 / 17))
  assert ewf.fusion_weight(5, 16) == pytest.approx(math.sqrt(5 / 21))
  with pytest.raises(ValueError):
    ewf.fusion_weight(0, 16)


def test_fuse_on_a_hand_tree():
  old = _tree([1.0, 2.0], [0.0], [10.0])
  new = _tree([3.0, 2.0], [4.0], [20.0], head1=[7.0])
  out = ewf.fuse(old, new, 0.25)
  # (1 - 0.25) old + 0.25 new, leaf by leaf; the new head (only in `new`) is kept as trained.
  np.testing.assert_allclose(out["params"]["backbone"]["conv"]["kernel"], [1.5, 2.0])
  np.testing.assert_allclose(out["params"]["classifier"]["head_0"]["bias"], [1.0])
  np.testing.assert_allclose(out["batch_stats"]["backbone"]["bn"]["mean"], [12.5])
  np.testing.assert_allclose(out["params"]["classifier"]["head_1"]["bias"], [7.0])


def test_fuse_top_fraction_fuses_only_the_largest_changes():
  old = _tree([0.0, 0.0, 0.0, 0.0], [0.0], [0.0])
  new = _tree([1.0, 2.0, 3.0, 4.0], [0.5], [6.0])
  # Changes 1, 2, 3, 4, 0.5, 6: the largest half (3 of 6) are 6, 4, 3; threshold 3.
  out = ewf.fuse(old, new, 0.5, top_fraction=0.5)
  np.testing.assert_allclose(out["params"]["backbone"]["conv"]["kernel"], [1.0, 2.0, 1.5, 2.0])
  np.testing.assert_allclose(out["params"]["classifier"]["head_0"]["bias"], [0.5])
  np.testing.assert_allclose(out["batch_stats"]["backbone"]["bn"]["mean"], [3.0])


def test_weight_one_and_zero_are_the_endpoints():
  old, new = _tree([1.0], [2.0], [3.0]), _tree([5.0], [6.0], [7.0], head1=[8.0])
  same = lambda a, b: jax.tree.all(jax.tree.map(np.allclose, a, b))
  assert same(ewf.fuse(old, new, 1.0), new)
  zero = ewf.fuse(old, new, 0.0)
  assert same(zero["params"]["backbone"], old["params"]["backbone"])


def test_fuse_refuses_a_mismatched_tree():
  with pytest.raises(ValueError, match="backbone/conv/kernel"):
    ewf.fuse(_tree([1.0, 2.0], [0.0], [0.0]), _tree([1.0], [0.0], [0.0]), 0.5)


def test_ewf_combines_and_freezes_the_earlier_heads(smoke_config):
  m = methods.get("mib+ewf")
  assert m.fuse is ewf.ewf_fuse and m.freeze_old_heads and "unbiased_ce" in m.losses
  with pytest.raises(ValueError, match="more than one part fuses"):
    with methods.registered(methods.Method(name="other_fuse", losses={"ce": 1.0}, fuse=lambda *a: a[1])):
      methods.get("ewf+other_fuse")
  cfg = smoke_config("method=mib+ewf")
  exp = experiment_lib.build(cfg)
  assert exp.step(0).frozen == ()
  assert exp.step(2).frozen == ("classifier/head_0", "classifier/head_1")
  cfg.ewf.top_fraction = 1.5
  with pytest.raises(ValueError, match="config.ewf.top_fraction=1.5"):
    validate.config(cfg)


def test_the_fused_model_is_saved_evaluated_and_never_fused_twice(smoke_config, tmp_path):
  seen = []
  original = ewf.ewf_fuse

  def recording(teacher, student, task_step, options):
    out = original(teacher, student, task_step, options)
    seen.append((jax.device_get(teacher), jax.device_get(student), jax.device_get(out)))
    return out

  cfg = smoke_config("method=ewf,task=15-5")
  with methods.registered(methods.Method(name="ewf", losses={"ce": 1.0}, fuse=recording, freeze_old_heads=True)):
    workdir = str(tmp_path / "run")
    first = train.run(cfg, workdir)
    assert len(seen) == 1  # step 1 only: step 0 has no previous model
    teacher, trained, fused = seen[0]
    w = ewf.fusion_weight(5, 16)
    np.testing.assert_allclose(fused["params"]["backbone"]["stem"]["conv"]["kernel"],
                               (1 - w) * teacher["params"]["backbone"]["stem"]["conv"]["kernel"]
                               + w * trained["params"]["backbone"]["stem"]["conv"]["kernel"], rtol=1e-6)
    # The frozen earlier head is unchanged by training and therefore by the fusion.
    np.testing.assert_array_equal(trained["params"]["classifier"]["head_0"]["kernel"],
                                  teacher["params"]["classifier"]["head_0"]["kernel"])
    exp = experiment_lib.build(cfg)
    saved = workdir_lib.restore_step(exp, workdir, 1, jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)))
    assert jax.tree.all(jax.tree.map(np.array_equal, jax.device_get(saved["params"]), fused["params"]))
    # A crash after the final checkpoint but before the step was marked done: the resume restores the
    # fused model as it is (no second fusion) and reports the same numbers.
    os.remove(os.path.join(checkpointing.task_dir(workdir, 1), "done.json"))
    again = train.run(cfg, workdir)
    assert len(seen) == 1
    assert again["steps"][1]["metrics"] == first["steps"][1]["metrics"]

