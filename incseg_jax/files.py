"""Small files a run writes and reads back: atomic writes, JSON diffs, free space, identity files.

Every file a later command reads (config.json, done.json, identity.json,
results.*) is written with `write_text_atomic`, so a reader, or a rerun after
a kill, sees the old or the new file and never half of one. `json_diff` is
the one comparison behind "this workdir holds another experiment" (configs)
and "this checkpoint is another experiment's" (identity files).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from typing import Any

import jax

IDENTITY_FILE = "identity.json"
# Free space asked for beyond the state's own bytes: orbax's metadata files
# and the filesystem's block rounding.
_SPACE_MARGIN_FRACTION = 0.1
_SPACE_MARGIN_BYTES = 1 << 20


class NoSpaceError(OSError):
  """Too little free disk space to write a checkpoint (errno ENOSPC)."""

  def __init__(self, message: str):
    super().__init__(errno.ENOSPC, message)

  def __str__(self) -> str:
    return self.strerror


class MismatchError(ValueError):
  """Saved states that are not what this run expects (another model, class split or shapes)."""


def write_text_atomic(path: str, text: str) -> None:
  """Writes a file so that a reader (or a rerun after a kill) sees either the old or the new one."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON atomically (see `write_text_atomic`)."""
  write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def json_diff(a: Any, b: Any, path: str = "", defaults: Any = None, elementwise: bool = True) -> list[str]:
  """Lists where two JSON values differ, one "path: a vs b" line each.

  Args:
    a: the saved value (parsed JSON).
    b: the current value.
    path: dotted path prefix for the lines.
    defaults: default values of fields added since `a` was saved (same
      nesting): such a field absent from `a` counts as equal when `b` holds
      its default (for a dict, when every entry does).
    elementwise: compare lists of equal length element by element (identity
      files, where "which head differs" matters); off, a list is one value
      (config tuples such as atrous rates read better whole).

  Returns:
    The differing paths, sorted by key; empty when equal.
  """
  if isinstance(a, dict) and isinstance(b, dict):
    defaults = defaults if isinstance(defaults, dict) else {}
    out = []
    for key in sorted(set(a) | set(b)):
      where = f"{path}.{key}" if path else str(key)
      if key in a and key in b:
        out += json_diff(a[key], b[key], where, defaults.get(key), elementwise)
      elif not (key in b and key in defaults and _is_default(b[key], defaults[key])):
        out.append(f"{where}: {_short(a.get(key, '<absent>'))} vs {_short(b.get(key, '<absent>'))}")
    return out
  if elementwise and isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a != b:
    return [line for i, (x, y) in enumerate(zip(a, b)) for line in json_diff(x, y, f"{path}[{i}]")]
  return [] if a == b else [f"{path}: {_short(a)} vs {_short(b)}"]


def _is_default(value: Any, default: Any) -> bool:
  """Whether `value` equals `default` (a dict: every entry equals its default)."""
  if isinstance(value, dict) and isinstance(default, dict):
    return all(k in default and _is_default(v, default[k]) for k, v in value.items())
  return value == default


def _short(value: Any) -> str:
  """repr, with long lists abbreviated to their ends and length."""
  if isinstance(value, list) and len(value) > 6:
    return f"[{', '.join(map(repr, value[:3]))}, ..., {value[-1]!r}] ({len(value)} items)"
  return repr(value)


def tree_bytes(tree: Any) -> int:
  """Total bytes of the arrays in a pytree (global sizes)."""
  return int(sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(tree)))


def check_free_space(directory: str, tree: Any, kept: str) -> None:
  """Raises NoSpaceError unless `directory`'s disk holds `tree` (plus a margin).

  Args:
    directory: where the tree is about to be written.
    tree: the arrays to write.
    kept: what stays usable if the write cannot happen, for the message.
  """
  needed = int(tree_bytes(tree) * (1 + _SPACE_MARGIN_FRACTION)) + _SPACE_MARGIN_BYTES
  free = shutil.disk_usage(directory).free
  if free < needed:
    raise NoSpaceError(f"not enough free disk space for a checkpoint in {directory}: needs about {needed:,} bytes, "
                       f"{free:,} free; {kept}. Free some space and rerun the same command to resume.")


def is_enospc(exc: BaseException) -> bool:
  """Whether `exc` (or what it wraps) is a "no space left on device" error."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(exc):  # tensorstore reports it as text
      return True
    exc = exc.__cause__ or exc.__context__
  return False


def write_identity(directory: str, identity: dict[str, Any]) -> None:
  """Records what the states in `directory` are (before the first one is written)."""
  os.makedirs(directory, exist_ok=True)
  write_json_atomic(os.path.join(directory, IDENTITY_FILE), identity)


def check_identity(directory: str, expected: dict[str, Any], what: str = "",
                   defaults: dict[str, Any] | None = None, name: str = "") -> bool:
  """Checks that the states in `directory` are `expected`.

  Args:
    directory: holds the identity file and the states it describes.
    expected: the identity this run would write.
    what: how the caller uses the states, for the message ("teacher", "resume").
    defaults: values of fields added since the identity was saved (see
      `json_diff`).
    name: what the directory holds, for the message (e.g. "task step 1").

  Returns:
    False when the directory has no identity file (nothing saved yet, or a
    run of a version that did not write one: nothing to compare), else True.

  Raises:
    MismatchError: the identities differ; the message lists how.
  """
  path = os.path.join(directory, IDENTITY_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    saved = json.load(f)
  expected = json.loads(json.dumps(expected))  # tuples -> lists, as saved
  differences = json_diff(saved, expected, defaults=defaults or {})
  if differences:
    raise MismatchError(
        f"{directory} holds {name or 'the states'} of a different experiment, so it cannot serve "
        f"{what or 'this run'}; differing (saved vs now):\n  " + "\n  ".join(differences))
  return True
