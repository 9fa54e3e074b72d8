"""End-to-end tests of the task loop: run, evaluate, resume, guard, refuse bad input."""

import json
import os
import shutil

import numpy as np
import pytest

from incseg_jax import checkpointing
from incseg_jax import evaluate
from incseg_jax import evaluation
from incseg_jax import experiment
from incseg_jax import sharding
from incseg_jax import train
from incseg_jax import workdir as workdir_lib
from incseg_jax.data import pipeline


def read_json(path):
  with open(path) as f:
    return json.load(f)


def read_results(workdir):
  return read_json(os.path.join(workdir, "results.json"))


def two_step_config(smoke_config, arg="task=19-1,method=ft"):
  config = smoke_config(arg)
  config.schedule.base_length = 4
  config.schedule.inc_length = 3
  config.checkpoint_every = 2
  return config


@pytest.fixture(scope="module")
def ft_run(smoke_config, tmp_path_factory):
  """(workdir, results) of the two-step ft 19-1 run, trained once for the tests that read it.

  A test that writes into the workdir takes `copy_of` it.
  """
  workdir = str(tmp_path_factory.mktemp("ft_19_1") / "run")
  return workdir, train.run(two_step_config(smoke_config), workdir)


def copy_of(run, tmp_path) -> str:
  copy = str(tmp_path / "run")
  shutil.copytree(run[0], copy)
  return copy


