"""Writes a RECALL replay folder for `shapes`: `OUT/<class name>/NNNN.jpg`, no masks.

Usage:
  python -m incseg_jax.tools.shapes_replay --out=DIR [--per_class=200] [--seed=0] [--image_size=64]

Each class folder holds `per_class` images of 1-3 objects of that class on
fresh cluttered backgrounds, drawn by the dataset's own renderer from a
random stream of their own (`shapes.replay_example`): never a training,
validation or test image, as web-crawled images are not the benchmark's.
Like a crawl, the folder carries no labels: the previous model labels the
images at each step (`incseg_jax/replay.py`). The output is a function of
the flags only (JPEG quality 95); run with `--config.replay.dir=DIR`.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from incseg_jax import runtime
from incseg_jax.data import shapes



def _define_flags() -> None:
  """The command's flags, defined only when run as a program (the tests import `write` beside other commands)."""
  flags.DEFINE_string("out", None, "folder to write (one sub-folder per foreground class)", required=True)
  flags.DEFINE_integer("per_class", 200, "images per class")
  flags.DEFINE_integer("seed", 0, "random stream of the images")
  flags.DEFINE_integer("image_size", 64, "image side (the dataset's default config is 64)")


def write(out: str, per_class: int, seed: int = 0, image_size: int = 64, classes=None) -> int:
  """Writes the folder; returns the number of images. `classes`: ids to write (default: every foreground class)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if per_class < 1 or image_size < 8:
    raise ValueError(f"--per_class={per_class}, --image_size={image_size}: expected at least 1 image per class "
                     "and a side of at least 8 pixels")
  ids = list(classes) if classes is not None else list(range(1, shapes.NUM_CLASSES))
  n = 0
  for cid in ids:
    folder = os.path.join(out, shapes.CLASS_NAMES[cid])
    os.makedirs(folder, exist_ok=True)
    for i in range(per_class):
      image, _ = shapes.replay_example(cid, i, image_size, seed)
      with open(os.path.join(folder, f"{i:04d}.jpg"), "wb") as f:
        f.write(tf.io.encode_jpeg(image, quality=95).numpy())
      n += 1
  return n


def main(argv) -> None:
  runtime.setup_command(argv)
  f = flags.FLAGS
  with runtime.clear_errors():
    n = write(f.out, f.per_class, f.seed, f.image_size)
  print(f"wrote {n} replay images ({f.per_class} per class, {shapes.NUM_CLASSES - 1} classes) to {f.out}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
