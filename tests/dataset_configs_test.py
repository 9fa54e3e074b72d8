"""Every scenario of both papers parses into the right plan on every real dataset.

No data is needed: plans are built from each dataset's metadata
(`registry.meta`, its module's class table) and, for frequency order, made-up
pixel counts, exactly as `experiment.plan_only` does for a real run.
"""

import importlib.util

import numpy as np
import pytest

from incseg_jax import experiment
from incseg_jax import validate
from incseg_jax.data import registry


def load_config(name, arg=""):
  spec = importlib.util.spec_from_file_location(name, f"configs/{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def plan(name, arg, counts=None):
  config = load_config(name, arg)
  meta = registry.meta(name)
  if counts is None:
    counts = np.random.default_rng(0).integers(1, 10**6, meta.num_classes)
  return experiment.plan_only(config, meta, counts), meta


# (dataset, task) -> classes learned per step (foreground; step 0 also has class 0).
SCENARIOS = {
    ("voc", "19-1"): (19, 1), ("voc", "15-5"): (15, 5), ("voc", "15-1"): (15, 1, 1, 1, 1, 1),
    ("voc", "10-10"): (10, 10), ("voc", "10-1"): (10,) + (1,) * 10, ("voc", "10-5-5"): (10, 5, 5),
    ("ade20k", "100-50"): (100, 50), ("ade20k", "100-10"): (100,) + (10,) * 5, ("ade20k", "50-50"): (50, 50, 50),
    ("cityscapes", "13-6"): (13, 6), ("cityscapes", "13-1"): (13,) + (1,) * 6,
    ("msrc", "20-1"): (19, 1), ("msrc", "15-5"): (15, 5), ("msrc", "15-1"): (15, 1, 1, 1, 1, 1),
}
SECOND_PAPER = [f"protocol=ucd,setting={s}" for s in ("overlapped", "disjoint")]
FIRST_PAPER = [f"protocol=ilt,setting=sequential,labeling={lab},order={o}"
               for lab in ("keep", "background") for o in ("dataset", "frequency")]


@pytest.mark.parametrize("dataset,task", sorted(SCENARIOS))
def test_every_scenario_of_both_papers_plans(dataset, task):
  settings = {"voc": SECOND_PAPER + FIRST_PAPER + ["protocol=ilt,setting=sequential,order=ilt_frequency"],
              "ade20k": SECOND_PAPER, "cityscapes": SECOND_PAPER, "msrc": FIRST_PAPER}[dataset]
  for setting in settings:
    p, meta = plan(dataset, f"task={task},method=ft,{setting}")
    sizes = tuple(len(step.new_classes) for step in p.steps)
    assert sizes == SCENARIOS[dataset, task], (setting, sizes)
    assert p.classes_per_step[0] == sizes[0] + 1  # step 0 also learns class 0
    learned = [c for step in p.steps for c in step.new_classes]
    assert sorted(learned) == list(range(1, meta.num_classes))


def test_protocols_set_the_papers_models():
  assert load_config("voc", "protocol=ilt").model.decoder == "deeplab_v2"
  assert load_config("voc", "").model.decoder == "deeplab_v3"
  assert load_config("msrc", "").model.decoder == "deeplab_v2"  # the first paper only
  ade = load_config("ade20k", "")
  assert (ade.schedule.base_length, ade.schedule.inc_length, ade.schedule.unit) == (60, 60, "epochs")
  assert load_config("ade20k", "protocol=ilt").schedule.unit == "steps_per_class"
  assert load_config("msrc", "").dataset.eval_split == "test"


def test_voc_published_frequency_order_adds_bottle_last():
  p, meta = plan("voc", "task=19-1,order=ilt_frequency")
  names = p.channel_names(meta.class_names)
  assert names[:4] == ["background", "person", "cat", "dog"]
  assert [meta.class_names[c] for c in p.steps[1].new_classes] == ["bottle"]
  p, _ = plan("voc", "task=10-5-5,order=ilt_frequency")  # the first paper's Table 6
  # The paper's Table 6 header: ... tv, then boat, plant, sheep, cow, bottle added last.
  assert [meta.class_names[c] for c in p.steps[2].new_classes] == ["boat", "pottedplant", "sheep", "cow", "bottle"]


def test_frequency_order_follows_training_pixel_counts():
  meta = registry.meta("voc")
  counts = np.zeros(meta.num_classes, np.int64)
  counts[1:] = np.arange(1, meta.num_classes)  # class 20 most frequent ... class 1 least
  p, _ = plan("voc", "task=19-1,order=frequency", counts)
  assert p.steps[1].new_classes == (1,)
  assert p.order[:3] == (20, 19, 18)


def test_cityscapes_13_6_adds_the_vehicles():
  p, meta = plan("cityscapes", "task=13-6")
  assert [meta.class_names[c] for c in p.steps[1].new_classes] == [
      "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def test_void_option():
  p, _ = plan("cityscapes", "task=13-6")
  assert p.steps[0].train_lut[0] == 0 and p.steps[0].eval_lut[0] == 0  # UCD: void trained as background
  config = load_config("cityscapes", "task=13-6")
  config.dataset.void = "ignore"
  p = experiment.plan_only(config, registry.meta("cityscapes"), np.ones(20))
  for step in p.steps:
    assert step.train_lut[0] == 255 and step.eval_lut[0] == 255
  # Only raw label 0 changes: a future class (car at step 0) is still background.
  assert p.steps[0].train_lut[14] == 0
  config = load_config("voc", "task=15-5")
  config.dataset.void = "ignore"
  with pytest.raises(ValueError, match="real class"):
    experiment.plan_only(config, registry.meta("voc"), np.ones(21))
  config.dataset.void = "nothing"
  with pytest.raises(ValueError, match="config.dataset.void"):
    experiment.plan_only(config, registry.meta("voc"), np.ones(21))


# Scenarios needing more classes than the dataset has, and fewer (every class must be learned).
@pytest.mark.parametrize("dataset,task,expect", [
    ("ade20k", "100-30", "150"), ("cityscapes", "15-5", "19"), ("cityscapes", "13-4", "19"), ("voc", "15-4", "20"),
    ("voc", "15-7", "20"), ("msrc", "21-1", "20")])
def test_scenario_that_does_not_fit_the_dataset(tmp_path, dataset, task, expect):
  with pytest.raises(ValueError, match=expect):
    plan(dataset, f"task={task}")
  # A run checks it before the dataset is needed: with no manual_dir and nothing built, the scenario error comes
  # first, not "dataset not built".
  config = load_config(dataset, f"task={task}")
  config.dataset.data_dir = str(tmp_path / "tfds")
  with pytest.raises(ValueError, match=expect):
    validate.config(config)
