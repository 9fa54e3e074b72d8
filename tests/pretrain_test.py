"""Tests for incseg_jax/pretrain.py, data/shapes_pretrain.py and the pretrained-file additions they use.

Every network here is tiny (width 4, one block per stage, output stride 32, a few steps on 16 images), so
the whole module runs in seconds; the real build's length and metric are in the pretrain module doc.
"""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from incseg_jax import pretrain
from incseg_jax.data import shapes_pretrain as sp
from incseg_jax.models import build_model, init_variables, pretrained, resnet_names, weight_files

TINY = dict(width=4, blocks=(1, 1, 1, 1), output_stride=32, steps=3, batch_size=8, train_images=16,
            heldout_images=16, log_every=1)


def model_cfg(**kw):
  """`config.model` of a shapes run with the tiny backbone."""
  cfg = ml_collections.ConfigDict({
    "backbone": "resnet_small", "decoder": "deeplab_v3", "output_stride": 8, "aspp_channels": 8,
    "atrous_rates": (1, 2, 3), "small_width": 4, "small_blocks": (1, 1, 1, 1), "bn_frozen": False,
    "activation": "relu"})
  cfg.update(kw)
  return cfg


def seg_model(cfg):
  """The segmentation model of `cfg` (3 classes: only its backbone matters here)."""
  return build_model(cfg, (3,))


def backbone_of(variables):
  return {c: variables[c]["backbone"] for c in ("params", "batch_stats")}


