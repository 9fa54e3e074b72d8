"""Directory snapshots for tests that must show nothing was written or overwritten."""

import os


def snapshot(directory) -> dict:
  """Every file under `directory` with its bytes: equal snapshots = nothing written or overwritten."""
  out = {}
  for base, _, names in os.walk(directory):
    for name in names:
      with open(os.path.join(base, name), "rb") as f:
        out[os.path.relpath(os.path.join(base, name), directory)] = f.read()
  return out
