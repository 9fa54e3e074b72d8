"""Tests of incseg_jax.plot (the PNG plots) and of the TensorBoard images a run writes (config.tb_images).

Hand-made results.json files cover the aggregation and the file handling; one
real seconds-long run (module-scoped) covers what needs a model: the heat
map's numbers, the prediction grid against the restored model, and the
TensorBoard images.
"""

import glob
import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from incseg_jax import config_lib
from incseg_jax import evaluate
from incseg_jax import evaluation
from incseg_jax import experiment as experiment_lib
from incseg_jax import plot
from incseg_jax import sharding
from incseg_jax import train
from incseg_jax import workdir as workdir_lib
from incseg_jax.data import pipeline

TB_IMAGES = 2

# ----------------------------------------------------------------------------------------
# Hand-made runs: scenario "2-1-1" of 4 classes, results.json in reporting.results' format.
# ----------------------------------------------------------------------------------------

NAMES = ["background", "c1", "c2", "c3", "c4"]
STEP_CLASSES = [["c1", "c2"], ["c3"], ["c4"]]


def fake_results(method, scores, task="2-1-1", ious=None):
  """results.json of a 3-step run whose step k has (miou_old, miou_new, miou) = scores[k]."""
  steps = []
  for k, (old, new, all_) in enumerate(scores):
    seen = [c for group in STEP_CLASSES[:k + 1] for c in group]
    channels = 1 + len(seen)
    iou = ious[k] if ious else [0.9] + [0.5] * len(seen)
    metrics = {"miou": all_, "miou_old": old, "miou_new": new, "miou_old_bg": None, "miou_fg": None,
               "pixel_acc": 0.9, "mean_class_acc": 0.5, "iou": iou, "acc": iou, "present": [True] * channels,
               "num_pixels": 100, "num_classes": channels, "class_names": NAMES[:channels]}
    old_classes = [c for group in STEP_CLASSES[:k] for c in group]
    steps.append({"task_step": k, "new_classes": STEP_CLASSES[k], "old_classes": old_classes,
                  "new_channels": [NAMES.index(c) for c in STEP_CLASSES[k]],
                  "old_channels": [NAMES.index(c) for c in old_classes], "num_train_images": 10,
                  "num_train_steps": 5, "seconds": 1.0, "skipped_batches": 0, "metrics": metrics})
  return {"dataset": "shapes", "task": task, "setting": "overlapped", "labeling": None, "method": method,
          "class_order": NAMES[1:], "channel_names": NAMES, "steps": steps, "summary": {}}


def fake_joint(ious):
  """results.json of a joint run (one step, every class) with these per-class IoUs."""
  metrics = {"miou": float(np.mean(ious)), "miou_old": None, "miou_new": float(np.mean(ious[1:])),
             "iou": ious, "acc": ious, "present": [True] * len(NAMES), "class_names": NAMES}
  return {"dataset": "shapes", "task": "joint", "setting": "overlapped", "labeling": None, "method": "joint",
          "class_order": NAMES[1:], "channel_names": NAMES,
          "steps": [{"task_step": 0, "new_classes": NAMES[1:], "old_classes": [], "new_channels": [1, 2, 3, 4],
                     "old_channels": [], "metrics": metrics}]}


def write_run(path, method, seed, results=None):
  """A run directory: config.json (method, seed) and, if given, results.json."""
  os.makedirs(path, exist_ok=True)
  config = config_lib.base_config()
  config.method, config.seed = method, seed
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  if results is not None:
    with open(os.path.join(path, "results.json"), "w") as f:
      json.dump(results, f)
  return str(path)


# Method a over seeds 0, 1, 2 and method b over seeds 3, 5 (old, new, all per step); None: not scored.
A = {0: [(None, 0.50, 0.60), (0.40, 0.30, 0.50), (0.20, 0.10, 0.30)],
     1: [(None, 0.70, 0.80), (0.20, 0.50, 0.30), (0.10, None, 0.20)],
     2: [(None, 0.60, 0.70), (0.30, 0.10, 0.40), (0.30, 0.40, 0.10)]}
