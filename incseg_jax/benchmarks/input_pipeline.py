"""Images per second of the training input pipeline, per thread count.

Measures exactly what a train step consumes: read the encoded record, decode
image and mask, random scale, pad, crop, flip, normalise, batch (the
`pipeline.train_batches` of a real run), without the model. Compare the figure
with the steps/s x batch size that training prints: if the pipeline is not
well above it, data loading bounds the run.

Usage:
  python -m incseg_jax.benchmarks.input_pipeline \
      --config=configs/voc.py:manual_dir=/data/voc --crop_size=512 \
      --threads=1,2,4,8 --batches=50

Any config works (default: the built-in shapes dataset); `--crop_size` and
`--batch_size` override the config's.
"""

from __future__ import annotations

import time

import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from incseg_jax import runtime
from incseg_jax.data import pipeline
from incseg_jax.data import registry

_CONFIG = config_flags.DEFINE_config_file("config", "configs/shapes.py", "Experiment config (dataset + input).")
_CROP = flags.DEFINE_integer("crop_size", 0, "Crop side (0: the config's).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Batch size (0: the config's).")
_THREADS = flags.DEFINE_list("threads", ["1", "2", "4"], "Thread counts to measure (0 = tf.data autotune).")
_BATCHES = flags.DEFINE_integer("batches", 30, "Batches timed per thread count (after 3 warm-up batches).")


def measure(split, indices, lut, input_cfg, *, threads: int, batches: int, ignore_label: int) -> float:
  """Images/s of `pipeline.train_batches` over `batches` batches after a warm-up."""
  warmup = 3
  it = pipeline.train_batches(split, indices, lut, input_cfg, seed=0, task_index=0, start_step=0,
                              num_steps=warmup + batches, ignore_label=ignore_label, threads=threads or None)
  for _ in range(warmup):
    next(it)
  t0 = time.perf_counter()
  n = 0
  for batch in it:
    n += batch["image"].shape[0]
  return n / (time.perf_counter() - t0)


def main(argv):
  del argv
  runtime.setup()
  cfg = _CONFIG.value
  if _CROP.value:
    cfg.input.crop_size = _CROP.value
  if _BATCH.value:
    cfg.input.batch_size = _BATCH.value
  builder, meta = registry.load(cfg.dataset)
  split = pipeline.load_split(builder, cfg.dataset.train_split)
  indices = np.arange(len(split))
  lut = np.arange(256, dtype=np.uint8)
  print(f"dataset {meta.name} ({cfg.dataset.train_split}: {len(split)} images), crop {cfg.input.crop_size}, "
        f"batch {cfg.input.batch_size}, scale {cfg.input.scale_min}-{cfg.input.scale_max}, flip {cfg.input.flip}")
  print(f"{'threads':>8} {'images/s':>10} {'batches/s':>10}")
  for threads in (int(t) for t in _THREADS.value):
    rate = measure(split, indices, lut, cfg.input, threads=threads, batches=_BATCHES.value,
                   ignore_label=meta.ignore_label)
    label = "auto" if threads == 0 else str(threads)
    print(f"{label:>8} {rate:10.1f} {rate / cfg.input.batch_size:10.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
