"""Writes the approximate saliency maps of `shapes` (SSUL's unknown class): `OUT/<id>.png`.

Usage:
  python -m incseg_jax.tools.shapes_saliency --out=DIR [--builder_config=default] [--split=train] [--data_dir=D]

The maps are those a run with an empty `--config.dataset.saliency_dir` builds
and caches beside the dataset (`incseg_jax/data/shapes_saliency.py`, which
describes them and their deliberate errors), byte for byte; the command
builds the dataset first if it is not built yet. Run with
`--config.dataset.saliency_dir=DIR` to use (or edit) them explicitly.
"""

from __future__ import annotations

from absl import app
from absl import flags

from incseg_jax import runtime
from incseg_jax.data import registry
from incseg_jax.data import shapes_saliency


def _define_flags() -> None:
  """The command's flags, defined only when run as a program (the tests import `write` beside other commands)."""
  flags.DEFINE_string("out", None, "folder to write (one <id>.png per image of the split)", required=True)
  flags.DEFINE_string("builder_config", "default", "the shapes build: default | tiny (config.dataset.builder_config)")
  flags.DEFINE_string("split", "train", "the split whose maps to write (config.dataset.train_split)")
  flags.DEFINE_string("data_dir", "", "the dataset's data dir (\"\": $INCSEG_DATA_DIR or ~/tensorflow_datasets)")


def write(out: str, builder_config: str = "default", split: str = "train", data_dir: str = "") -> int:
  """Writes the maps of a split of `shapes` into `out`; returns their number."""
  from incseg_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from incseg_jax.data import shapes  # pylint: disable=g-import-not-at-top
  builder = shapes.build(data_dir=data_dir or registry.default_data_dir(), config=builder_config,
                         log=lambda m: print(m, flush=True))
  encoded = pipeline.load_split(builder, split)
  return shapes_saliency.write(out, encoded.labels, encoded.ids)


def main(argv) -> None:
  runtime.setup_command(argv)
  f = flags.FLAGS
  with runtime.clear_errors():
    n = write(f.out, f.builder_config, f.split, f.data_dir)
  print(f"wrote {n} saliency maps of shapes ({f.builder_config}, {f.split}) to {f.out}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