B = {5: [(None, 0.90, 0.90), (0.80, 0.80, 0.80), (0.70, 0.70, 0.70)],
     3: [(None, 0.10, 0.10), (0.20, 0.20, 0.20), (0.30, 0.30, 0.30)]}


def fake_runs():
  runs = [plot.Run(f"/a{s}", "a", s, fake_results("a", v)) for s, v in A.items()]
  return runs + [plot.Run(f"/b{s}", "b", s, fake_results("b", v)) for s, v in B.items()]


def test_seed_bands_aggregate_each_methods_own_seeds():
  bands = {b.method: b for b in plot.seed_bands(fake_runs())}
  assert list(bands) == ["a", "b"]
  a, b = bands["a"], bands["b"]
  assert a.seeds == (0, 1, 2) and a.paths == ("/a0", "/a1", "/a2") and not a.joint
  assert b.seeds == (3, 5) and b.paths == ("/b3", "/b5")  # sorted by seed, whatever the order given
  np.testing.assert_allclose(a.mean["miou"], [0.7, 0.4, 0.2])
  np.testing.assert_allclose(a.low["miou"], [0.6, 0.3, 0.1])
  np.testing.assert_allclose(a.high["miou"], [0.8, 0.5, 0.3])
  np.testing.assert_allclose(a.std["miou"], [0.1, 0.1, 0.1])
  np.testing.assert_allclose(a.per_seed["miou_new"], [[0.5, 0.3, 0.1], [0.7, 0.5, np.nan], [0.6, 0.1, 0.4]])
  # A seed without a value (None) is left out of that step only.
  np.testing.assert_allclose(a.mean["miou_new"], [0.6, 0.3, 0.25])
  np.testing.assert_allclose(a.low["miou_new"], [0.5, 0.1, 0.1])
  # No old classes at step 0: no value, no warning.
  assert np.isnan(a.mean["miou_old"][0]) and np.isnan(a.low["miou_old"][0]) and np.isnan(b.std["miou_old"][0])
  np.testing.assert_allclose(a.mean["miou_old"][1:], [0.3, 0.2])
  np.testing.assert_allclose(b.mean["miou_old"][1:], [0.5, 0.5])
  np.testing.assert_allclose(b.low["miou_new"], [0.1, 0.2, 0.3])
  np.testing.assert_allclose(b.high["miou_new"], [0.9, 0.8, 0.7])
  np.testing.assert_allclose(b.std["miou"], [math.sqrt(0.32), math.sqrt(0.18), math.sqrt(0.08)])
  single = plot.seed_bands([plot.Run("/a0", "a", 0, fake_results("a", A[0]))])[0]
  assert np.isnan(single.std["miou"]).all()  # one seed: no spread
  np.testing.assert_allclose(single.low["miou"], single.high["miou"])


def test_joint_runs_are_scored_on_each_steps_classes():
  ious = [0.9, 0.8, 0.6, 0.4, 0.2]  # background, c1..c4
  runs = fake_runs() + [plot.Run("/joint", "joint", 0, fake_joint(ious))]
  joint = [b for b in plot.seed_bands(runs) if b.joint]
  assert len(joint) == 1 and joint[0].method == "joint" and joint[0].paths == ("/joint",)
  np.testing.assert_allclose(joint[0].mean["miou_old"], [np.nan, 0.7, 0.6])  # {c1, c2}, then {c1, c2, c3}
  np.testing.assert_allclose(joint[0].mean["miou_new"], [0.7, 0.4, 0.2])
  np.testing.assert_allclose(joint[0].mean["miou"], [np.mean(ious[:3]), np.mean(ious[:4]), np.mean(ious)])
  assert plot.seed_bands([plot.Run("/joint", "joint", 0, fake_joint(ious))]) == []  # nothing to score it on


