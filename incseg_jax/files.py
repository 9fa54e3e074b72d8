"""Small files a run writes and reads back: atomic writes, JSON diffs, free space, identity files, locks.

Every file a later command reads (config.json, done.json, identity.json,
results.*) is written with `write_text_atomic`, so a reader, or a rerun after
a kill, sees the old or the new file and never half of one, and read back with
`read_json`, which names a damaged file and what to do about it. `json_diff`
is the one comparison behind "this workdir holds another experiment" (configs)
and "this checkpoint is another experiment's" (identity files).
`hold_lock` keeps two processes out of one directory; `unwritable` says why a
directory cannot be written before anything tries to.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from typing import Any, Iterator

import jax

IDENTITY_FILE = "identity.json"
LOCK_FILE = "run.lock"  # see `hold_lock`
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


class CorruptFileError(ValueError):
  """A JSON file this tool wrote that no longer parses (truncated, overwritten, disk damage)."""


class LockedError(ValueError):
  """A directory another live process holds the lock of."""


def parse_json(text: str, path: str, what: str, remedy: str) -> Any:
  """`json.loads(text)`, or an error naming the file `text` came from.

  Args:
    text: the file's content.
    path: the file, for the message.
    what: what the file is, for the message (e.g. "the run's config").
    remedy: what the user can do about a damaged one.

  Raises:
    CorruptFileError: `text` is not JSON (a truncated or damaged file).
  """
  try:
    return json.loads(text)
  except ValueError as e:  # JSONDecodeError; an empty file is one too
    raise CorruptFileError(f"{path} is damaged or truncated (not valid JSON: {e}); it holds {what}. "
                           f"{remedy}") from None


def read_json(path: str, what: str, remedy: str) -> Any:
  """Reads a JSON file this tool wrote; a damaged one is named (see `parse_json`).

  Raises:
    CorruptFileError: the file is not valid JSON (or not text).
    FileNotFoundError: there is no such file.
  """
  return parse_json(read_text(path, what, remedy), path, what, remedy)


def read_results(path: str) -> Any:
  """A run's results.json (`read_json` with what it is and how it is rewritten)."""
  return read_json(path, "the run's results (the records of its finished task steps)",
                   "Rerun the run's command to rewrite it: finished task steps are skipped and their records "
                   "(done.json) re-read.")


def read_text(path: str, what: str, remedy: str) -> str:
  """A text file's content; bytes that are not UTF-8 name the file (see `parse_json`).

  Raises:
    CorruptFileError: the file does not decode as UTF-8.
  """
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError as e:
    raise CorruptFileError(f"{path} is damaged (not UTF-8 text: {e}); it holds {what}. {remedy}") from None


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
  saved = read_json(path, f"the identity of the states in {directory} (which experiment they belong to)",
                    f"Delete it to use those states without this check (the next run records its own), or "
                    f"delete {directory} to train that task step again.")
  expected = json.loads(json.dumps(expected))  # tuples -> lists, as saved
  differences = json_diff(saved, expected, defaults=defaults or {})
  if differences:
    raise MismatchError(
        f"{directory} holds {name or 'the states'} of a different experiment, so it cannot serve "
        f"{what or 'this run'}; differing (saved vs now):\n  " + "\n  ".join(differences))
  return True


def unwritable(directory: str) -> str | None:
  """Why this process cannot create files in `directory` (created if missing), or None when it can.

  Nothing is written: a missing directory is judged by its deepest existing
  ancestor, where it would be created. `os.access` asks the kernel with this
  process's permissions, so a read-only mount counts as unwritable.

  Returns:
    None, or a phrase such as "is not writable (permission denied)" or
    "cannot be created: '/a' is a file", to follow the directory's name.
  """
  path = os.path.abspath(directory)
  if os.path.exists(path) and not os.path.isdir(path):
    return "is an existing file, not a directory"
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    return f"cannot be created: {existing!r} is a file"
  if not os.access(existing, os.W_OK | os.X_OK):
    reason = "read-only file system" if _read_only_mount(existing) else "permission denied"
    return (f"is not writable ({reason})" if existing == path
            else f"cannot be created: {existing!r} is not writable ({reason})")
  return None


def _read_only_mount(path: str) -> bool:
  try:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except OSError:
    return False


def lock_path(directory: str) -> str:
  return os.path.join(directory, LOCK_FILE)


@contextlib.contextmanager
def hold_lock(directory: str, what: str = "directory") -> Iterator[None]:
  """Holds `<directory>/run.lock` for the duration of the block; another live holder is refused.

  `fcntl.flock` is the lock: the kernel releases it when its holder exits in
  any way (even `kill -9`), so a crashed run never leaves a stale lock, and
  the next run takes it over. The holder's PID, command and start time are
  written into the file only for the message of a refused process. The file
  is removed on release while still locked; a process that opened it just
  before then finds its path gone or pointing at another file after locking
  and starts over, so two processes never both believe they hold it.

  Args:
    directory: an existing directory.
    what: what the directory is, for the message ("workdir").

  Raises:
    LockedError: another process holds the lock; the message names it.
  """
  path = lock_path(directory)
  fd = _lock(path, what)
  if fd is None:  # a filesystem without locks: run unprotected rather than not at all
    yield
    return
  try:
    started = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "command": _command(), "host": socket.gethostname(),
                             "started": started}).encode())
    yield
  finally:
    with contextlib.suppress(OSError):
      os.unlink(path)  # while still locked (see above)
    os.close(fd)


def _lock(path: str, what: str) -> int | None:
  """The descriptor of `path`, opened and flock-ed; None where the filesystem cannot lock.

  Raises:
    LockedError: another process holds it.
  """
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise LockedError(f"{what} {os.path.dirname(path)} is in use by another run: {_holder(path)}. Wait for it "
                        f"to finish or stop it; its lock ({path}) is released when that process exits, even if it "
                        "is killed.") from None
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):
        raise
      print(f"warning: cannot lock {path} ({e.strerror}); make sure no other run uses this {what}",
            file=sys.stderr, flush=True)
      return None
    try:
      if os.stat(path).st_ino == os.fstat(fd).st_ino:
        return fd
    except FileNotFoundError:
      pass
    os.close(fd)  # the previous holder removed this file after we opened it: lock the one there now


def _command() -> str:
  """This process's command line as typed (`python -m incseg_jax.main ...`, from /proc when there is one)."""
  try:
    with open("/proc/self/cmdline", "rb") as f:
      args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
  except OSError:
    args = [sys.executable, *sys.argv]
  return " ".join(args)


def _holder(path: str) -> str:
  """'process 1234 (command), started ... on host' from a held lock file."""
  # The holder writes its record right after locking: a refused process may look in between.
  for _ in range(20):
    try:
      with open(path) as f:
        record = json.load(f)
      break
    except (OSError, ValueError):
      time.sleep(0.05)
  else:
    return "a process whose record in the lock file is not readable"
  return (f"process {record.get('pid')} ({record.get('command')}), started {record.get('started')} "
          f"on {record.get('host')}")
