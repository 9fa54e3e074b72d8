"""Tests for incseg_jax.tasks.scenario: scenario strings, class orders and the `num_fg` check."""

import re

import numpy as np
import pytest

from incseg_jax import tasks

GOOD = [
  ("15-5", 20, (15, 5)),
  ("15-1", 20, (15, 1, 1, 1, 1, 1)),
  ("19-1", 20, (19, 1)),
  ("10-1", 20, (10,) + (1,) * 10),
  ("10-5-5", 20, (10, 5, 5)),
  ("10-5-3-2", 20, (10, 5, 3, 2)),
  (" 15-5 ", 20, (15, 5)),
  ("joint", 20, (20,)),
  ("offline", 20, (20,)),
  ("Joint", 150, (150,)),
  ("100-10", 150, (100, 10, 10, 10, 10, 10)),
  ("100-50", 150, (100, 50)),
  ("50-50", 150, (50, 50, 50)),
  ("13-1", 19, (13, 1, 1, 1, 1, 1, 1)),
  ("13-6", 19, (13, 6)),
]


@pytest.mark.parametrize("task,num_fg,expected", GOOD)
def test_parse_scenario_good(task, num_fg, expected):
  assert tasks.parse_scenario(task, num_fg) == expected


# One case per rejection path of the parser.
BAD = [
  ("15-6", "not a multiple of 6"),
  ("20-1", "already covers all 20"),
  ("21-1", "21 > 20"),
  ("0-5", "at least one class"),
  ("15-0", "at least one class"),  # would otherwise be a modulo by zero
  ("10-5-0-5", "at least one class"),
  ("10-5-4", "sum to 19, not 20"),
  ("a-b", "not a non-negative integer"),
  ("15.0-5", "not a non-negative integer"),
  ("-15-5", "not a non-negative integer"),
  ("", "not a non-negative integer"),
  ("15-5s", "'15-5s' is '15-1'"),
  ("15", "single number"),
  (15, "must be a string"),
]


@pytest.mark.parametrize("task,fragment", BAD)
def test_parse_scenario_bad(task, fragment):
  with pytest.raises(ValueError) as err:
    tasks.parse_scenario(task, 20)
  msg = str(err.value)
  # Every rejection quotes the string, gives the class count and says what was expected.
  assert f"Invalid scenario {task!r} for a dataset with 20 foreground classes" in msg
  assert "Expected 'a-b'" in msg
  assert fragment in msg


def test_make_plan_reports_a_bad_scenario_the_same_way():
  with pytest.raises(ValueError, match="'2-3' for a dataset with 6 foreground classes"):
    tasks.make_plan("2-3", 6)


@pytest.mark.parametrize("num_fg", [0, -1, True, 2.0, "6", None])
def test_num_fg_checked_by_every_entry(num_fg):
  for call in (
    lambda: tasks.parse_scenario("joint", num_fg),
    lambda: tasks.resolve_class_order("dataset", num_fg),
  ):
    with pytest.raises(ValueError, match=re.escape(f"num_fg must be a positive int, got {num_fg!r}")):
      call()
  with pytest.raises(ValueError, match=re.escape(f"num_fg must be an int in 1..254, got {num_fg!r}")):
    tasks.make_plan("joint", num_fg)


def test_num_fg_bounds():
  # parse_scenario and resolve_class_order have no upper bound; make_plan's LUTs stop at 254 classes.
  assert tasks.parse_scenario("joint", 300) == (300,)
  assert tasks.resolve_class_order("dataset", np.int64(3)) == (1, 2, 3)
  assert tasks.make_plan("joint", np.int64(254)).num_fg == 254
  with pytest.raises(ValueError, match=re.escape("num_fg must be an int in 1..254, got 255")):
    tasks.make_plan("joint", 255)


# ----------------------------------------------------------------------------------------
# resolve_class_order
# ----------------------------------------------------------------------------------------


def test_order_dataset():
  assert tasks.resolve_class_order("dataset", 5) == (1, 2, 3, 4, 5)
  assert tasks.resolve_class_order(" Dataset ", 5) == (1, 2, 3, 4, 5)


def test_order_frequency_with_ties():
  # Index 0 (background) is huge and must not appear; 2 and 4 tie, as do 1 and 5.
  counts = np.array([10**12, 7, 30, 50, 30, 7], dtype=np.int64)
  assert tasks.resolve_class_order("frequency", 5, pixel_counts=counts) == (3, 2, 4, 1, 5)
  # Extra entries beyond num_fg (e.g. ignore bins) are ignored.
  longer = np.concatenate([counts, [10**15]])
  assert tasks.resolve_class_order("frequency", 5, pixel_counts=longer) == (3, 2, 4, 1, 5)


def test_order_frequency_large_counts_exact():
  # Counts differing by 1 above 2**53 must still be ordered exactly.
  big = 2**60
  assert tasks.resolve_class_order("frequency", 2, pixel_counts=[0, big, big + 1]) == (2, 1)


def test_order_frequency_needs_counts():
  with pytest.raises(ValueError, match="pixel_counts"):
    tasks.resolve_class_order("frequency", 5)
  with pytest.raises(ValueError, match="length >= num_fg"):
    tasks.resolve_class_order("frequency", 5, pixel_counts=[1, 2, 3, 4, 5])


def test_order_random_deterministic():
  a = tasks.resolve_class_order("random", 20, seed=3)
  assert a == tasks.resolve_class_order("random", 20, seed=3)
  assert a != tasks.resolve_class_order("random", 20, seed=4)
  assert a == tuple(int(x) for x in np.random.default_rng(3).permutation(np.arange(1, 21)))
  assert a != tuple(range(1, 21))


def test_order_explicit():
  assert tasks.resolve_class_order([3, 1, 2], 3) == (3, 1, 2)
  assert tasks.resolve_class_order("3, 1,2", 3) == (3, 1, 2)
  assert tasks.resolve_class_order(np.array([2, 3, 1]), 3) == (2, 3, 1)
  assert tasks.resolve_class_order([3.0, 1, 2], 3) == (3, 1, 2)


def test_order_explicit_invalid_lists_problems():
  with pytest.raises(ValueError) as err:
    tasks.resolve_class_order([1, 1, 4, 7], 4)
  msg = str(err.value)
  assert "permutation of 1..4" in msg
  assert "missing: [2, 3]" in msg
  assert "duplicated: [1]" in msg
  assert "out of range: [7]" in msg
  with pytest.raises(ValueError, match=re.escape("missing: [3]")):
    tasks.resolve_class_order("1,2", 3)
  with pytest.raises(ValueError, match=re.escape("out of range: [0]")):
    tasks.resolve_class_order([0, 1, 2, 3], 3)
  with pytest.raises(ValueError, match="must be ints"):
    tasks.resolve_class_order([1.5, 2, 3], 3)
  with pytest.raises(ValueError, match="must be ints"):
    tasks.resolve_class_order([True, 2, 3], 3)
  with pytest.raises(ValueError, match="empty entry"):
    tasks.resolve_class_order("1,,2", 2)
  with pytest.raises(ValueError, match="must be 1-D"):
    tasks.resolve_class_order(np.array([[1, 2]]), 2)


@pytest.mark.parametrize("order", ["alphabetical", 3])
def test_order_unknown_lists_the_names(order):
  with pytest.raises(ValueError) as err:
    tasks.resolve_class_order(order, 3)
  msg = str(err.value)
  assert f"Unknown class order {order!r}" in msg
  for name in tasks.ORDER_NAMES:
    assert name in msg