def fake_sweep(root):
  for seed, scores in A.items():
    write_run(root / "a" / f"seed_{seed}", "a", seed, fake_results("a", scores))
  for seed, scores in B.items():
    write_run(root / "b" / f"seed_{seed}", "b", seed, fake_results("b", scores))
  write_run(root / "b" / "seed_7", "b", 7)  # unfinished: no results.json


def test_write_sweep_writes_pngs_from_the_finished_runs(tmp_path, capsys):
  sweep = tmp_path / "sweep"
  fake_sweep(sweep)
  runs = plot.find_runs([str(sweep)])
  assert runs == [str(sweep / "a" / f"seed_{s}") for s in (0, 1, 2)] + [str(sweep / "b" / f"seed_{s}") for s in (3, 5)]
  assert "skipping" in capsys.readouterr().out and "seed_7" not in "".join(runs)
  bands = {b.method: b for b in plot.seed_bands([plot.load_run(r) for r in runs])}
  assert bands["b"].paths == (str(sweep / "b" / "seed_3"), str(sweep / "b" / "seed_5"))
  np.testing.assert_allclose(bands["b"].mean["miou"], [0.5, 0.5, 0.5])

  written = plot.write_sweep(str(sweep))
  out = sweep / "plots"
  expected = ["miou_per_step.png"] + [f"a_seed{s}_iou.png" for s in (0, 1, 2)] + [f"b_seed{s}_iou.png" for s in (3, 5)]
  assert written == [str(out / name) for name in expected]
  assert sorted(os.listdir(out)) == sorted(expected)  # no temporary file left behind
  for path in written:
    with Image.open(path) as image:
      assert image.format == "PNG"
      width, height = image.size
    assert 400 <= width <= 3000 and 250 <= height <= 3000, (path, image.size)
  with Image.open(out / "miou_per_step.png") as image:
    assert image.size[0] > 2 * image.size[1]  # three panels side by side


def test_write_runs_with_a_joint_run_and_its_errors(tmp_path):
  a0 = write_run(tmp_path / "a0", "a", 0, fake_results("a", A[0]))
  joint = write_run(tmp_path / "joint", "joint", 0, fake_joint([0.9, 0.8, 0.6, 0.4, 0.2]))
  written = plot.write_runs([a0, joint], str(tmp_path / "out"))
  assert [os.path.basename(p) for p in written] == ["miou_per_step.png", "a_seed0_iou.png", "joint_seed0_iou.png"]

  other = write_run(tmp_path / "other", "b", 0, fake_results("b", B[3], task="3-1"))
  with pytest.raises(ValueError, match="not one scenario"):
    plot.write_runs([a0, other], str(tmp_path / "out2"))
  twin = write_run(tmp_path / "twin", "a", 0, fake_results("a", A[1]))
  with pytest.raises(ValueError, match=r"a0 and .*twin are both method a seed 0"):
    plot.write_runs([a0, twin], str(tmp_path / "out2"))
  unfinished = write_run(tmp_path / "unfinished", "a", 1)
  with pytest.raises(ValueError, match=r"unfinished/results.json not found"):
    plot.write_runs([unfinished], str(tmp_path / "out2"))
  with pytest.raises(ValueError, match="images=-1"):
    plot.write_runs([a0], str(tmp_path / "out2"), images=-1)
  assert not os.path.exists(tmp_path / "out2")  # refused before anything is written
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match=r"file is an existing file"):
    plot.write_runs([a0], str(tmp_path / "file"))
  with pytest.raises(ValueError, match="neither a run directory .* nor a sweep directory"):
    plot.find_runs([str(tmp_path / "out")])
  with pytest.raises(ValueError, match="not a directory"):
    plot.find_runs([str(tmp_path / "missing")])


