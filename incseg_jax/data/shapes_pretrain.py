"""`shapes_pretrain`: a procedural image-classification set, the "ImageNet" of `shapes`.

Both papers start from an encoder pretrained on ImageNet, whose 1000 classes already cover what every
incremental step adds. This set plays that role for the built-in `shapes` benchmark: a broader
vocabulary that includes the benchmark's concepts without being its images or its labels.

* Shapes: every shape of the benchmark (`shapes._SIZE_RANGE`) plus pentagon, hexagon, heart, arrow,
  crescent and L-shape (`SHAPES`).
* Colours: the benchmark's `shapes.COLOURS` plus six more hues (`COLOURS`).
* Fills: plain (linear shading, as in the benchmark), stripes, dots or a strong gradient (`FILLS`). A
  textured fill mixes the object's colour with a desaturated version of it (halfway to grey), never with
  another vocabulary colour, so an object still has exactly one colour label.
* Backgrounds: the benchmark's cluttered background (`shapes._background`), smooth noise, or a nearly
  flat muted colour (`BACKGROUNDS`).
* One to three objects per 64x64 image (one in half of them), the benchmark's sizes times its scale
  augmentation (0.75-1.5), placed so that no two overlap by more than `_MAX_OVERLAP` of either one's
  area (a mostly hidden object would make its label a guess).

Labels are image-level and not the benchmark's 20 class ids: a multi-hot target over `SHAPES` (which
shapes are visible) and one over `COLOURS` (which colours are visible); an object counts as visible
when at least `MIN_VISIBLE_PIXELS` of it are left after the later objects are drawn over it.

Generation is pure NumPy and deterministic: example `i` of split `s` is drawn from
`np.random.default_rng([_BASE_SEED, _SPLIT_INDEX[s], i])` (a seed constant of its own, so no image is
one of the benchmark's), independent of any global RNG and of the order of generation. `VERSION` names
what this module draws; change it whenever the images or labels of a given index change, since
pretrained files record it (`incseg_jax.pretrain`) and runs refuse a file made from another version.
"""

from __future__ import annotations

import numpy as np

from incseg_jax.data import shapes

NAME = "shapes_pretrain"
VERSION = "1.0.0"
IMAGE_SIZE = 64
_BASE_SEED = 60221023  # Not shapes._BASE_SEED: the two sets share no random stream.
_SPLIT_INDEX = {"train": 0, "heldout": 1}
SPLITS = tuple(_SPLIT_INDEX)

# Diameter range in px at 64x64 of the shapes the benchmark does not have; thin ones (crescent, arrow,
# L-shape) get a larger minimum so that their narrow parts stay a few pixels wide.
_NEW_SIZE_RANGE = {
  "pentagon": (12, 26), "hexagon": (12, 26), "heart": (14, 28),
  "arrow": (16, 30), "crescent": (16, 30), "lshape": (14, 28),
}  # fmt: skip
_SIZE_RANGE = {**shapes._SIZE_RANGE, **_NEW_SIZE_RANGE}
SHAPES: tuple[str, ...] = tuple(_SIZE_RANGE)
# Shapes whose orientation says nothing about what they are: any quarter turn is the same shape. The
# others keep the benchmark's small tilt, which is what tells a square from a diamond.
_QUARTER_TURNS = ("arrow", "crescent", "lshape")