def test_run_writes_results_and_evaluate_reproduces(ft_run):
  workdir, res = ft_run
  assert [s["task_step"] for s in res["steps"]] == [0, 1]
  for name in ("results.json", "results.md", "results.csv", "config.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert res["steps"][1]["new_classes"] == [res["channel_names"][20]]
  assert len(res["steps"][1]["metrics"]["iou"]) == 21 and len(res["steps"][0]["metrics"]["iou"]) == 20
  record = evaluate.evaluate(workdir, 0)
  assert record["metrics"] == res["steps"][0]["metrics"]
  record = evaluate.evaluate(workdir)  # default: last finished step
  assert record["metrics"] == res["steps"][1]["metrics"]
  held_out = evaluate.evaluate(workdir, split="test")  # shapes' test split: other images, other numbers
  assert held_out["task_step"] == 1 and held_out["metrics"]["miou"] != record["metrics"]["miou"]
  saved = workdir_lib.read_config(workdir)  # as evaluate.main hands it over: read once, left as read
  assert evaluate.evaluate(workdir, split="test", config=saved)["metrics"] == held_out["metrics"]
  assert saved.dataset.eval_split != "test"
  with pytest.raises(ValueError, match="split 'nope' not in dataset shapes"):
    evaluate.evaluate(workdir, split="nope")
  # The classifier diagnostic: a step's own classifier changes nothing; a later step is refused.
  assert evaluate.evaluate(workdir, 1, classifier_from_step=1)["metrics"] == record["metrics"]
  # Step 0's classifier on step 1's network: what evaluating those spliced variables gives.
  exp = experiment.build(workdir_lib.read_config(workdir))
  mesh = sharding.make_mesh()
  spliced = evaluate.with_classifier_of(workdir_lib.restore_step(exp, workdir, 1, mesh),
                                        workdir_lib.restore_step(exp, workdir, 0, mesh))
  own = workdir_lib.restore_step(exp, workdir, 1, mesh)["params"]["classifier"]["head_0"]["kernel"]
  assert not np.array_equal(spliced["params"]["classifier"]["head_0"]["kernel"], own)  # step 1 trained head_0
  want = evaluation.evaluate_step(exp, exp.step(1), spliced, mesh)
  got = evaluate.evaluate(workdir, 1, classifier_from_step=0)["metrics"]
  assert (got["miou"], got["miou_old"], got["miou_new"]) == pytest.approx((want["miou"], want["miou_old"],
                                                                           want["miou_new"]))
  with pytest.raises(ValueError, match=r"--classifier_from_step=1: expected a task step in 0..0"):
    evaluate.evaluate(workdir, 0, classifier_from_step=1)


def test_with_classifier_of_replaces_the_shared_heads_only():
  a = lambda v: np.full((1, 1, 4, 2), v, np.float32)
  later = {"params": {"backbone": {"w": a(1)}, "classifier": {"head_0": {"kernel": a(1)}, "head_1": {"kernel": a(1)}}},
           "batch_stats": {"backbone": {"mean": a(1)}}}
  earlier = {"params": {"backbone": {"w": a(0)}, "classifier": {"head_0": {"kernel": a(0)}}},
             "batch_stats": {"backbone": {"mean": a(0)}}}
  out = evaluate.with_classifier_of(later, earlier)
  assert out["params"]["classifier"]["head_0"]["kernel"][0, 0, 0, 0] == 0  # the earlier step's head
  assert out["params"]["classifier"]["head_1"]["kernel"][0, 0, 0, 0] == 1  # the later step's new head stays
  assert out["params"]["backbone"]["w"][0, 0, 0, 0] == 1 and out["batch_stats"]["backbone"]["mean"][0, 0, 0, 0] == 1
  assert later["params"]["classifier"]["head_0"]["kernel"][0, 0, 0, 0] == 1  # the input is not modified
  wrong = {"params": {"classifier": {"head_0": {"kernel": np.zeros((1, 1, 4, 3), np.float32)}}}}
  with pytest.raises(ValueError, match="shape mismatch at params/classifier/head_0/kernel"):
    evaluate.with_classifier_of(later, wrong)


def test_head_growth_copies_old_params(smoke_config, ft_run):
  workdir = ft_run[0]
  exp = experiment.build(two_step_config(smoke_config))
  mesh = sharding.make_mesh()
  step0 = workdir_lib.restore_step(exp, workdir, 0, mesh)
  student = train.init_student(exp, exp.step(1), step0, __import__("jax").random.key(3))
  old = step0["params"]["classifier"]["head_0"]["kernel"]
  np.testing.assert_array_equal(np.asarray(student["params"]["classifier"]["head_0"]["kernel"]), np.asarray(old))
  assert "head_1" in student["params"]["classifier"]


def test_workdir_with_other_experiment_is_refused_unless_allowed(smoke_config, ft_run, tmp_path):
  workdir, first = copy_of(ft_run, tmp_path), ft_run[1]
  with pytest.raises(ValueError, match="(?s)holds a different experiment.*task: '19-1' vs '15-5'.*allow_config_change"):
    train.run(two_step_config(smoke_config, "task=15-5,method=ft"), workdir)
  assert not os.path.exists(os.path.join(workdir, "config.1.json"))
  # Allowed, the checkpoints of another class split or model still cannot
  # serve this run (refused before anything is written).
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"(?s)task_00 holds task step 0 of a different experiment.*classes_per_step\[0\]: 20 vs 16"):
    train.run(two_step_config(smoke_config, "task=15-5,method=ft"), workdir, allow_config_change=True)
  narrow = two_step_config(smoke_config)
  narrow.model.small_width = 4
  with pytest.raises(checkpointing.CheckpointMismatchError, match="model.small_width: 8 vs 4"):
    train.run(narrow, workdir, allow_config_change=True)
  reseeded = two_step_config(smoke_config)
  reseeded.seed = 1  # changes nothing that is already done
  again = train.run(reseeded, workdir, allow_config_change=True)
  assert [s["metrics"] for s in again["steps"]] == [s["metrics"] for s in first["steps"]]
  assert read_json(os.path.join(workdir, "config.1.json"))["seed"] == 0  # the old config, kept
  assert read_json(os.path.join(workdir, "config.json"))["seed"] == 1
  assert not os.path.exists(os.path.join(workdir, "config.2.json"))


def poison_batch(monkeypatch, task_index, train_step):
  """Makes the images of one training batch NaN (train step counted from 1)."""
  original = pipeline.train_batches

  def batches(*args, **kwargs):
    for step, batch in enumerate(original(*args, **kwargs), start=kwargs["start_step"] + 1):
      if kwargs["task_index"] == task_index and step == train_step:
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      yield batch

  monkeypatch.setattr(pipeline, "train_batches", batches)


def test_nonfinite_loss_stops_the_run_keeping_the_last_good_checkpoint(smoke_config, tmp_path, monkeypatch):
  poison_batch(monkeypatch, 0, 3)
  config = two_step_config(smoke_config)
  config.log_every = 100  # the flag of step 3 is read while step 4 runs
  workdir = str(tmp_path / "run")
  with pytest.raises(FloatingPointError, match=r"task step 0, train step 3: non-finite loss term\(s\) ce .*"
                     r"the last good checkpoint \(train step 2\) is kept"):
    train.run(config, workdir)
  ckpt = checkpointing.TaskCheckpointer(workdir, 0, read_only=True)
  assert ckpt.latest_step() == 2  # nothing of step 3 or later saved
  ckpt.close()
  assert not checkpointing.is_done(workdir, 0) and not os.path.exists(os.path.join(workdir, "results.json"))