def test_iou_matrix_of_hand_made_results():
  ious = [[0.9, 0.5, None], [0.8, 0.1, 0.2, 0.7], [0.7, 0.0, 0.1, 0.3, 0.6]]
  names, matrix = plot.iou_matrix(fake_results("a", A[0], ious=ious))
  assert names == NAMES
  expected = np.full((5, 3), np.nan)
  for k, column in enumerate(ious):
    expected[:len(column), k] = [np.nan if v is None else v for v in column]
  np.testing.assert_array_equal(matrix, expected)


def test_colourise_uses_the_palette_and_marks_void():
  palette = np.asarray([[0, 0, 0], [10, 20, 30], [40, 50, 60]], np.uint8)
  out = evaluation.colourise(np.asarray([[0, 1], [2, 255]], np.uint8), palette)
  np.testing.assert_array_equal(out, [[[0, 0, 0], [10, 20, 30]], [[40, 50, 60], list(evaluation.IGNORE_COLOUR)]])
  # Channel 1 of a plan whose order starts with class 2.
  np.testing.assert_array_equal(evaluation.prediction_colours(np.asarray([[1, 0]]), np.asarray([0, 2, 1]), palette),
                                [[[40, 50, 60], [0, 0, 0]]])


def test_fixed_images_of_different_sizes_are_the_evaluation_input():
  rng = np.random.default_rng(0)
  shapes = [(5, 7), (9, 4), (6, 6)]
  rgb = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
  labels = [rng.integers(0, 3, (h, w, 1), dtype=np.uint8) for h, w in shapes]
  png = lambda x: tf.io.encode_png(x).numpy()
  split = pipeline.EncodedSplit(images=np.asarray([png(x) for x in rgb], object),
                                labels=np.asarray([png(x) for x in labels], object), classes=[np.asarray([1])] * 3,
                                pixel_counts=None, ids=["a", "b", "c"], sizes=np.asarray(shapes))
  input_cfg = config_lib.base_config().input
  shown = evaluation.fixed_images(split, 2, input_cfg)
  assert shown.ids == ["a", "b"] and len(shown) == 2
  for i in range(2):
    np.testing.assert_array_equal(shown.rgb[i], rgb[i])
    np.testing.assert_array_equal(shown.labels[i], labels[i][..., 0])
  first_two = pipeline.EncodedSplit(images=split.images[:2], labels=split.labels[:2], classes=split.classes[:2],
                                    pixel_counts=None, ids=split.ids[:2], sizes=split.sizes[:2])
  batch = next(pipeline.eval_batches(first_two, np.arange(256, dtype=np.uint8), input_cfg, batch_size=2,
                                     ignore_label=255))
  assert shown.images.shape == (2, 9, 7, 3)  # padded to the largest of the images shown
  np.testing.assert_array_equal(shown.images, batch["image"])
  np.testing.assert_array_equal(shown.valid, batch["valid"])
  assert len(evaluation.fixed_images(split, 10, input_cfg)) == 3  # no more than the split holds
  with pytest.raises(ValueError, match="n=0"):
    evaluation.fixed_images(split, 0, input_cfg)


def test_tb_images_field(tmp_path):
  config = config_lib.base_config()
  assert evaluation.tb_image_count(config) == 4
  del config["tb_images"]
  assert evaluation.tb_image_count(config) == 0  # a config saved before the field existed: off
  for bad in (-1, True, "4", 1.5):
    config = ml_collections.ConfigDict({"tb_images": bad})  # as a hand-edited config.json could hold
    with pytest.raises(ValueError, match=r"config.tb_images=.*expected a non-negative integer"):
      evaluation.tb_image_count(config)
  # Only TensorBoard output: a workdir saved without the field, or with another value, is the same experiment.
  saved = json.loads(config_lib.to_json(config_lib.base_config()))
  del saved["tb_images"]
  now = config_lib.base_config()
  now.tb_images = 0
  assert workdir_lib.config_differences(now, json.dumps(saved)) == []


