"""The built-in procedural `shapes` dataset (a tiny, CPU-friendly stand-in for VOC).

This module owns the `shapes` TFDS builder: the class table (names, shapes,
colours, scenes, frequencies), the numpy renderer that draws one image/mask
pair, and the `build` helper that prepares the dataset on disk.

The dataset mirrors Pascal VOC's label layout (background 0, foreground 1..20,
void 255) so every standard incremental scenario (19-1, 15-5, 15-1, 10-10,
10-1) exists, while being small enough that catastrophic forgetting can be
observed on a CPU in minutes. It is designed to make forgetting visible:

* new classes (16..20, 11..20) have a confusable old partner (same shape with a
 close colour, or same colour with a similar shape) in the same scene, so a
 model that forgets drifts towards the partner or background;
* scenes mix low and high class ids, so new classes co-occur with old ones
 (background shift: old classes appear unlabelled in new-task images);
* class frequencies are unequal, so a frequency class order differs from ids.

Generation is pure numpy and deterministic: example `i` of split `s` is drawn
from `np.random.default_rng([_BASE_SEED, split_index, i])`, independent of any
global RNG or of the order in which examples are produced.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from incseg_jax import files

NUM_CLASSES = 21  # background + 20 foreground classes, like VOC.
IGNORE_LABEL = 255
_BASE_SEED = 17492024
_SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
_REPLAY_STREAM = 3  # replay_example's images: apart from every split

COLOURS: dict[str, tuple[int, int, int]] = {
  "red": (210, 40, 40),
  "orange": (240, 125, 30),  # ~85 from red: deliberately confusable.
  "yellow": (230, 210, 45),
  "green": (50, 160, 60),
  "teal": (30, 160, 165),
  "blue": (40, 80, 215),
  "purple": (135, 55, 200),
  "magenta": (205, 40, 165),  # ~75 from purple: deliberately confusable.
  "white": (235, 235, 235),
  "brown": (140, 85, 45),
}


class ClassSpec(NamedTuple):
  """Definition of one foreground class.

  Attributes:
    name: Human-readable name, `<colour>_<shape>`.
    shape: Shape type (key of `_SIZE_RANGE`).
    colour: Colour name (key of `COLOURS`).
    scene: Scene index; objects of an image mostly come from one scene.
    weight: Relative sampling weight inside its scene (unequal on purpose).
  """

  name: str
  shape: str
  colour: str
  scene: int
  weight: float


def _spec(shape: str, colour: str, scene: int, weight: float) -> ClassSpec:
  return ClassSpec(f"{colour}_{shape}", shape, colour, scene, weight)


# Class id = position + 1. Every scene holds one id from each of 1-5, 6-10,
# 11-15 and 16-20, so in 15-x and 10-10 new classes co-occur with old ones.
CLASSES: tuple[ClassSpec, ...] = (
  _spec("circle", "red", 0, 4),  # 1
  _spec("square", "blue", 1, 3),  # 2
  _spec("circle", "green", 2, 2),  # 3
  _spec("cross", "magenta", 3, 1),  # 4
  _spec("ellipse", "teal", 4, 3),  # 5
  _spec("ellipse", "yellow", 0, 1),  # 6
  _spec("cross", "white", 1, 3),  # 7
  _spec("star", "purple", 2, 4),  # 8
  _spec("bar", "teal", 3, 2),  # 9
  _spec("square", "red", 4, 1),  # 10
  _spec("triangle", "purple", 0, 2),  # 11
  _spec("triangle", "yellow", 1, 1),  # 12
  _spec("bar", "brown", 2, 3),  # 13
  _spec("ring", "white", 3, 4),  # 14
  _spec("star", "orange", 4, 2),  # 15
  _spec("circle", "orange", 0, 3),  # 16
  _spec("diamond", "blue", 1, 2),  # 17
  _spec("ring", "green", 2, 1),  # 18
  _spec("cross", "purple", 3, 3),  # 19
  _spec("circle", "teal", 4, 4),  # 20
)
NUM_SCENES = 5
# Unequal scene probabilities compound the unequal in-scene weights.
SCENE_PROBS = np.array([0.26, 0.22, 0.20, 0.17, 0.15])
_P_OTHER_SCENE = 0.15  # Chance an object comes from any class, not the scene.

# (old id, new id) pairs a segmenter can easily confuse; each new class of the
# 15-5 scenario has one partner among the old classes, in the same scene.
CONFUSABLE_PAIRS: tuple[tuple[int, int], ...] = (
  (1, 16),  # red vs orange circle: same shape, close colours.
  (2, 17),  # blue square vs blue diamond: same colour, similar shapes.
  (3, 18),  # green circle vs green ring: same colour, similar shapes.
  (4, 19),  # magenta vs purple cross: same shape, close colours.
  (5, 20),  # teal ellipse vs teal circle: same colour, similar shapes.
)

CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(c.name for c in CLASSES)
PALETTE: np.ndarray = np.array(
  [(0, 0, 0)] + [COLOURS[c.colour] for c in CLASSES], dtype=np.uint8
)

# Object diameter range in px at 64x64. Thin shapes (ring, cross, star) get a
# larger minimum so they keep interior pixels after the 1-px void border.
_SIZE_RANGE = {
  "circle": (10, 24), "square": (10, 22), "diamond": (12, 26),
  "triangle": (12, 26), "ellipse": (12, 28), "bar": (14, 28),
  "ring": (15, 28), "cross": (14, 28), "star": (15, 28),
}  # fmt: skip


def expected_class_frequencies() -> np.ndarray:
  """Returns the probability that a drawn object has each class id (0 for bg).

  Returns:
    float64 array (NUM_CLASSES,); entry 0 is 0, the rest sum to 1.
  """
  freq = np.zeros(NUM_CLASSES)
  for cid, spec in enumerate(CLASSES, start=1):
    scene_w = sum(c.weight for c in CLASSES if c.scene == spec.scene)
    in_scene = SCENE_PROBS[spec.scene] * spec.weight / scene_w
    freq[cid] = (1 - _P_OTHER_SCENE) * in_scene + _P_OTHER_SCENE / len(CLASSES)
  return freq


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
  """Boolean mask of `shape` with radius `r` in object coordinates (u, v)."""
  au, av = np.abs(u), np.abs(v)
  if shape == "circle":
    return u**2 + v**2 <= r**2
  if shape == "ring":
    d2 = u**2 + v**2
    return (d2 <= r**2) & (d2 >= (0.5 * r) ** 2)
  if shape == "square":
    return np.maximum(au, av) <= 0.8 * r
  if shape == "diamond":
    return au + av <= r
  if shape == "triangle":  # Equilateral, apex up (image v grows downwards).
    return (v <= 0.5 * r) & (au <= (v + r) / np.sqrt(3.0))
  if shape == "cross":
    w = 0.3 * r
    return ((au <= w) & (av <= r)) | ((av <= w) & (au <= r))
  if shape == "bar":
    return (au <= r) & (av <= 0.35 * r)
  if shape == "ellipse":
    return (u / r) ** 2 + (v / (0.55 * r)) ** 2 <= 1.0
  if shape == "star":  # Radius oscillates between 0.42 r and r over 5 points.
    phase = np.arctan2(u, -v) * 5 / (2 * np.pi)
    tri = np.abs(phase - np.round(phase)) * 2  # 0 at tips, 1 between.
    return np.hypot(u, v) <= r * (1.0 - 0.58 * tri)
  raise ValueError(f"unknown shape {shape!r}")


def _muted(rng: np.random.Generator, lo: float, hi: float, sat: float) -> np.ndarray:
  """Random RGB colour pulled towards grey, so it reads as background."""
  c = rng.uniform(lo, hi, 3)
  return c.mean() + sat * (c - c.mean())


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """Bilinearly upsampled (cells x cells x 3) noise in [-1, 1]: low-freq texture."""
  grid = rng.uniform(-1, 1, (cells, cells, 3))
  pos = np.linspace(0, cells - 1, size)
  i0 = np.minimum(pos.astype(int), cells - 2)
  f = (pos - i0)[:, None]
  rows = grid[i0] * (1 - f[..., None]) + grid[i0 + 1] * f[..., None]
  return rows[:, i0] * (1 - f[None]) + rows[:, i0 + 1] * f[None]


def _background(rng, yy, xx, size: int) -> np.ndarray:
  """Cluttered background: gradient + smooth noise + distractor blobs/lines."""
  c0, c1 = _muted(rng, 50, 200, 0.35), _muted(rng, 50, 200, 0.35)
  theta = rng.uniform(0, 2 * np.pi)
  proj = xx * np.cos(theta) + yy * np.sin(theta)
  t = ((proj - proj.min()) / np.ptp(proj))[..., None]
  img = c0 * (1 - t) + c1 * t + 25 * _smooth_noise(rng, size, int(rng.integers(3, 7)))
  scale = size / 64
  for _ in range(int(rng.integers(3, 9))):
    # Distractors are small and muted so they look like clutter, but still
    # force the model to use shape and colour rather than "any blob".
    colour = _muted(rng, 30, 220, 0.5)
    p = rng.uniform(0, size, 2)
    if rng.random() < 0.5:
      m = np.hypot(xx - p[0], yy - p[1]) <= rng.uniform(1.5, 3.5) * scale
    else:
      q = p + rng.normal(0, 10 * scale, 2)
      d = q - p
      s = np.clip(((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / (d @ d + 1e-9), 0, 1)
      m = np.hypot(xx - p[0] - s * d[0], yy - p[1] - s * d[1]) <= 0.6 * scale
    img[m] = colour
  return img


def _draw_classes(rng: np.random.Generator, force_class: int | None) -> list[int]:
  """Samples the class ids of one image's objects, in drawing order."""
  scene = int(rng.choice(NUM_SCENES, p=SCENE_PROBS))
  if force_class is not None:
    scene = CLASSES[force_class - 1].scene  # Keep scene statistics coherent.
  ids = np.array([i for i, c in enumerate(CLASSES, 1) if c.scene == scene])
  w = np.array([CLASSES[i - 1].weight for i in ids], dtype=float)
  classes = []
  for _ in range(int(rng.integers(2, 6))):
    if rng.random() < _P_OTHER_SCENE:
      classes.append(int(rng.integers(1, len(CLASSES) + 1)))
    else:
      classes.append(int(rng.choice(ids, p=w / w.sum())))
  if force_class is not None:
    classes[-1] = force_class  # Drawn last, i.e. on top: always visible.
  return classes


