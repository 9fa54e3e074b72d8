"""The real-dataset path end to end, on fake trees in the publishers' layouts.

Registry -> records built once from `manual_dir` -> encoded splits with sizes
-> plans -> a two-step run evaluated at original resolution.
"""

import json
import os

import jax
import numpy as np
import pytest

from incseg_jax import experiment
from incseg_jax import train
from incseg_jax import validate
from incseg_jax.data import pipeline
from incseg_jax.data import registry
from incseg_jax.testing import fake_cityscapes
from incseg_jax.testing import fake_voc
from tests import dataset_configs_test


@pytest.fixture(scope="module")
def voc_tree(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("voc_raw"))
  info = fake_voc.write(root)
  return root, info


def voc_config(arg, manual_dir, data_dir):
  config = dataset_configs_test.load_config("voc", arg)
  config.dataset.manual_dir = manual_dir
  config.dataset.data_dir = data_dir
  return config


def test_voc_through_the_registry(voc_tree, tmp_path, capsys):
  root, info = voc_tree
  config = voc_config("task=15-5,runlocal", root, str(tmp_path / "tfds"))
  builder, meta = registry.load(config.dataset)
  assert "building incseg_voc (aug)" in capsys.readouterr().out
  assert (meta.name, meta.num_classes, meta.void_is_zero) == ("voc", 21, False)
  assert meta.named_orders["ilt_frequency"][-1] == 5  # bottle
  train_split = pipeline.load_split(builder, "train")
  val = pipeline.load_split(builder, "val")
  assert sorted(train_split.ids) == sorted(info["ids"]["aug_train"])
  assert sorted(val.ids) == sorted(info["ids"]["val"])
  # Original sizes are stored, so evaluation pads to the largest val image.
  sizes = {i: m.shape for i, m in info["masks"].items()}
  np.testing.assert_array_equal(val.sizes, [sizes[i] for i in val.ids])
  assert tuple(pipeline.eval_shapes(val)[0]) == tuple(np.max([sizes[i] for i in val.ids], axis=0))
  # A second load reuses the records: no manual_dir needed any more.
  config.dataset.manual_dir = ""
  registry.load(config.dataset)
  assert "building" not in capsys.readouterr().out


def test_voc_without_sbd_says_so(tmp_path, capsys):
  root = str(tmp_path / "raw")
  info = fake_voc.write(root, with_sbd=False)
  config = voc_config("task=15-5", root, str(tmp_path / "tfds"))
  builder, _ = registry.load(config.dataset)
  out = capsys.readouterr().out
  assert "VOC-only" in out or "voc_only" in out
  assert sorted(pipeline.load_split(builder, "train").ids) == sorted(info["ids"]["train"])


def test_missing_manual_dir_is_an_early_clear_error(tmp_path):
  config = voc_config("task=15-5", "", str(tmp_path / "tfds"))
  with pytest.raises(FileNotFoundError, match="manual_dir"):
    experiment.build(config)
  config.dataset.manual_dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    experiment.build(config)


def test_two_step_run_on_fake_cityscapes(tmp_path):
  root = str(tmp_path / "cs")
  fake_cityscapes.write(root)
  config = dataset_configs_test.load_config("cityscapes", f"task=13-6,runlocal,manual_dir={root}")
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.dataset.void = "ignore"
  workdir = str(tmp_path / "run")
  results = train.run(config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert len(saved["steps"]) == 2 == len(results["steps"])
  assert saved["dataset"] == "cityscapes"
  assert saved["channel_names"][0] == "void" and saved["channel_names"][-1] == "bicycle"
  # void ignored: no background pixel is ever evaluated at step 0.
  assert saved["steps"][0]["metrics"]["miou_old_bg"] is None


def test_pretrained_weights_initialise_step_0(smoke_config, tmp_path, monkeypatch):
  from tests import pretrained_test  # pylint: disable=g-import-not-at-top
  sd = pretrained_test.random_state_dict(0, pretrained_test.tv_name, stage_sizes=(2, 2, 2, 2), bottleneck=False)
  path = str(tmp_path / "resnet18.npz")
  np.savez(path, **sd)
  config = smoke_config("task=19-1")
  config.model.backbone = "resnet18"
  config.pretrained = path
  exp = experiment.build(config)
  variables = train.init_student(exp, exp.step(0), None, jax.random.key(0))
  backbone = variables["params"]["backbone"]
  np.testing.assert_array_equal(backbone["stem"]["conv"]["kernel"], sd["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(backbone["stage2"]["block0"]["downsample_bn"]["scale"],
                                sd["layer2.0.downsample.1.weight"])
  np.testing.assert_array_equal(variables["batch_stats"]["backbone"]["stage4"]["block1"]["bn2"]["var"],
                                sd["layer4.1.bn2.running_var"])
  # A resume (or init_from) restores over the init: the file is not read then.
  fresh = train.init_student(exp, exp.step(0), None, jax.random.key(0), load_pretrained=False)
  assert not np.array_equal(fresh["params"]["backbone"]["stem"]["conv"]["kernel"],
                            backbone["stem"]["conv"]["kernel"])
  # A missing or mismatched file fails before any data is read.
  monkeypatch.setattr(registry, "load", lambda *a: pytest.fail("data read before the pretrained check"))
  config.pretrained = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    validate.config(config)
  config.pretrained = path
  config.model.backbone = "resnet34"
  with pytest.raises(ValueError, match="layer3.2"):
    validate.config(config)