def assert_trees_identical(a, b):
  """Same structure, dtypes and bits."""
  flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
  flat_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
  assert tree_a == tree_b
  for (path, x), (_, y) in zip(flat_a, flat_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype, path
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Three tiny builds: seed 0 twice, seed 1 once."""
  d = tmp_path_factory.mktemp("pretrain")
  paths = {name: str(d / f"{name}.npz") for name in ("a", "b", "c")}
  records = {name: pretrain.build(path, pretrain.Settings(**TINY, seed=int(name == "c")), log=None)
             for name, path in paths.items()}
  return paths, records


# ---------------------------------------------------------------------------
# The pretraining set.

def test_labels_of_hand_checked_examples():
  # Drawn and looked at (VERSION 1.0.0; a change of what an index draws needs a new VERSION): a beige
  # ring, a teal diamond and a magenta square; a dotted beige pentagon and a striped yellow square.
  ex = sp.generate_example("train", 0)
  assert [(o["shape"], o["colour"], o["fill"]) for o in ex["objects"]] == [
    ("ring", "beige", "plain"), ("diamond", "teal", "plain"), ("square", "magenta", "gradient")]
  assert {sp.SHAPES[i] for i in np.flatnonzero(ex["shapes"])} == {"ring", "diamond", "square"}
  assert {sp.COLOUR_NAMES[i] for i in np.flatnonzero(ex["colours"])} == {"beige", "teal", "magenta"}
  ex = sp.generate_example("train", 1)
  assert [(o["shape"], o["colour"], o["fill"]) for o in ex["objects"]] == [
    ("pentagon", "beige", "dots"), ("square", "yellow", "stripes")]
  assert ex["shapes"].sum() == 2 and ex["colours"].sum() == 2
  # A hidden object is not labelled, and two objects of one colour give one colour label.
  objects = [{"shape": "heart", "colour": "red", "visible": sp.MIN_VISIBLE_PIXELS - 1},
             {"shape": "arrow", "colour": "blue", "visible": 300},
             {"shape": "star", "colour": "blue", "visible": sp.MIN_VISIBLE_PIXELS}]
  shape_t, colour_t = sp.labels_of(objects)
  assert shape_t.dtype == colour_t.dtype == np.float32
  assert {sp.SHAPES[i] for i in np.flatnonzero(shape_t)} == {"arrow", "star"}
  assert {sp.COLOUR_NAMES[i] for i in np.flatnonzero(colour_t)} == {"blue"}


def test_labels_agree_with_the_drawn_pixels():
  names = list(sp.COLOUR_NAMES)
  palette = np.array([sp.COLOURS[n] for n in names], np.float64)
  plain = 0
  for i in range(40):
    ex = sp.generate_example("heldout", i)
    assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
    assert 1 <= len(ex["objects"]) <= 3
    counts = np.bincount(ex["owner"].ravel(), minlength=len(ex["objects"]) + 1)
    assert counts[1:].tolist() == [o["visible"] for o in ex["objects"]]
    np.testing.assert_array_equal(ex["shapes"], sp.labels_of(ex["objects"])[0])
    np.testing.assert_array_equal(ex["colours"], sp.labels_of(ex["objects"])[1])
    for k, obj in enumerate(ex["objects"], start=1):
      if obj["fill"] == "plain":  # Shading, brightness and noise keep it nearest to its own colour.
        median = np.median(ex["image"][ex["owner"] == k].astype(np.float64), axis=0)
        assert names[int(np.argmin(((palette - median) ** 2).sum(axis=1)))] == obj["colour"], (i, obj)
        plain += 1
  assert plain >= 10
  again = sp.generate_example("heldout", 3)
  np.testing.assert_array_equal(again["image"], sp.generate_example("heldout", 3)["image"])
  assert not np.array_equal(again["image"], sp.generate_example("train", 3)["image"])


def test_vocabulary_includes_the_benchmark_and_new_shapes_are_drawn_right():
  from incseg_jax.data import shapes  # pylint: disable=g-import-not-at-top
  assert set(shapes._SIZE_RANGE) < set(sp.SHAPES) and set(shapes.COLOURS) < set(sp.COLOURS)
  r = 10.0
  inside = lambda shape, u, v: bool(sp.shape_mask(shape, np.array([u * r]), np.array([v * r]), r)[0])
  # (u, v) in units of r, v pointing down: hand-placed points inside and outside each new shape.
  cases = {
    "pentagon": ([(0, 0), (0, -0.95)], [(0, 0.85), (0.9, 0.5)]),  # vertex up, flat bottom at 0.81 r
    "hexagon": ([(0, 0), (0.85, 0), (0, -0.95)], [(0.9, 0), (0.7, -0.7)]),  # vertical sides at 0.87 r
    "heart": ([(0, 0), (-0.5, -0.85), (0.5, -0.85), (0, 0.8)], [(0, -0.85), (0.9, 0.6)]),  # notch on top
    "arrow": ([(-0.9, 0), (0.9, 0), (0.2, 0.5)], [(-0.9, 0.4), (0.9, 0.3)]),  # pointing right
    "crescent": ([(-0.9, 0), (0.3, -0.85)], [(0, 0), (0.5, 0)]),  # the bite is on the right
    "lshape": ([(-0.4, -0.7), (0.4, 0.6)], [(0.4, -0.7), (0, 0)]),
  }
  for shape, (ins, outs) in cases.items():
    for u, v in ins:
      assert inside(shape, u, v), (shape, u, v)
    for u, v in outs:
      assert not inside(shape, u, v), (shape, u, v)


# ---------------------------------------------------------------------------
# Training and the written file.

def test_average_precision_hand_computed():
  scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
  targets = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], np.float64)
  ap = pretrain.average_precision(scores, targets)
  np.testing.assert_allclose(ap[0], (1 / 1 + 2 / 3) / 2)
  assert np.isnan(ap[1])  # no positive


def test_heads_loss_decreases():
  settings = pretrain.Settings(**{**TINY, "steps": 12, "lr": 0.05})
  _, losses = pretrain.train(settings, log=None)
  assert len(losses) == 12 and all(np.isfinite(losses).ravel())
  first, last = losses[0][0], np.mean([l[0] for l in losses[-3:]])
  assert last < 0.8 * first, (first, last)


def test_same_seed_same_file_other_seed_other_file(built):
  paths, records = built
  a, b, c = (weight_files.load_state_dict(paths[n]) for n in "abc")
  assert a.keys() == b.keys() == c.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert any(not np.array_equal(a[k], c[k]) for k in a)
  strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}
  assert strip(records["a"]) == strip(records["b"]) != strip(records["c"])
  with open(pretrained.sidecar_path(paths["a"])) as f:
    record = json.load(f)
  assert record == json.loads(json.dumps(records["a"]))
  assert record["source"] == "incseg_jax.pretrain" and record["backbone"] == "resnet_small"
  assert (record["width"], record["blocks"], record["seed"], record["steps"]) == (4, [1, 1, 1, 1], 0, 3)
  assert (record["pretrain_set"], record["pretrain_set_version"]) == (sp.NAME, sp.VERSION)
  assert set(record["heldout"]) >= {"map", "shape_map", "colour_map"}


def test_file_is_the_torchvision_layout_of_the_backbone(built):
  paths, _ = built
  sd = weight_files.load_state_dict(paths["a"])
  assert resnet_names.detect_layout(sd) == "torchvision"
  assert sd["conv1.weight"].shape == (4, 3, 3, 3)  # OIHW, 3x3 stem
  assert sd["layer2.0.downsample.0.weight"].shape == (8, 4, 1, 1)
  assert sd["layer4.0.conv2.weight"].shape == (32, 32, 3, 3)
  assert not any(k.startswith(("fc.", "shape_head", "colour_head")) for k in sd)
  assert all(v.dtype == np.float32 for v in sd.values())


def test_export_then_import_is_bit_exact(tmp_path):
  settings = pretrain.Settings(**TINY)
  variables = jax.device_get(pretrain.init_variables(settings))
  # Running statistics away from their 0 / 1 initial values, so that a swap would show.
  rng = np.random.default_rng(0)
  variables["batch_stats"] = jax.tree_util.tree_map(
    lambda x: rng.uniform(0.5, 2.0, x.shape).astype(x.dtype), variables["batch_stats"])
  backbone = backbone_of(variables)
  path = str(tmp_path / "w.npz")
  weight_files.save_state_dict(resnet_names.export_backbone(backbone), path)
  cfg = model_cfg()
  seg = init_variables(seg_model(cfg), jax.random.key(1), 64)
  loaded = pretrained.load_into(seg, path, cfg)
  assert_trees_identical(backbone_of(loaded), backbone)
  pretrained.validate(path, cfg)  # No sidecar: checked as any torchvision file.
  with pytest.raises(ValueError, match="torchvision layout only"):
    resnet_names.export_backbone(backbone, layout="iabn")


def test_resnet_small_takes_torchvision_files_only(built):
  paths, _ = built
  abstract = jax.eval_shape(lambda: backbone_of(pretrain.init_variables(pretrain.Settings(**TINY))))
  sd = weight_files.load_state_dict(paths["a"])
  resnet_names.check_fit(sd, abstract, arch="resnet_small", layout=None, source="f")
  iabn = {"mod1.conv1.weight": sd["conv1.weight"], "mod2.block1.convs.conv1.weight": sd["layer1.0.conv1.weight"]}
  with pytest.raises(ValueError, match=r"'resnet_small' takes only torchvision-layout weights.*f has the iabn "):
    resnet_names.check_fit(iabn, abstract, arch="resnet_small", layout=None, source="f")


# ---------------------------------------------------------------------------
# The sidecar against the config.

def test_sidecar_mismatch_names_the_field(built, tmp_path):
  paths, _ = built
  path = paths["a"]
  pretrained.validate(path, model_cfg())  # The matching config passes.
  with pytest.raises(ValueError, match=r"was made for model\.small_width=4, this run has 8; rebuild it with "
                     r"python -m incseg_jax\.pretrain --out=\S+ --width=8 --blocks=1,1,1,1 or point"):
    pretrained.validate(path, model_cfg(small_width=8))
  with pytest.raises(ValueError, match=r"model\.small_blocks=\(1, 1, 1, 1\), this run has \(2, 1, 1, 1\)"):
    pretrained.validate(path, model_cfg(small_blocks=(2, 1, 1, 1)))
  with pytest.raises(ValueError, match=r"model\.backbone='resnet_small', this run has 'resnet18'.*resnet_small "
                     "backbones only"):
    pretrained.validate(path, model_cfg(backbone="resnet18"))
  seg = init_variables(seg_model(model_cfg(small_width=8)), jax.random.key(0), 64)
  with pytest.raises(ValueError, match=r"model\.small_width=4, this run has 8"):
    pretrained.load_into(seg, path, model_cfg(small_width=8))  # load_into checks it too
  # Another pretraining-set version; both differences named in one message.
  other = str(tmp_path / "old.npz")
  shutil.copy(path, other)
  with open(pretrained.sidecar_path(path)) as f:
    record = json.load(f)
  with open(pretrained.sidecar_path(other), "w") as f:
    json.dump({**record, "pretrain_set_version": "0.9.0"}, f)
  with pytest.raises(ValueError, match=r"model\.small_width=4, this run has 8, and for pretraining set "
                     rf"shapes_pretrain 0\.9\.0, this code draws shapes_pretrain {sp.VERSION}"):
    pretrained.validate(other, model_cfg(small_width=8))
  # A sidecar that is not ours is ignored: the shapes decide, as for any file.
  with open(pretrained.sidecar_path(other), "w") as f:
    json.dump({"source": "somebody else", "width": 99}, f)
  pretrained.validate(other, model_cfg())
  # Without a sidecar, as before: the shape check lists the mismatches.
  os.remove(pretrained.sidecar_path(other))
  with pytest.raises(ValueError, match=r"(?s)does not fit the 'resnet_small' backbone.*60 shape mismatches"):
    pretrained.validate(other, model_cfg(small_width=8))
  with open(pretrained.sidecar_path(other), "w") as f:
    f.write("{not json")
  with pytest.raises(ValueError, match=r"cannot read .*old\.npz\.json"):
    pretrained.validate(other, model_cfg())


# ---------------------------------------------------------------------------
# config.pretrained = "shapes_builtin".

def test_builtin_is_built_once_and_says_so(tmp_path, capsys, monkeypatch):
  cfg = model_cfg()
  tiny = {k: v for k, v in TINY.items() if k not in ("width", "blocks")}
  target = pretrained.builtin_path(cfg, str(tmp_path))
  assert target == str(tmp_path / "shapes_pretrain" / sp.VERSION / "resnet_small_w4_b1-1-1-1_seed0.npz")
  monkeypatch.setenv("INCSEG_DATA_DIR", str(tmp_path / "env"))
  assert pretrained.builtin_path(cfg, "").startswith(str(tmp_path / "env" / "shapes_pretrain"))
  assert pretrained.resolve("/some/file.npz", cfg, str(tmp_path)) == "/some/file.npz"

  assert pretrained.resolve(pretrained.BUILTIN, cfg, str(tmp_path), **tiny) == target
  out = capsys.readouterr().out
  assert out.count("building the shapes_builtin pretrained backbone") == 1 and f"built {target} in" in out
  record = pretrained.read_sidecar(target)
  assert (record["width"], record["steps"], record["seed"]) == (4, TINY["steps"], 0)
  stamp = os.stat(target).st_mtime_ns
  # Cached: no second build (a build would need the tiny overrides to be this fast), no output.
  assert pretrained.resolve(pretrained.BUILTIN, cfg, str(tmp_path)) == target
  pretrained.validate(pretrained.BUILTIN, cfg, str(tmp_path))
  seg = init_variables(seg_model(cfg), jax.random.key(0), 64)
  loaded = pretrained.load_into(seg, pretrained.BUILTIN, cfg, str(tmp_path))
  np.testing.assert_array_equal(loaded["params"]["backbone"]["stem"]["conv"]["kernel"],
                                weight_files.load_state_dict(target)["conv1.weight"].transpose(2, 3, 1, 0))
  assert capsys.readouterr().out == "" and os.stat(target).st_mtime_ns == stamp


def test_builtin_never_falls_back_to_random_weights(tmp_path, monkeypatch):
  cfg = model_cfg(small_width=6)

  def fail(*args, **kwargs):
    raise ValueError("the build failed")

  monkeypatch.setattr(pretrain, "build", fail)
  with pytest.raises(ValueError, match="the build failed"):
    pretrained.validate(pretrained.BUILTIN, cfg, str(tmp_path))
  assert not os.path.exists(pretrained.builtin_path(cfg, str(tmp_path)))
  with pytest.raises(ValueError, match=r"resnet_small backbone .* model\.backbone='resnet50'"):
    pretrained.resolve(pretrained.BUILTIN, model_cfg(backbone="resnet50"), str(tmp_path))
  with pytest.raises(ValueError, match=r"needs --config\.model\.activation=relu"):
    pretrained.resolve(pretrained.BUILTIN, model_cfg(activation="leaky_relu"), str(tmp_path))


def test_inputs_are_normalised_as_the_benchmark_does():
  from incseg_jax import config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  assert tuple(c.input.mean) == pretrain.MEAN and tuple(c.input.std) == pretrain.STD
  image = np.full((1, 2, 2, 3), 255, np.uint8)
  np.testing.assert_allclose(pretrain.normalise(image)[0, 0, 0],
                             (1.0 - np.array(pretrain.MEAN)) / np.array(pretrain.STD), rtol=1e-6)


def test_settings_and_blocks_are_checked():
  assert pretrain.parse_blocks("1,2,1,1") == pretrain.parse_blocks("1-2-1-1") == (1, 2, 1, 1)
  for bad in ("1,1,1", "1,0,1,1", "a,b,c,d"):
    with pytest.raises(ValueError, match="--blocks"):
      pretrain.parse_blocks(bad)
  with pytest.raises(ValueError, match="output_stride=4"):
    pretrain.check_settings(pretrain.Settings(output_stride=4))
  with pytest.raises(ValueError, match="smaller than batch_size"):
    pretrain.check_settings(pretrain.Settings(train_images=8, batch_size=16))
  with pytest.raises(ValueError, match="output extension"):
    pretrain.build("/tmp/x.pth", pretrain.Settings(**TINY))
