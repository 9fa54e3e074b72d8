"""The C library's memory allocator, set for a process whose JAX computes on the CPU.

XLA's CPU runtime allocates a compiled step's scratch buffer (its
`memory_analysis().temp_size_in_bytes`: 443 MiB for the ResNet-101
student + teacher step at 128², batch 2) when the step starts and frees it
when the step ends. With glibc's default settings such a block is mapped
with `mmap` and returned with `munmap`, so every step the kernel maps and
zeroes the whole buffer again, one page fault per 4 KiB page: 113,461 faults
per step there. On a 2-core VM the setting below took 13-40% off the CPU
time of ResNet-50/101 steps (docs/benchmarks.md, "The allocator").

The block is requested from one of XLA's worker threads. glibc gives those
threads arenas of their own, which grow in heaps of at most 64 MiB and
map anything larger directly whatever `M_MMAP_MAX` says, so the setting is:
- one arena (`M_ARENA_MAX` 1): every thread allocates from the main heap;
- no `mmap` for large blocks (`M_MMAP_MAX` 0): they come from that heap;
- no trimming of the heap's top (`M_TRIM_THRESHOLD` -1): a freed scratch
  buffer stays mapped and the next step reuses it.

The process's resident memory then stays at its high-water mark (glibc
does not hand freed heap back to the system), which is what a training
process needs anyway. The settings change how memory is obtained, never
what a computation gives.

`incseg_jax/__init__.py` calls `configure()` on import: a thread gets its
arena at its first allocation and keeps it, so the settings must precede
the threads that numpy, TensorFlow and XLA start. `python -m incseg_jax...`
imports this package before anything else. In a program that imported
those libraries first the setting holds only in part: glibc may hand a
thread started later one of the arenas that already exist.

The environment variable INCSEG_JAX_MALLOC chooses:
- `auto` (the default): set when JAX will compute on the CPU only:
  JAX_PLATFORMS names only `cpu`, or, when it is unset, no GPU or TPU
  plugin of JAX is installed. On accelerator hosts the scratch buffers are
  device memory, and one arena could slow tf.data's many threads;
- `tuned`: set on any host;
- `system`: leave glibc's defaults.
Other C libraries (musl, macOS) are left alone.
"""

import ctypes
import importlib.util
import os
import sys
from typing import Any, Mapping

ENV = "INCSEG_JAX_MALLOC"
CHOICES = ("auto", "tuned", "system")

# glibc's <malloc.h> parameter numbers, and the values set.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))  # -1: never trim (mallopt(3))

# Top-level modules of JAX's accelerator plugins (CUDA, ROCm, TPU) and the namespace older plugins used.
ACCELERATOR_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin",
                       "libtpu", "jax_plugins")

# What the last `configure()` did: "tuned", or "system (why)"; read by the benchmarks' reports.
state = "system (not configured)"


def choice(environ: Mapping[str, str]) -> str:
  """The INCSEG_JAX_MALLOC value; a ValueError naming the variable for anything but auto / tuned / system."""
  value = environ.get(ENV, "auto").strip().lower() or "auto"
  if value not in CHOICES:
    raise ValueError(f"{ENV}={environ[ENV]!r}: expected one of {', '.join(CHOICES)}")
  return value


def cpu_only(environ: Mapping[str, str]) -> bool:
  """Whether JAX will compute on the CPU alone (decided before JAX is imported)."""
  platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return {p.strip() for p in platforms.split(",") if p.strip()} <= {"cpu"}
  return not any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_MODULES)


def glibc() -> Any:
  """The process's glibc, with `mallopt` typed; None for another C library or platform."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement  (glibc's own symbol: not musl's shim)
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return None
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return libc


def configure(environ: Mapping[str, str] = os.environ, libc: Any = None) -> str:
  """Applies the settings above where INCSEG_JAX_MALLOC says so; returns (and records) what was done.

  Args:
    environ: where INCSEG_JAX_MALLOC and JAX_PLATFORMS are read.
    libc: the C library to call (tests pass a fake); by default glibc, found with `glibc()`.

  Returns:
    "tuned", or "system (why not)".

  Raises:
    ValueError: INCSEG_JAX_MALLOC holds something other than auto, tuned or system.
  """
  global state
  wanted = choice(environ)
  if wanted == "system":
    state = f"system ({ENV}=system)"
  elif wanted == "auto" and not cpu_only(environ):
    state = f"system (JAX may compute on an accelerator; {ENV}=tuned sets it anyway)"
  elif (libc := libc or glibc()) is None:
    state = "system (not glibc)"
  elif all(libc.mallopt(param, value) == 1 for param, value in SETTINGS):
    state = "tuned"
  else:
    state = "system (mallopt refused a setting)"
  return state
