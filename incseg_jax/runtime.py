"""Process-level setup shared by the command-line entry points.

Turns on JAX's persistent compilation cache (a re-run compiles the train step
in ~1 s instead of ~8 s on CPU), keeps TensorFlow off accelerators (it only
feeds data), and turns expected user errors into one clear line and exit
code 2 instead of a traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import gc
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


def use_compilation_cache() -> None:
  """Turns on JAX's persistent compilation cache in `cache_dir()`, for every program."""
  jax.config.update("jax_compilation_cache_dir", cache_dir())
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def setup(tensorflow: bool = True) -> None:
  """Compilation cache on; TensorFlow hidden from GPUs/TPUs (`tensorflow=False`: later, by the caller); a fast exit."""
  use_compilation_cache()
  # At exit the interpreter's last garbage collection walks every object TensorFlow, JAX and flax made. After
  # a 3-step shapes run that exit took 1.8-1.9 s, and 0.4-0.5 s with every object frozen first
  # (docs/benchmarks.md, "Overheads of a small run").
  # The collection skips frozen objects; reference cycles among them are left to the OS, which takes the
  # process's memory back anyway, and Python never promised their finalizers run at exit.
  atexit.register(gc.freeze)
  if tensorflow:
    hide_accelerators_from_tensorflow()


def hide_accelerators_from_tensorflow() -> None:
  """Imports TensorFlow (~5 s) and keeps it off GPUs and TPUs: it only feeds data, JAX owns the devices.

  Must precede TensorFlow's first use of a device (its first op), not its import.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  with contextlib.suppress(Exception):
    tf.config.set_visible_devices([], "TPU")


def setup_command(argv: list[str], tensorflow: bool = True) -> None:
  """What every command line does first: refuse stray arguments, quiet absl logging, `setup(tensorflow)`.

  absl logging goes to WARNING unless `--verbosity` was given: orbax logs
  every file it reads or writes at INFO.
  """
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  setup(tensorflow)


@contextlib.contextmanager
def clear_errors():
  """Reports expected failures as one line (their message), exit code 2.

  Expected: ValueError (bad config or data, mismatched checkpoint),
  FileNotFoundError, FloatingPointError (non-finite loss), a full disk
  (OSError ENOSPC) and a file the process may not read or write (EACCES,
  EPERM, EROFS). Anything else is a bug and keeps its traceback.
  """
  try:
    yield
  except EXPECTED_ERRORS as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  except OSError as e:
    if e.errno == errno.ENOSPC:
      print(f"error: {e}", file=sys.stderr, flush=True)
    elif e.errno in _PERMISSION_ERRNOS and e.filename:
      # The places a run writes are checked up front with a message of their
      # own; this names any other file the process may not touch.
      print(f"error: cannot write or read {e.filename} ({e.strerror}); expected a location this process may "
            "use: check its permissions, or choose another directory", file=sys.stderr, flush=True)
    else:
      raise
    sys.exit(2)


_PERMISSION_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that reports a bad config as one line, exit code 2.

  ml_collections wraps an exception raised inside `get_config` (unknown
  method, malformed argument) in a flags error whose text is a full traceback;
  the user needs only its last line. A config file that does not exist (or
  fails to load) it reports only when the config is first used, deep inside
  the run: checked here instead. An override of a field the config lacks
  names the flag and ml_collections' suggestion.
  """
  missing = _missing_config_file(argv, flags.FLAGS)
  if missing:
    print(f"error: {missing}", file=sys.stderr, flush=True)
    sys.exit(2)
  try:
    rest = flags.FLAGS(argv)
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
    print(f"error: {_unknown_field(e, argv)}", file=sys.stderr, flush=True)
    sys.exit(2)
  unloadable = _unloadable_config(flags.FLAGS)
  if unloadable:
    print(f"error: {unloadable}", file=sys.stderr, flush=True)
    sys.exit(2)
  return rest


def _config_file_flags(flag_values) -> list[str]:
  """Names of the flags whose value is a config file (`config_flags.DEFINE_config_file`)."""
  # The parser class is not exported by ml_collections' package; its module is stable.
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  return [name for name in flag_values if isinstance(flag_values[name].parser, config_flags.ConfigFileFlagParser)]


def _missing_config_file(argv: list[str], flag_values) -> str | None:
  """The message for a `--config=FILE[:arg]` whose FILE does not exist, else None.

  ml_collections defers this error to the first use of the config, where it
  surfaces as a traceback from deep inside the run.
  """
  names = set(_config_file_flags(flag_values))
  for i, arg in enumerate(argv[1:], start=1):
    name, sep, value = arg.partition("=")
    if not name.startswith("--") or name[2:] not in names:
      continue
    if not sep:  # "--config FILE"
      value = argv[i + 1] if i + 1 < len(argv) else ""
    path = value.split(":", 1)[0]
    if os.path.isfile(path):
      continue
    problem = "is a directory" if os.path.isdir(path) else "does not exist"
    where = path if os.path.isdir(path) else os.path.dirname(path) or "."
    known = sorted(f for f in os.listdir(where) if f.endswith(".py")) if os.path.isdir(where) else []
    listing = f"; the config files in {where}: {', '.join(known)}" if known else ""
    return (f"{name}={value}: the config file {path!r} {problem} (relative paths start at {os.getcwd()}); "
            f"expected a Python file defining get_config(arg), e.g. configs/shapes.py{listing}")
  return None


def _unloadable_config(flag_values) -> str | None:
  """The message for a config file that exists but failed to load (an OSError inside it), else None."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  for name in _config_file_flags(flag_values):
    value = flag_values[name].value
    if type(value).__name__ == "_ErrorConfig":  # ml_collections' stand-in that raises on first use
      cause = object.__getattribute__(value, "_error")
      lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
      return (f"--{name}={config_flags.get_config_filename(flag_values[name])}: the config file cannot be "
              f"loaded: {lines[-1] if lines else cause}")
  return None


def _unknown_field(e: Exception, argv: list[str]) -> str:
  """'--config.sed: the config has no field 'sed' there; did you mean --config.seed? ...'.

  ml_collections raises KeyError (or AttributeError wrapping one) whose
  argument is "'sed'\\nDid you mean \"seed\" instead of \"sed\"?"; `str()` of a
  KeyError is the repr of that text, quotes and newline escaped, so the text
  is taken from `args`.
  """
  text = e
  while isinstance(text, BaseException) and text.args:
    text = text.args[0]
  text = str(text)
  first = text.splitlines()[0].strip() if text.strip() else ""
  quoted = re.search(r'^Key "([^"]+)" does not exist', first)
  key = (quoted.group(1) if quoted else first).strip("\"' ").split(".")[-1]
  suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"\?', text)
  names = [a.split("=")[0] for a in argv if a.startswith("--config.")]
  args = [n for n in names if key in n[len("--config."):].split(".")]
  where = args[0] if args else f"a --config.<...>.{key} override"
  hint = " (options exist only for the loss terms of the chosen method)" if "loss_options" in where else ""
  if suggestion and args:
    parts = where.split(".")
    parts[parts.index(key)] = suggestion.group(1)
    hint += f" (did you mean {'.'.join(parts)}?)"
  elif suggestion:
    hint += f" (did you mean {suggestion.group(1)!r}?)"
  return f"{where}: the config has no field {key!r} there{hint}; pass --helpfull to see the fields"


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
