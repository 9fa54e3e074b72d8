"""One convolution against one matrix product per tap (`models.resnet.conv_by_taps`).

  python -m incseg_jax.benchmarks.conv_taps [--threads=1] [--repeats=10] \
      [--cases=8:2048:256:6,32:2048:256:18]

Each case is `map:in:out:rate`: a 3x3, stride-1 convolution of a batch of 2
`map x map` feature maps from `in` to `out` channels at dilation `rate`, with
torch's padding. For each it prints the share of (output position, tap)
products that read the map (`tap_read_fraction`, the quantity `conv2d`'s rule
compares with `TAP_READ_FRACTION`), then the median process CPU time (ms) of
the forward pass and of the value and gradient (w.r.t. input and kernel) of a
sum of squares, both ways, and the largest difference between the two
outputs relative to the largest output. Inputs are standard normal; the
kernel is scaled by 0.01. The default cases are the ASPP branches at 128² and
512² crops (output stride 16), a ResNet layer-4 3x3 at dilation 2 and one on a
16 x 16 map.
"""

from __future__ import annotations

import os
import statistics
import time

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp

from incseg_jax import runtime
from incseg_jax.benchmarks import train_step
from incseg_jax.models import resnet

_DEFAULT_CASES = ["8:2048:256:6", "32:2048:256:18", "32:2048:256:12", "32:2048:256:6", "16:2048:256:6",
                  "8:512:512:2", "16:256:256:1"]


def _define_flags() -> None:
  """The command's flags, defined only when run as a program (importing the module defines none)."""
  flags.DEFINE_list("cases", _DEFAULT_CASES, "map:in:out:rate per case.")
  flags.DEFINE_integer("repeats", 10, "Timed runs per function (after two warm-up runs).")
  flags.DEFINE_integer("threads", 0, "XLA CPU threads (0: the default; 1: one thread).")


def parse_case(text: str) -> tuple[int, int, int, int]:
  """'map:in:out:rate' -> four positive ints, or a ValueError naming the case."""
  parts = text.split(":")
  try:
    values = tuple(int(p) for p in parts)
  except ValueError:
    values = ()
  if len(values) != 4 or min(values) < 1:
    raise ValueError(f"--cases entry {text!r}: expected map:in:out:rate, four positive integers (e.g. 8:2048:256:6)")
  return values  # type: ignore[return-value]


def check_counts(repeats: int, threads: int) -> None:
  """ValueError naming the flag when --repeats or --threads cannot be used."""
  if repeats < 1:
    raise ValueError(f"--repeats={repeats}: expected at least 1 timed run")
  if threads < 0:
    raise ValueError(f"--threads={threads}: expected a non-negative integer")


def _cpu_ms(fn, args, repeats: int) -> float:
  for _ in range(2):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.process_time()
    jax.block_until_ready(fn(*args))
    times.append(1e3 * (time.process_time() - start))
  return statistics.median(times)


def measure(size: int, cin: int, cout: int, rate: int, repeats: int) -> dict:
  """Times and compares both ways for one case; returns a dict of the printed fields."""
  def conv(x, k):  # the plain convolution, whatever `conv2d`'s rule would pick
    pad = rate * (k.shape[0] - 1) // 2
    return lax.conv_general_dilated(x, k, (1, 1), [(pad, pad)] * 2, rhs_dilation=(rate, rate),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def taps(x, k):
    return resnet.conv_by_taps(x, k, rate)

  x = jax.random.normal(jax.random.key(0), (2, size, size, cin))
  k = 0.01 * jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
  row = dict(read=resnet.tap_read_fraction((size, size), (3, 3), rate))
  outputs = {}
  for name, fn in (("conv", conv), ("taps", taps)):
    forward = jax.jit(fn)
    grad = jax.jit(jax.value_and_grad(lambda x, k, fn=fn: jnp.sum(fn(x, k)**2), argnums=(0, 1)))
    row[f"{name}_fwd"] = _cpu_ms(forward, (x, k), repeats)
    row[f"{name}_grad"] = _cpu_ms(grad, (x, k), repeats)
    outputs[name] = forward(x, k)
  row["rel_diff"] = float(jnp.max(jnp.abs(outputs["conv"] - outputs["taps"])) / jnp.max(jnp.abs(outputs["conv"])))
  return row


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  opts = flags.FLAGS
  with runtime.clear_errors():  # before the backend starts
    cases = [parse_case(c) for c in opts.cases]
    check_counts(opts.repeats, opts.threads)
  extra = train_step.thread_flags(opts.threads)
  if extra:  # read when the backend starts, i.e. at the device query below
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {extra}".strip()
  device = jax.devices()[0]
  print(f"3x3 stride-1 convolution, batch 2, float32: one convolution vs one product per tap; median process CPU "
        f"ms of {opts.repeats} runs; {device.platform} ({device.device_kind}), jax {jax.__version__}, "
        f"threads {opts.threads or 'default'}")
  print(f"{'map':>5} {'in->out':>10} {'rate':>4} {'reads':>6} {'fwd conv':>9} {'fwd taps':>9} "
        f"{'v+g conv':>9} {'v+g taps':>9} {'rel diff':>9}")
  for size, cin, cout, rate in cases:
    r = measure(size, cin, cout, rate, opts.repeats)
    print(f"{size:>5} {f'{cin}->{cout}':>10} {rate:>4} {r['read']:>6.0%} {r['conv_fwd']:>9.1f} {r['taps_fwd']:>9.1f} "
          f"{r['conv_grad']:>9.1f} {r['taps_grad']:>9.1f} {r['rel_diff']:>9.1e}", flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
