"""Peak memory and time of the dense vs blockwise UCD loss (value + gradient).

  python -m incseg_jax.benchmarks.ucd_memory [--pixels=4096,16384,32768] \
      [--dim=256] [--block_size=1024] [--repeats=5] [--max_run_gb=12]

Pixels are feature-resolution pixels of the whole batch (a 512 x 512 crop at
output stride 16 gives 1024): images of 32 x 32 when the count allows, with
labels at feature resolution. Half of them carry a new-class label, the rest
are background and get the old model's pseudo-labels, so nearly every pixel is
an anchor and about half are old-model contrast entries (shapes are static, so
the mix changes neither memory nor time).

Peak memory is the compiled executable's `memory_analysis()`: temporaries +
arguments + outputs, i.e. what XLA plans to hold at once; no run is needed for
it. Time is the median of `--repeats` runs after one warm-up run, on the
default device. A configuration whose planned peak exceeds `--max_run_gb` is
compiled but not run (its time is reported as skipped).
"""

from __future__ import annotations

import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from incseg_jax import losses
from incseg_jax.losses import contrastive

_PIXELS = flags.DEFINE_list("pixels", ["4096", "16384", "32768"], "Feature-resolution pixels per batch.")
_DIM = flags.DEFINE_integer("dim", 256, "Feature channels (the ASPP output).")
_BLOCK = flags.DEFINE_integer("block_size", 1024, "Anchor rows per block of the blockwise loss.")
_FORMS = flags.DEFINE_list("forms", ["dense", "blockwise"], "Which forms to measure.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs (after one warm-up run).")
_MAX_RUN_GB = flags.DEFINE_float("max_run_gb", 12.0, "Do not run a configuration planned above this many GiB.")
_CLASSES = flags.DEFINE_integer("classes", 21, "Current channels N (background included).")
_OLD = flags.DEFINE_integer("old_classes", 16, "Old model's channels N_old (background included).")

_GIB = 2**30


def _batch_shape(pixels: int) -> tuple[int, int, int]:
  """(B, h, w): 32 x 32 images when the pixel count allows, else one row."""
  return (pixels // 1024, 32, 32) if pixels % 1024 == 0 else (1, 1, pixels)


def _loss_fn(form: str, n: int, n_old: int, block_size: int):
  """(student, teacher, teacher_logits, labels) -> (loss, d loss / d student)."""
  task = losses.TaskInfo(index=1, num_channels=n, old_channels=tuple(range(1, n_old)),
                         new_channels=tuple(range(n_old, n)))

  def loss(student, teacher, logits, labels):
    inputs = losses.LossInputs(student={"pre_logits": student}, teacher={"pre_logits": teacher, "logits_os": logits},
                               labels=labels, images=None, task=task)
    if form == "dense":
      return contrastive.ucd_dense_loss(inputs)
    return contrastive.ucd_loss(inputs, block_size=block_size)

  return jax.jit(jax.value_and_grad(loss))


def _inputs(shape, dim, n, n_old, seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  student = jax.random.normal(keys[0], shape + (dim,))
  teacher = jax.random.normal(keys[1], shape + (dim,))
  logits = 3.0 * jax.random.normal(keys[2], shape + (n_old,))
  new = jax.random.randint(keys[3], shape, n_old, n)
  labels = jnp.where(jax.random.bernoulli(keys[4], 0.5, shape), new, 0).astype(jnp.int32)
  return student, teacher, logits, labels


def measure(form: str, pixels: int, dim: int, block_size: int, n: int, n_old: int, repeats: int,
            max_run_gb: float) -> dict:
  """Compiles (and, within the memory cap, times) one configuration.

  Returns:
    dict(temp, args, out, peak) in bytes and `ms` (median, None if skipped).
  """
  shape = _batch_shape(pixels)
  fn = _loss_fn(form, n, n_old, block_size)
  specs = [jax.ShapeDtypeStruct(shape + (dim,), jnp.float32)] * 2
  specs += [jax.ShapeDtypeStruct(shape + (n_old,), jnp.float32), jax.ShapeDtypeStruct(shape, jnp.int32)]
  compiled = fn.lower(*specs).compile()
  mem = compiled.memory_analysis()
  row = dict(temp=mem.temp_size_in_bytes, args=mem.argument_size_in_bytes, out=mem.output_size_in_bytes)
  row["peak"] = row["temp"] + row["args"] + row["out"]
  row["ms"] = None
  if row["peak"] > max_run_gb * _GIB:
    return row
  args = _inputs(shape, dim, n, n_old)
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(1e3 * (time.perf_counter() - start))
  row["ms"] = statistics.median(times)
  return row


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  device = jax.devices()[0]
  print(f"UCD loss, value + gradient w.r.t. the student features; D={_DIM.value}, N={_CLASSES.value} "
        f"(old {_OLD.value}), block_size={_BLOCK.value}; {device.platform} ({device.device_kind}), "
        f"jax {jax.__version__}")
  print(f"{'pixels':>7} {'form':<10} {'peak MiB':>10} {'temp MiB':>10} {'args+out MiB':>13} {'median ms':>10}  note")
  for pixels in (int(p) for p in _PIXELS.value):
    for form in _FORMS.value:
      row = measure(form, pixels, _DIM.value, _BLOCK.value, _CLASSES.value, _OLD.value, _REPEATS.value,
                    _MAX_RUN_GB.value)
      note = ""
      if row["ms"] is None:
        note = f"not run: planned peak {row['peak'] / _GIB:.1f} GiB > --max_run_gb={_MAX_RUN_GB.value:g}"
      ms = "-" if row["ms"] is None else f"{row['ms']:.1f}"
      print(f"{pixels:>7} {form:<10} {row['peak'] / 2**20:>10.1f} {row['temp'] / 2**20:>10.1f} "
            f"{(row['args'] + row['out']) / 2**20:>13.1f} {ms:>10}  {note}", flush=True)


if __name__ == "__main__":
  app.run(main)
