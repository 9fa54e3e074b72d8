"""Continual summaries (incseg_jax/continual.py) on a hand-computed three-step run."""

import pytest

from incseg_jax import continual


def step(ious, present, new_channels, miou, old=None, new=None):
  return {"new_channels": new_channels,
          "metrics": {"iou": ious, "present": present, "miou": miou, "miou_old": old, "miou_new": new}}


# Channels: 0 background, 1-2 learned at step 0, 3 at step 1, 4 at step 2.
# IoU after each step (rows) per channel (columns):
#   step 0: bg 0.9, c1 0.8, c2 0.6
#   step 1: bg 0.9, c1 0.5, c2 0.7, c3 0.4
#   step 2: bg 0.8, c1 0.2, c2 0.3, c3 0.1, c4 0.6   (c2 absent from the ground truth at step 1: left out there)
STEPS = [
    step([0.9, 0.8, 0.6], [True] * 3, [1, 2], miou=0.7667),
    step([0.9, 0.5, 0.7, 0.4], [True, True, False, True], [3], miou=0.6),
    step([0.8, 0.2, 0.3, 0.1, 0.6], [True] * 5, [4], miou=0.4, old=0.2, new=0.6),
]


def test_average_incremental_miou():
  assert continual.average_miou(STEPS) == pytest.approx((0.7667 + 0.6 + 0.4) / 3)


def test_forgetting_by_hand():
  # c1: best of steps 0-1 = 0.8, final 0.2 -> 0.6; c2: best 0.6 (step 1 absent) -> 0.3; c3: 0.4 - 0.1 = 0.3.
  assert continual.forgetting(STEPS) == pytest.approx((0.6 + 0.3 + 0.3) / 3)


def test_backward_transfer_by_hand():
  # Step 0's classes: after the last step (0.2 + 0.3) / 2 = 0.25, right after step 0 0.7 -> -0.45.
  # Step 1's class c3: 0.1 - 0.4 = -0.3.
  assert continual.backward_transfer(STEPS) == pytest.approx((-0.45 - 0.3) / 2)


def test_harmonic_mean_and_summary():
  assert continual.harmonic_mean(0.2, 0.6) == pytest.approx(0.3)
  assert continual.harmonic_mean(0.0, 0.0) == 0.0 and continual.harmonic_mean(None, 0.5) is None
  s = continual.summary(STEPS)
  assert set(s) == set(continual.SUMMARY_KEYS) and s["harmonic_mean"] == pytest.approx(0.3)


def test_no_forgetting_when_nothing_changes_and_single_step_runs():
  same = [step([0.9, 0.8], [True] * 2, [1], 0.85), step([0.9, 0.8, 0.5], [True] * 3, [2], 0.73, 0.8, 0.5)]
  assert continual.forgetting(same) == 0.0 and continual.backward_transfer(same) == 0.0
  assert continual.forgetting(same[:1]) is None and continual.backward_transfer(same[:1]) is None
