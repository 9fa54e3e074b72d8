"""Process-level setup shared by the command-line entry points.

Turns on JAX's persistent compilation cache (a re-run compiles the train step
in ~1 s instead of ~8 s on CPU), keeps TensorFlow off accelerators (it only
feeds data), and turns expected user errors into one clear line and exit
code 2 instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys

import jax
from absl import app
from absl import flags
from absl import logging

from incseg_jax import config_lib

# Failures the user can act on (bad config or data, a mismatched checkpoint, a
# non-finite loss): reported as their one-line message, never a traceback.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def cache_dir() -> str:
  return os.environ.get("INCSEG_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "incseg_jax", "xla")


def setup() -> None:
  """Compilation cache on; TensorFlow hidden from GPUs/TPUs."""
  jax.config.update("jax_compilation_cache_dir", cache_dir())
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  with contextlib.suppress(Exception):
    tf.config.set_visible_devices([], "TPU")


def setup_command(argv: list[str]) -> None:
  """What every command line does first: refuse stray arguments, quiet absl logging, `setup`.

  absl logging goes to WARNING unless `--verbosity` was given: orbax logs
  every file it reads or writes at INFO.
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  setup()


@contextlib.contextmanager
def clear_errors():
  """Reports expected failures as one line (their message), exit code 2.

  Expected: ValueError (bad config or data, mismatched checkpoint),
  FileNotFoundError, FloatingPointError (non-finite loss) and a full disk
  (OSError ENOSPC). Anything else is a bug and keeps its traceback.
  """
  try:
    yield
  except EXPECTED_ERRORS as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that reports a bad config as one line, exit code 2.

  ml_collections wraps an exception raised inside `get_config` (unknown
  method, malformed argument) in a flags error whose text is a full traceback;
  the user needs only its last line.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    cause = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception"))]
    message = _wrong_type(str(e), flags.FLAGS) or (cause[-1] if cause else lines[-1] if lines else e)
    print(f"error: {message}", file=sys.stderr, flush=True)
    print("Pass --helpfull to see the flags.", file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError) as e:
    # ml_collections raises these (with a traceback) for an override of a
    # field the config does not have.
    moved = _moved_quirk(argv)
    if moved:
      print(f"error: {moved}", file=sys.stderr, flush=True)
      sys.exit(2)
    key = str(e).strip("\"' ")
    args = [a.split("=")[0] for a in argv if a.startswith("--config.") and a.split("=")[0].endswith("." + key)]
    where = args[0] if args else f"a --config.<...>.{key} override"
    hint = " (options exist only for the loss terms of the chosen method)" if "loss_options" in where else ""
    print(f"error: {where}: the config has no field {key!r} there{hint}; pass --helpfull to see the fields",
          file=sys.stderr, flush=True)
    sys.exit(2)


def _moved_quirk(argv: list[str]) -> str | None:
  """The message for a `--config.quirks.<switch>` override (a removed field), else None."""
  for arg in argv:
    name, sep, value = arg.partition("=")
    if not name.startswith("--config.quirks."):
      continue
    switch = name[len("--config.quirks."):]
    if switch not in config_lib.MOVED_QUIRKS:
      return (f"{name}: config.quirks.* moved to options of the loss terms; known switches: "
              + ", ".join(f"--config.loss_options.{t}.{o}" for t, o in config_lib.MOVED_QUIRKS.values()))
    term, option = config_lib.MOVED_QUIRKS[switch]
    return (f"config.quirks.* moved: use --config.loss_options.{term}.{option}{sep}{value} instead of {arg} "
            f"(an option of the {term!r} loss term, so the method must have that term)")
  return None


# absl's text for a value its parser rejects: "flag --name=value: reason".
_BAD_VALUE = re.compile(r"^flag --([\w.]+)=(.*?): ", re.S)
_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
               "tuple": "a tuple"}


def _wrong_type(text: str, flag_values) -> str | None:
  """'--config.seed=1.5: config.seed expects an integer' for a rejected value, else None."""
  m = _BAD_VALUE.match(text)
  if not m or m.group(1) not in flag_values:
    return None
  name, value = m.group(1), m.group(2)
  kind = flag_values[name].flag_type()
  if kind not in _TYPE_NAMES:  # e.g. the config file flag: its own message says more
    return None
  return f"--{name}={value}: {name} expects {_TYPE_NAMES[kind]}, got {value!r}"
