"""Continual-learning summaries of a run: average incremental mIoU, forgetting, backward transfer, harmonic mean.

Each is a pure function of a run's per-step records (`results.json`
"steps"): the per-class IoU after every task step, indexed by channel (a
channel is the same class at every step), and which classes each step added.
Definitions with formulas: docs/metrics.md. Classes absent from the
evaluation split's ground truth are left out of every mean, as the mIoU
itself leaves them out.
"""

from __future__ import annotations

from typing import Any, Sequence

SUMMARY_KEYS = ("avg_miou", "forgetting", "bwt", "harmonic_mean")


def _iou(step: dict[str, Any], channel: int) -> float | None:
  """IoU of `channel` after `step`, or None where it is not scored (not present, not learned yet)."""
  m = step["metrics"]
  if channel >= len(m["iou"]) or m["iou"][channel] is None:
    return None
  if not m.get("present", [True] * len(m["iou"]))[channel]:
    return None
  return float(m["iou"][channel])


def _mean(values: Sequence[float | None]) -> float | None:
  vals = [v for v in values if v is not None]
  return sum(vals) / len(vals) if vals else None


def average_miou(steps: Sequence[dict[str, Any]]) -> float | None:
  """Mean over task steps of the mIoU of all classes seen so far (background included), after each step."""
  return _mean([s["metrics"]["miou"] for s in steps])


def forgetting(steps: Sequence[dict[str, Any]]) -> float | None:
  """Mean over the classes learned before the last step of (best IoU after its step, before the last) - final IoU.

  None for a single-step run or when no such class is scored.
  """
  if len(steps) < 2:
    return None
  last = steps[-1]
  drops = []
  for t, step in enumerate(steps[:-1]):
    for c in step["new_channels"]:
      earlier = [_iou(s, c) for s in steps[t:-1]]
      earlier = [v for v in earlier if v is not None]
      final = _iou(last, c)
      if earlier and final is not None:
        drops.append(max(earlier) - final)
  return _mean(drops)


def backward_transfer(steps: Sequence[dict[str, Any]]) -> float | None:
  """Mean over steps i < T of (mIoU of step i's classes after the last step T) - (the same right after step i).

  Negative: the later steps lowered what earlier steps had learned. None for a single-step run.
  """
  if len(steps) < 2:
    return None
  last = steps[-1]
  terms = []
  for step in steps[:-1]:
    after = _mean([_iou(last, c) for c in step["new_channels"]])
    then = _mean([_iou(step, c) for c in step["new_channels"]])
    if after is not None and then is not None:
      terms.append(after - then)
  return _mean(terms)


def harmonic_mean(old: float | None, new: float | None) -> float | None:
  """2 old new / (old + new) of the final step's old- and new-class mIoU (0 when both are 0)."""
  if old is None or new is None:
    return None
  return 0.0 if old + new == 0 else 2 * old * new / (old + new)


def summary(steps: Sequence[dict[str, Any]]) -> dict[str, float | None]:
  """All four, keyed by `SUMMARY_KEYS`; the harmonic mean of the last step's `miou_old` / `miou_new`."""
  last = steps[-1]["metrics"]
  return {"avg_miou": average_miou(steps), "forgetting": forgetting(steps), "bwt": backward_transfer(steps),
          "harmonic_mean": harmonic_mean(last.get("miou_old"), last.get("miou_new"))}