def render_example(
  rng: np.random.Generator, image_size: int = 64, force_class: int | None = None,
  only_class: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Renders one image and its segmentation mask.

  Args:
    rng: Source of all randomness for this example.
    image_size: Side length S of the square image.
    force_class: Optional class id guaranteed to be present (drawn on top).
    only_class: Optional class id: draw 1-3 objects of this class only (the
      replay images of `replay_example`); the dataset's splits never set it.

  Returns:
    `(image, mask)`: uint8 arrays of shape (S, S, 3) and (S, S); the mask
    holds 0 (background), 1..20 (classes) and 255 (void object borders).
  """
  size = image_size
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
  img = _background(rng, yy, xx, size)
  label = np.zeros((size, size), np.uint8)
  inst = np.zeros((size, size), np.int32)
  brightness = rng.uniform(0.9, 1.1)  # Per-image illumination.
  drawn = [only_class] * int(rng.integers(1, 4)) if only_class else _draw_classes(rng, force_class)
  for k, cid in enumerate(drawn, start=1):
    spec = CLASSES[cid - 1]
    r = rng.uniform(*_SIZE_RANGE[spec.shape]) * size / 64 / 2
    cx, cy = rng.uniform(0.5 * r, size - 0.5 * r, 2)
    angle = np.clip(rng.normal(0, 0.15), -0.3, 0.3)  # Small: diamond != square.
    ca, sa = np.cos(angle), np.sin(angle)
    u = (xx - cx) * ca + (yy - cy) * sa
    v = -(xx - cx) * sa + (yy - cy) * ca
    m = _shape_mask(spec.shape, u, v, r)
    colour = np.asarray(COLOURS[spec.colour]) * brightness + rng.normal(0, 10, 3)
    g = rng.normal(0, 0.1, 2)  # Linear shading across the object.
    shade = 1 + (g[0] * u[m] + g[1] * v[m]) / r
    img[m] = colour * shade[:, None]
    label[m], inst[m] = cid, k
  img += rng.normal(0, 5, img.shape)  # Sensor noise.
  # Void: 1-px inner border of every visible object region (like VOC). Edge
  # padding means the image frame itself is not treated as a boundary.
  p = np.pad(inst, 1, mode="edge")
  centre = p[1:-1, 1:-1]
  edge = (
    (centre != p[:-2, 1:-1]) | (centre != p[2:, 1:-1])
    | (centre != p[1:-1, :-2]) | (centre != p[1:-1, 2:])
  )  # fmt: skip
  label[edge & (inst > 0)] = IGNORE_LABEL
  return np.clip(np.round(img), 0, 255).astype(np.uint8), label


def generate_example(split: str, index: int, image_size: int = 64) -> dict:
  """Returns the feature dict of example `index` of `split` (numpy only).

  The first 20 examples of each split force classes 1..20 in turn, so even
  the `tiny` config contains every class in every split.

  Args:
    split: "train", "val" or "test".
    index: Example index within the split.
    image_size: Side length of the image.

  Returns:
    Dict with the builder's feature keys (image, label, classes,
    pixel_counts, id) as numpy arrays / str.
  """
  rng = np.random.default_rng([_BASE_SEED, _SPLIT_INDEX[split], index])
  force = index + 1 if index < len(CLASSES) else None
  image, mask = render_example(rng, image_size, force)
  counts = np.bincount(mask.ravel(), minlength=256)[:NUM_CLASSES]
  return {
    "image": image,
    "label": mask[..., None],
    "classes": (np.flatnonzero(counts[1:]) + 1).astype(np.int32),
    "pixel_counts": counts.astype(np.int64),
    "id": f"{split}_{index:06d}",
  }


def replay_example(class_id: int, index: int, image_size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Image `index` of class `class_id`'s replay folder (and its mask, which the folder does not keep).

  Drawn from its own random stream (never a train, val or test image): 1-3
  objects of the class on a fresh cluttered background, as a web search for
  the class would mostly return.
  """
  rng = np.random.default_rng([_BASE_SEED, _REPLAY_STREAM, seed, class_id, index])
  return render_example(rng, image_size, only_class=class_id)


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Builder config for `shapes`.

  Attributes:
    num_train: Number of training examples.
    num_val: Number of validation examples (calibration, model selection).
    num_test: Number of held-out test examples (reported numbers only).
    image_size: Side length S of the square images.
  """

  num_train: int = 3000
  num_val: int = 600
  num_test: int = 600
  image_size: int = 64


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Procedural VOC-like shapes segmentation dataset (20 classes + bg)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.0.0": "Initial release.",
    "1.1.0": "Held-out test split; train and val unchanged.",
  }
  BUILDER_CONFIGS = [
    ShapesConfig(name="default", description="3000 train / 600 val / 600 test, 64 px."),
    ShapesConfig(
      name="tiny", description="160 train / 64 val / 64 test, for tests.",
      num_train=160, num_val=64, num_test=64,
    ),
  ]  # fmt: skip
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
      description=__doc__,
      features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(s, s, 3)),
        "label": tfds.features.Image(shape=(s, s, 1)),
        "classes": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "pixel_counts": tfds.features.Tensor(
          shape=(NUM_CLASSES,), dtype=np.int64
        ),
        "id": tfds.features.Text(),
      }),
      supervised_keys=("image", "label"),
      # JSON-serialisable: MetadataDict is saved with json.dump.
      metadata=tfds.core.MetadataDict(
        class_names=list(CLASS_NAMES), palette=PALETTE.tolist()
      ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is procedural; nothing is downloaded.
    cfg = self.builder_config
    return {
      "train": self._generate_examples("train", cfg.num_train),
      "val": self._generate_examples("val", cfg.num_val),
      "test": self._generate_examples("test", cfg.num_test),
    }

  def _generate_examples(self, split: str, num: int):
    size = self.builder_config.image_size
    for i in range(num):
      example = generate_example(split, i, size)
      yield example["id"], example


def build(data_dir: str | None = None, config: str = "default", log=None) -> Shapes:
  """Prepares the `shapes` dataset (idempotent) and returns its builder.

  Args:
    data_dir: TFDS data directory; None uses the TFDS default.
    config: Builder config name ("default" or "tiny").
    log: called with one line before a build starts (nothing when the
      records exist).

  Returns:
    The prepared builder; call `.as_dataset(split=...)` on it.

  Raises:
    ValueError: the records must be built but the data dir is not writable
      (checked first: tfds would fail deep inside with a traceback).
  """
  builder = Shapes(config=config, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  root = data_dir or builder.data_dir_root
  problem = files.unwritable(root)
  if problem:
    raise ValueError(f"data dir {root} {problem}, but the shapes dataset ({config}) is not built there yet and "
                     "must be written into it (once); expected a writable directory: make it writable, or point "
                     "INCSEG_DATA_DIR or --config.dataset.data_dir at a writable one")
  if log:
    log(f"building the shapes dataset ({config}) into {root} (once)")
  # try_download_gcs=False: never look for a pre-built copy online.
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(try_download_gcs=False)
  )
  return builder