# Extra hues, each >= ~80 (RGB distance) from every other colour, so the colour labels stay learnable.
COLOURS: dict[str, tuple[int, int, int]] = {
  **shapes.COLOURS,
  "pink": (250, 150, 190),
  "lime": (155, 230, 40),
  "cyan": (80, 220, 235),
  "black": (25, 25, 25),
  "lavender": (180, 150, 235),
  "beige": (225, 200, 150),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
FILLS = ("plain", "stripes", "dots", "gradient")
BACKGROUNDS = ("clutter", "noise", "flat")
_BACKGROUND_PROBS = (0.5, 0.3, 0.2)
# Objects are the benchmark's sizes times this factor: its training-time scale augmentation
# (configs/shapes.py: input.scale_min/max), so the backbone sees every size a segmentation run shows it.
_SCALE_RANGE = (0.75, 1.5)
# One object in half of the images and plain fills in 40% of the objects: clean views of single
# silhouettes are what a small network learns shapes from first (held-out shape mAP after 3000 steps of
# `incseg_jax.pretrain`: 0.26 with these, 0.24 with uniform counts and fills; the colours are learned
# either way).
_NUM_OBJECTS_PROBS = (0.5, 0.3, 0.2)  # 1, 2, 3 objects.
_FILL_PROBS = (0.4, 0.2, 0.2, 0.2)
_PLACEMENT_TRIES = 20
_MAX_OVERLAP = 0.15  # Of either object's area.
MIN_VISIBLE_PIXELS = 20
_GREY = 110.0  # What a textured fill's second tone is pulled towards.


def _polygon_mask(u: np.ndarray, v: np.ndarray, r: float, sides: int) -> np.ndarray:
  """Regular polygon with circumradius `r`, one vertex up (image v grows downwards)."""
  inside = np.ones(u.shape, bool)
  for k in range(sides):
    # Normal of the edge between vertices k and k+1; vertex k is at angle -pi/2 + 2 pi k / sides.
    psi = -np.pi / 2 + (2 * k + 1) * np.pi / sides
    inside &= u * np.cos(psi) + v * np.sin(psi) <= r * np.cos(np.pi / sides)
  return inside


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
  """Boolean mask of `shape` with radius `r` in object coordinates (u right, v down).

  The benchmark's shapes are drawn by `shapes._shape_mask` itself, so they are the same figures.

  Raises:
    ValueError: an unknown shape.
  """
  if shape in shapes._SIZE_RANGE:
    return shapes._shape_mask(shape, u, v, r)
  if shape == "pentagon":
    return _polygon_mask(u, v, r, 5)
  if shape == "hexagon":
    return _polygon_mask(u, v, r, 6)
  if shape == "heart":  # (x^2 + y^2 - 1)^3 <= x^2 y^3, y up; spans about x in +-1.14, y in [-1, 1.25].
    x, y = 1.14 * u / r, -1.12 * v / r + 0.12
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
  if shape == "arrow":  # Pointing right: a shaft and a triangular head.
    shaft = (u >= -r) & (u <= 0.05 * r) & (np.abs(v) <= 0.22 * r)
    head = (u >= 0) & (u <= r) & (np.abs(v) <= 0.65 * (r - u))
    return shaft | head
  if shape == "crescent":  # A disc minus a smaller disc shifted to the right.
    return (u**2 + v**2 <= r**2) & ((u - 0.45 * r) ** 2 + v**2 > (0.8 * r) ** 2)
  if shape == "lshape":
    stem = (u >= -0.65 * r) & (u <= -0.15 * r) & (np.abs(v) <= 0.85 * r)
    foot = (np.abs(u) <= 0.65 * r) & (v >= 0.35 * r) & (v <= 0.85 * r)
    return stem | foot
  raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
  """One of `BACKGROUNDS`: the benchmark's clutter, smooth noise, or a nearly flat colour."""
  kind = BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=_BACKGROUND_PROBS))]
  if kind == "clutter":
    return shapes._background(rng, yy, xx, size)
  if kind == "noise":
    base = shapes._muted(rng, 40, 210, 0.4)
    return base + 45 * shapes._smooth_noise(rng, size, int(rng.integers(4, 13)))
  base = shapes._muted(rng, 40, 210, 0.3)
  return base + 8 * shapes._smooth_noise(rng, size, 3)


def _fill(rng: np.random.Generator, fill: str, colour: np.ndarray, u: np.ndarray, v: np.ndarray, r: float
          ) -> np.ndarray:
  """RGB values (n, 3) of an object's pixels at object coordinates `u`, `v` (each (n,))."""
  if fill == "plain":  # The benchmark's linear shading.
    g = rng.normal(0, 0.1, 2)
    return colour * (1 + (g[0] * u + g[1] * v) / r)[:, None]
  if fill == "gradient":  # A strong one: 0.75x to 1.15x the colour across the object.
    beta = rng.uniform(0, 2 * np.pi)
    t = np.clip((u * np.cos(beta) + v * np.sin(beta)) / (2 * r) + 0.5, 0, 1)
    return colour * (0.75 + 0.4 * t)[:, None]
  second = 0.55 * colour + 0.45 * _GREY  # Desaturated: no other vocabulary colour.
  if fill == "stripes":
    beta, period = rng.uniform(0, np.pi), rng.uniform(3.0, 6.0)
    band = np.floor((u * np.cos(beta) + v * np.sin(beta)) / period).astype(int) % 2 == 1
  elif fill == "dots":
    period = rng.uniform(4.0, 6.5)
    du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
    band = np.hypot(du, dv) <= 0.3 * period
  else:
    raise ValueError(f"unknown fill {fill!r}")
  return np.where(band[:, None], second, colour)