def test_bad_tb_images_is_refused_before_anything_is_written(smoke_config, tmp_path):
  config = smoke_config("task=19-1")
  config.tb_images = -2
  with pytest.raises(ValueError, match="config.tb_images=-2"):
    train.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


# ----------------------------------------------------------------------------------------
# One real run: runlocal 15-5 on the tiny shapes build (2 task steps), TensorBoard images on.
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(shapes_data_dir, tmp_path_factory):
  """(workdir, results) of a seconds-long two-step run (conftest's smoke_config is per test, so loaded here)."""
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "shapes.py")
  spec = importlib.util.spec_from_file_location("shapes_config_plot", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("task=15-5,method=ft,runlocal")
  config.dataset.data_dir = shapes_data_dir
  config.tb_images = TB_IMAGES
  workdir = str(tmp_path_factory.mktemp("plot") / "run")
  return workdir, train.run(config, workdir)


def test_heat_map_matrix_equals_the_runs_per_class_iou(tiny_run):
  workdir, res = tiny_run
  run = plot.load_run(workdir)
  names, matrix = plot.iou_matrix(run.results)
  assert names == res["channel_names"] and matrix.shape == (21, 2)
  for k, step in enumerate(res["steps"]):
    iou = step["metrics"]["iou"]
    assert len(iou) == (16 if k == 0 else 21)
    for c in range(21):
      value = iou[c] if c < len(iou) else None
      if value is None:
        assert np.isnan(matrix[c, k])
      else:
        assert matrix[c, k] == value


def _restored(workdir, k):
  config = workdir_lib.read_config(workdir)
  exp = experiment_lib.build(config)
  mesh = sharding.make_mesh()
  return exp, workdir_lib.restore_step(exp, workdir, k, mesh), mesh


def _eval_input(exp, n):
  """The first `n` images of the eval split as the evaluation pipeline gives them, labels left raw."""
  identity = np.arange(256, dtype=np.uint8)
  batch = next(pipeline.eval_batches(exp.eval_split, identity, exp.config.input, batch_size=exp.config.eval_batch_size,
                                     ignore_label=exp.plan.ignore_label))
  return batch["image"][:n], batch["label"][:n]


def test_prediction_grid_equals_the_restored_models_argmax(tiny_run):
  workdir, _ = tiny_run
  grid = plot.prediction_grid(workdir, TB_IMAGES)
  assert grid.steps == [0, 1] and len(grid.ids) == TB_IMAGES and len(grid.preds) == 2
  assert grid.step_labels == ["step 0: +15 classes", "step 1: +5 classes"]
  exp, variables, _ = _restored(workdir, 1)
  images, labels = _eval_input(exp, TB_IMAGES)
  shown = evaluation.fixed_images(exp.eval_split, TB_IMAGES, exp.config.input)
  np.testing.assert_array_equal(shown.images, images)  # the very input evaluation gives the model
  assert shown.valid is None  # fixed-size data: no padding mask, as in evaluation
  logits = jax.jit(lambda v, x: exp.step(1).model.apply(v, x, train=False)["logits"])(variables, images)
  pred = np.asarray(jnp.argmax(logits, axis=-1))
  assert len(np.unique(pred[0])) > 1  # something besides background to compare
  palette = exp.meta.palette
  expected = palette[np.asarray([0] + list(exp.plan.order))[pred[0]]]
  np.testing.assert_array_equal(grid.preds[1][0], expected)
  np.testing.assert_array_equal(grid.channels[1][0], pred[0])
  truth = np.where((labels[0] < len(palette))[..., None], palette[np.minimum(labels[0], len(palette) - 1)],
                   np.asarray(evaluation.IGNORE_COLOUR, np.uint8))
  np.testing.assert_array_equal(grid.truth[0], truth)
  assert (labels[0] == exp.plan.ignore_label).any()  # shapes' void borders: the void colour is exercised
  legend = dict(grid.legend)
  assert legend["void"] == evaluation.IGNORE_COLOUR and legend["background"] == (0, 0, 0)


def test_image_summaries_leave_the_variables_unchanged(tiny_run):
  workdir, _ = tiny_run
  exp, variables, mesh = _restored(workdir, 1)
  before = jax.tree.map(np.array, jax.device_get(variables))
  shown = evaluation.fixed_images(exp.eval_split, TB_IMAGES, exp.config.input)
  evaluation.image_summaries(exp, exp.step(1), variables, shown, mesh)
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(variables))