def test_nonfinite_batches_are_skipped_and_counted(smoke_config, tmp_path, monkeypatch):
  poison_batch(monkeypatch, 0, 3)
  config = two_step_config(smoke_config)
  config.schedule.inc_length = 1
  config.nonfinite = "skip"
  res = train.run(config, str(tmp_path / "run"))
  assert [s["skipped_batches"] for s in res["steps"]] == [1, 0]
  assert all(np.isfinite(s["metrics"]["pixel_acc"]) for s in res["steps"])


@pytest.mark.parametrize("arg, field, message", [
    ("task=15-7", None, "Invalid scenario '15-7'"),
    ("setting=mixed", None, "mixed"),
    ("order=1;2;3", None, "permutation|missing"),
    ("task=15-5", ("dataset.name", "nope"), "not a known dataset"),
    # A bad option of a term that only trains at step 1 fails before step 0.
    ("method=kd_cls", ("loss_options.kd_cls.pixels", "xyz"),
     r"config.loss_options.kd_cls=.*fails at task step 1: ValueError: kd_cls: pixels='xyz'"),
    ("method=kd_cls_t", ("loss_options.kd_cls_t.temperature", "hot"), r"config.loss_options.kd_cls_t=.*TypeError"),
    ("", ("input.mean", ("abc",)), r"config.input.mean=\('abc',\): expected a tuple of numbers"),
    ("", ("nonfinite", "sometimes"), "config.nonfinite='sometimes': expected one of stop, skip"),
])
def test_bad_input_fails_before_training(smoke_config, tmp_path, arg, field, message):
  config = smoke_config(arg)
  if field:
    *parents, name = field[0].split(".")
    node = config
    for part in parents:
      node = node[part]
    with node.ignore_type():
      node[name] = field[1]
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match=message):
    train.run(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "config.json"))  # nothing written: a fixed rerun is not refused


def test_empty_task_step_is_reported(smoke_config, tmp_path, monkeypatch):
  original = pipeline.load_split

  def without_class_20(builder, split):
    s = original(builder, split)
    if split != "train":
      return s
    keep = [i for i, c in enumerate(s.classes) if 20 not in c]
    return pipeline.EncodedSplit(images=s.images[keep], labels=s.labels[keep], classes=[s.classes[i] for i in keep],
                                 pixel_counts=s.pixel_counts[keep], ids=[s.ids[i] for i in keep])

  monkeypatch.setattr(pipeline, "load_split", without_class_20)
  with pytest.raises(ValueError, match="step 5"):
    train.run(smoke_config("task=15-1"), str(tmp_path / "run"))


def test_init_from_reuses_a_base_model_and_checks_it(smoke_config, ft_run, tmp_path):
  base, first = copy_of(ft_run, tmp_path), ft_run[1]  # its config.json is rewritten below
  config = two_step_config(smoke_config)
  config.init_from = base
  config.seed = 1  # would give a different step 0 if it were trained
  second = train.run(config, str(tmp_path / "shared"))
  assert second["steps"][0]["metrics"] == first["steps"][0]["metrics"]
  # A run saved before a model or dataset field existed (model.head, dataset.saliency_dir) is still the
  # same base model: the missing fields count at their defaults.
  saved = json.load(open(os.path.join(base, "config.json")))
  del saved["model"]["head"], saved["dataset"]["saliency_dir"]
  with open(os.path.join(base, "config.json"), "w") as f:
    json.dump(saved, f)
  third = train.run(config, str(tmp_path / "shared_old"))
  assert third["steps"][0]["metrics"] == first["steps"][0]["metrics"]
  other = two_step_config(smoke_config)
  other.init_from = base
  other.model.small_width = 4
  with pytest.raises(ValueError, match="(?s)different base model.*small_width"):
    train.run(other, str(tmp_path / "mismatch"))
  other = two_step_config(smoke_config, "task=15-5")
  other.init_from = base
  with pytest.raises(ValueError, match="step-0 classes"):
    train.run(other, str(tmp_path / "mismatch2"))


def test_frequency_order_and_sequential_split_on_real_data(smoke_config):
  from incseg_jax import experiment  # pylint: disable=g-import-not-at-top
  exp = experiment.build(smoke_config("order=frequency,task=10-5-5,setting=sequential,labeling=background"))
  counts = exp.train_split.pixel_counts.sum(0)[1:]
  assert list(exp.plan.order) == sorted(range(1, 21), key=lambda c: (-counts[c - 1], c))
  seen = [set(ix.tolist()) for ix in exp.step_indices]
  assert all(seen) and not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
  for k, ix in enumerate(exp.step_indices):  # only seen classes, at least one new one
    allowed = set(exp.plan.steps[k].old_classes) | set(exp.plan.steps[k].new_classes)
    for i in ix:
      classes = set(exp.train_split.classes[i].tolist())
      assert classes <= allowed and classes & set(exp.plan.steps[k].new_classes)
  assert exp.plan.steps[1].train_lut[exp.plan.steps[0].new_classes[0]] == 0  # labeling=background