def render_example(rng: np.random.Generator, image_size: int = IMAGE_SIZE
                   ) -> tuple[np.ndarray, list[dict], np.ndarray]:
  """Renders one image of one to three objects.

  Args:
    rng: Source of all randomness for this example.
    image_size: Side length S of the square image.

  Returns:
    `(image, objects, owner)`: the uint8 (S, S, 3) image; per drawn object (in drawing order) a dict
    with `shape`, `colour`, `fill` and `visible` (its pixel count left after the later objects); the
    int32 (S, S) map of which object (1-based index into `objects`, 0 for background) each pixel shows.
  """
  size = image_size
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
  img = _background(rng, yy, xx, size)
  owner = np.zeros((size, size), np.int32)
  brightness = rng.uniform(0.9, 1.1)  # Per-image illumination, as in the benchmark.
  objects = []
  for _ in range(1 + int(rng.choice(len(_NUM_OBJECTS_PROBS), p=_NUM_OBJECTS_PROBS))):
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour_name = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    fill = FILLS[int(rng.choice(len(FILLS), p=_FILL_PROBS))]
    angle = np.clip(rng.normal(0, 0.15), -0.3, 0.3)
    if shape in _QUARTER_TURNS:
      angle += np.pi / 2 * int(rng.integers(4))
    ca, sa = np.cos(angle), np.sin(angle)
    for _ in range(_PLACEMENT_TRIES):
      r = rng.uniform(*_SIZE_RANGE[shape]) * rng.uniform(*_SCALE_RANGE) * size / 64 / 2
      cx, cy = rng.uniform(0.8 * r, size - 0.8 * r, 2)
      u = (xx - cx) * ca + (yy - cy) * sa
      v = -(xx - cx) * sa + (yy - cy) * ca
      m = shape_mask(shape, u, v, r)
      area = m.sum()
      # Overlap with each earlier object's visible part, relative to the smaller of the two.
      overlaps = np.bincount(owner[m], minlength=len(objects) + 1)[1:]
      others = np.bincount(owner.ravel(), minlength=len(objects) + 1)[1:]
      if area and all(o <= _MAX_OVERLAP * min(area, n) for o, n in zip(overlaps, others)):
        break
    else:
      continue  # No room: the image has one object fewer.
    colour = np.asarray(COLOURS[colour_name], np.float64) * brightness + rng.normal(0, 10, 3)
    img[m] = _fill(rng, fill, colour, u[m], v[m], r)
    owner[m] = len(objects) + 1
    objects.append({"shape": shape, "colour": colour_name, "fill": fill})
  counts = np.bincount(owner.ravel(), minlength=len(objects) + 1)
  for k, obj in enumerate(objects, start=1):
    obj["visible"] = int(counts[k])
  img += rng.normal(0, 5, img.shape)  # Sensor noise.
  return np.clip(np.round(img), 0, 255).astype(np.uint8), objects, owner


def labels_of(objects: list[dict]) -> tuple[np.ndarray, np.ndarray]:
  """Multi-hot float32 targets `(shapes (len(SHAPES),), colours (len(COLOURS),))` of the visible objects."""
  shape_t = np.zeros(len(SHAPES), np.float32)
  colour_t = np.zeros(len(COLOUR_NAMES), np.float32)
  for obj in objects:
    if obj["visible"] >= MIN_VISIBLE_PIXELS:
      shape_t[SHAPES.index(obj["shape"])] = 1
      colour_t[COLOUR_NAMES.index(obj["colour"])] = 1
  return shape_t, colour_t


def generate_example(split: str, index: int, image_size: int = IMAGE_SIZE) -> dict:
  """Example `index` of `split` ("train" or "heldout").

  Returns:
    Dict with `image` (uint8 (S, S, 3)), `shapes` and `colours` (multi-hot float32 targets), `objects`
    and `owner` (see `render_example`).
  """
  rng = np.random.default_rng([_BASE_SEED, _SPLIT_INDEX[split], index])
  image, objects, owner = render_example(rng, image_size)
  shape_t, colour_t = labels_of(objects)
  return {"image": image, "shapes": shape_t, "colours": colour_t, "objects": objects, "owner": owner}


def generate_arrays(split: str, start: int, count: int, image_size: int = IMAGE_SIZE
                    ) -> dict[str, np.ndarray]:
  """Examples `start .. start+count-1` of `split` stacked: `image` (N, S, S, 3) uint8, `shapes`, `colours`."""
  examples = [generate_example(split, i, image_size) for i in range(start, start + count)]
  return {key: np.stack([ex[key] for ex in examples]) for key in ("image", "shapes", "colours")}