def test_run_metrics_are_reproduced_without_images(tiny_run):
  workdir, res = tiny_run
  # evaluate.py draws no image: the step's metrics with TensorBoard images on are the plain evaluation's.
  assert evaluate.evaluate(workdir, 1)["metrics"] == res["steps"][1]["metrics"]


def _tb_images(workdir):
  """{(step, tag): decoded uint8 image} of the image summaries in the run's event files."""
  out = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "images":
          blobs = tf.make_ndarray(value.tensor)  # [width, height, png, ...]
          out[(event.step, value.tag)] = tf.io.decode_png(blobs[2]).numpy()
  return out


def test_tensorboard_images_at_each_steps_evaluation(tiny_run):
  workdir, res = tiny_run
  images = _tb_images(workdir)
  steps = np.cumsum([s["num_train_steps"] for s in res["steps"]]).tolist()  # each step's eval is logged there
  assert sorted(images) == sorted((s, f"eval_images/{i}") for s in steps for i in range(TB_IMAGES))
  grid = plot.prediction_grid(workdir, TB_IMAGES)
  gap = 2
  for k, step in enumerate(steps):
    for i in range(TB_IMAGES):
      image = images[(step, f"eval_images/{i}")]
      h, w, _ = grid.rgb[i].shape
      assert image.shape == (h, 3 * w + 2 * gap, 3)
      np.testing.assert_array_equal(image[:, :w], grid.rgb[i])
      np.testing.assert_array_equal(image[:, w + gap:2 * w + gap], grid.truth[i])
      # What training showed is what the restored checkpoint predicts.
      np.testing.assert_array_equal(image[:, 2 * (w + gap):], grid.preds[k][i])


def test_write_runs_of_a_real_run(tiny_run, tmp_path):
  workdir, _ = tiny_run
  written = plot.write_runs([workdir], str(tmp_path / "plots"), images=TB_IMAGES)
  assert [os.path.basename(p) for p in written] == ["miou_per_step.png", "ft_seed0_iou.png",
                                                    "ft_seed0_predictions.png"]
  for path in written:
    with Image.open(path) as image:
      assert image.format == "PNG" and 300 <= image.size[0] <= 3000 and 250 <= image.size[1] <= 3000
  with Image.open(written[2]) as image:  # 4 columns (image, truth, 2 steps) by 2 rows
    assert image.size[0] > image.size[1]


def test_command_line(tiny_run, tmp_path):
  workdir, _ = tiny_run
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  root = os.path.join(os.path.dirname(__file__), "..")
  command = [sys.executable, "-m", "incseg_jax.plot", workdir, f"--out={tmp_path / 'plots'}", "--images=1"]
  out = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == [str(tmp_path / "plots" / name) for name in
                                ("miou_per_step.png", "ft_seed0_iou.png", "ft_seed0_predictions.png")]
  assert "read only" not in out.stderr  # orbax's warning per restore is kept out of the way
  # Several WORKDIRs need --out: one line, exit code 2, before anything is read.
  out = subprocess.run([sys.executable, "-m", "incseg_jax.plot", workdir, workdir], cwd=root, env=env,
                       capture_output=True, text=True)
  assert out.returncode == 2 and "2 WORKDIRs given: say where the plots go with --out=DIR" in out.stderr