def test_prepare_hook_feeds_extras_to_the_losses(smoke_config, tmp_path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from incseg_jax import losses, methods  # pylint: disable=g-import-not-at-top
  seen = {}

  def prepare(ctx):
    n = 0
    for batch in ctx.batches():
      out = ctx.teacher_forward(batch["image"])
      assert out["logits"].shape[-1] == ctx.task.num_old_channels
      n += batch["image"].shape[0]
    seen["images"] = n
    return {"scale": np.float32(0.0)}

  def scaled_ce(inputs):
    # No prepare at step 0; after it the extras must be there (KeyError otherwise).
    scale = inputs.extras["scale"] if inputs.teacher is not None else 1.0
    return scale * losses.get("ce")(inputs)

  method = methods.Method(name="test_prep", losses={"ce": 1.0, "test_scaled_ce": 1.0}, prepare=prepare)
  with losses.registered("test_scaled_ce", scaled_ce), methods.registered(method):
    config = two_step_config(smoke_config)
    with config.unlocked():
      config.method = "test_prep"
      config.losses = {"ce": 1.0, "test_scaled_ce": 1.0}
    res = train.run(config, str(tmp_path / "run"))
  assert seen["images"] >= res["steps"][1]["num_train_images"]  # one epoch of the step's data
  assert jnp.isfinite(res["steps"][1]["metrics"]["pixel_acc"])


@pytest.mark.long
def test_stateful_method_shares_step_0_only_with_its_own_state(smoke_config, tmp_path):
  base = str(tmp_path / "ft")
  train.run(two_step_config(smoke_config), base)
  ewc = two_step_config(smoke_config, "task=19-1,method=ewc")
  ewc.init_from = base  # ft's step 0 has no Fisher: EWC's importance would start from nothing
  with pytest.raises(ValueError, match=r"(?s)state carried from step 0.*none vs \{'ewc'"):
    train.run(ewc, str(tmp_path / "ewc_from_ft"))
  own = str(tmp_path / "ewc")
  first = train.run(two_step_config(smoke_config, "task=19-1,method=ewc"), own)
  shared = two_step_config(smoke_config, "task=19-1,method=ewc")
  shared.init_from = own
  second = train.run(shared, str(tmp_path / "ewc_shared"))
  assert second["steps"] == [dict(s, seconds=t["seconds"]) for s, t in zip(first["steps"], second["steps"])]
  # A step-0 checkpoint that lost its state item is named, not silently restarted.
  step0 = checkpointing.TaskCheckpointer(own, 0, read_only=True)
  latest = step0.latest_step()
  step0.close()
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(os.path.join(checkpointing.task_dir(own, 0), str(latest), checkpointing.METHOD_ITEM))
  shutil.rmtree(checkpointing.task_dir(own, 1))
  # Its checksum record notices first; ...
  with pytest.raises(Exception, match=r"is damaged: .*method.* is missing"):
    train.run(two_step_config(smoke_config, "task=19-1,method=ewc"), own)
  # ... a checkpoint saved without the item (a stateless run's, or one from before checksums) is named as such.
  sums = os.path.join(checkpointing.task_dir(own, 0), checkpointing.CHECKSUMS_FILE)
  os.remove(sums)
  with pytest.raises(checkpointing.CheckpointMismatchError, match=r"holds no method state.*\['ewc'\]"):
    train.run(two_step_config(smoke_config, "task=19-1,method=ewc"), own)


def test_a_loss_option_added_since_a_config_was_saved_counts_at_its_default(smoke_config):
  from incseg_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = smoke_config("task=19-1,method=plop")
  saved = json.loads(config_lib.to_json(config))
  del saved["loss_options"]["pod"]["logits_weight_on_last"]  # an option of a later version
  assert workdir_lib.config_differences(config, json.dumps(saved)) == []
  config.loss_options.pod.logits_weight_on_last = True  # ... set to something else than its default
  assert workdir_lib.config_differences(config, json.dumps(saved)) == [
      "loss_options.pod.logits_weight_on_last: '<absent>' vs True"]
