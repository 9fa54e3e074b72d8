"""Tests for incseg_jax.tasks: scenario parsing, class orders, image filters and LUTs."""

import re

import numpy as np
import pytest

from incseg_jax import tasks

IGN = 255

# num_fg = 6, scenario "2-2": steps {1, 2}, {3, 4}, {5, 6} with the dataset order.
# Some entries carry background 0 and ignore 255, as np.unique(label) would.
IMAGES = [
  [1],  # 0: step-0 class only
  [0, 1, 3],  # 1: old + step-1 class
  [3, 5],  # 2: step-1 and step-2 classes
  [5, 255],  # 3: step-2 class only
  [2, 6],  # 4: step-0 class with a future class
  [],  # 5: nothing
  [0, 255],  # 6: background and void only
  [3],  # 7: step-1 class only
  [1, 4, 0],  # 8: old + step-1 class
]

EXPECTED_MEMBERS = {
  "overlapped": [[0, 1, 4, 8], [1, 2, 7, 8], [2, 3, 4]],
  "disjoint": [[0], [1, 7, 8], [2, 3, 4]],
  "sequential": [[0], [1, 7, 8], [2, 3, 4]],
}


def _lut_expect(head, rest=IGN, last=IGN):
  """A full 256-entry LUT from its first entries, the 'junk' value and entry 255."""
  lut = np.full(256, rest, dtype=np.uint8)
  lut[: len(head)] = head
  lut[255] = last
  return lut


# ----------------------------------------------------------------------------------------
# parse_scenario
# ----------------------------------------------------------------------------------------

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


BAD = [
  ("15-6", 20, "not a multiple of 6"),
  ("20-1", 20, "already covers all 20"),
  ("21-1", 20, "21 > 20"),
  ("0-5", 20, "at least one class"),
  ("15-0", 20, "at least one class"),
  ("10-5-0-5", 20, "at least one class"),
  ("10-5-4", 20, "sum to 19, not 20"),
  ("10-5-6", 20, "sum to 21, not 20"),
  ("a-b", 20, "not a non-negative integer"),
  ("15.0-5", 20, "not a non-negative integer"),
  ("-15-5", 20, "not a non-negative integer"),
  ("15-5s", 20, "'15-5s' is '15-1'"),
  ("15", 20, "single number"),
  ("", 20, "not a non-negative integer"),
  ("100-10", 20, "100 > 20"),
]


@pytest.mark.parametrize("task,num_fg,fragment", BAD)
def test_parse_scenario_bad(task, num_fg, fragment):
  with pytest.raises(ValueError) as err:
    tasks.parse_scenario(task, num_fg)
  msg = str(err.value)
  assert repr(task) in msg  # quotes the string
  assert f"{num_fg} foreground classes" in msg  # gives the class count
  assert "Expected 'a-b'" in msg  # says what was expected
  assert fragment in msg


def test_parse_scenario_bad_num_fg():
  with pytest.raises(ValueError, match="num_fg"):
    tasks.parse_scenario("15-5", 0)


# ----------------------------------------------------------------------------------------
# resolve_class_order
# ----------------------------------------------------------------------------------------


def test_order_dataset():
  assert tasks.resolve_class_order("dataset", 5) == (1, 2, 3, 4, 5)


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
  counts = [0, big, big + 1]
  assert tasks.resolve_class_order("frequency", 2, pixel_counts=counts) == (2, 1)


def test_order_frequency_needs_counts():
  with pytest.raises(ValueError, match="pixel_counts"):
    tasks.resolve_class_order("frequency", 5)
  with pytest.raises(ValueError, match="length >= num_fg"):
    tasks.resolve_class_order("frequency", 5, pixel_counts=[1, 2, 3, 4, 5])


def test_order_random_deterministic():
  a = tasks.resolve_class_order("random", 20, seed=3)
  b = tasks.resolve_class_order("random", 20, seed=3)
  c = tasks.resolve_class_order("random", 20, seed=4)
  assert a == b
  assert a != c
  assert sorted(a) == list(range(1, 21))
  expected = tuple(int(x) for x in np.random.default_rng(3).permutation(np.arange(1, 21)))
  assert a == expected
  assert a != tuple(range(1, 21))


def test_order_explicit():
  assert tasks.resolve_class_order([3, 1, 2], 3) == (3, 1, 2)
  assert tasks.resolve_class_order("3, 1,2", 3) == (3, 1, 2)
  assert tasks.resolve_class_order(np.array([2, 3, 1]), 3) == (2, 3, 1)


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
  with pytest.raises(ValueError, match="out of range: \\[0\\]"):
    tasks.resolve_class_order([0, 1, 2, 3], 3)
  with pytest.raises(ValueError, match="must be ints"):
    tasks.resolve_class_order([1.5, 2, 3], 3)


def test_order_unknown_name():
  with pytest.raises(ValueError) as err:
    tasks.resolve_class_order("alphabetical", 3)
  msg = str(err.value)
  assert "'alphabetical'" in msg
  for name in ("dataset", "frequency", "random"):
    assert name in msg


# ----------------------------------------------------------------------------------------
# Image membership
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", tasks.SETTINGS)
def test_membership(setting):
  plan = tasks.make_plan("2-2", 6, setting=setting)
  assert tasks.step_image_indices(plan, IMAGES) == EXPECTED_MEMBERS[setting]
  assert tasks.count_step_images(plan, IMAGES) == [len(m) for m in EXPECTED_MEMBERS[setting]]


def test_membership_sequential_background_labeling_same_filter():
  plan = tasks.make_plan("2-2", 6, setting="sequential", labeling="background")
  assert tasks.step_image_indices(plan, IMAGES) == EXPECTED_MEMBERS["sequential"]


@pytest.mark.parametrize("setting", tasks.SETTINGS)
def test_membership_joint(setting):
  plan = tasks.make_plan("joint", 6, setting=setting)
  # Every image with any foreground class, nothing else.
  assert tasks.step_image_indices(plan, IMAGES) == [[0, 1, 2, 3, 4, 7, 8]]


def test_membership_non_identity_order():
  # Order (5, 6, 3, 4, 1, 2): step 0 = {5, 6}, step 1 = {3, 4}, step 2 = {1, 2}.
  plan = tasks.make_plan("2-2", 6, setting="disjoint", order=[5, 6, 3, 4, 1, 2])
  assert tasks.step_image_indices(plan, IMAGES) == [[3], [2, 7], [0, 1, 4, 8]]
  plan = tasks.make_plan("2-2", 6, setting="overlapped", order=[5, 6, 3, 4, 1, 2])
  assert tasks.step_image_indices(plan, IMAGES) == [[2, 3, 4], [1, 2, 7, 8], [0, 1, 4, 8]]


@pytest.mark.parametrize("setting", ["sequential", "disjoint"])
def test_sequential_never_repeats_an_image(setting):
  rng = np.random.default_rng(0)
  images = [
    sorted(set(rng.choice(np.arange(0, 11), size=rng.integers(0, 5)).tolist()))
    for _ in range(400)
  ]
  order = tasks.resolve_class_order("random", 10, seed=1)
  plan = tasks.make_plan("4-2", 10, setting=setting, order=order)
  members = tasks.step_image_indices(plan, images)
  flat = [i for m in members for i in m]
  assert len(flat) == len(set(flat))
  # Not vacuous: several steps have images.
  assert sum(1 for m in members if m) >= 3
  # Overlapped on the same data does reuse images.
  over = tasks.step_image_indices(tasks.make_plan("4-2", 10, order=order), images)
  flat = [i for m in over for i in m]
  assert len(flat) > len(set(flat))


def test_keep_train_image_ignores_junk_values():
  plan = tasks.make_plan("2-2", 6, setting="disjoint")
  # 200 is neither a class nor the ignore label; it must not block or admit the image.
  assert plan.steps[0].keep_train_image(np.array([0, 1, 200, 255]))
  assert not plan.steps[0].keep_train_image([0, 200, 255])


def test_check_nonempty():
  plan = tasks.make_plan("2-2", 6, setting="disjoint")
  images = [[1], [1, 3, 5], [5, 6]]  # step 1's classes only appear with class 5
  counts = tasks.count_step_images(plan, images)
  assert counts == [1, 0, 2]
  with pytest.raises(ValueError) as err:
    tasks.check_nonempty(plan, counts)
  assert "step 1" in str(err.value) and "[3, 4]" in str(err.value)
  assert "step 0" not in str(err.value)
  tasks.check_nonempty(plan, [1, 1, 2])  # no error
  with pytest.raises(ValueError, match="2 counts for 3 steps"):
    tasks.check_nonempty(plan, [1, 1])


# ----------------------------------------------------------------------------------------
# LUTs
# ----------------------------------------------------------------------------------------

# Expected training LUT heads (values 0..6) for "2-2", num_fg = 6, dataset order.
TRAIN_HEADS = {
  ("overlapped", None): [[0, 1, 2, 0, 0, 0, 0], [0, 0, 0, 3, 4, 0, 0], [0, 0, 0, 0, 0, 5, 6]],
  ("disjoint", None): [[0, 1, 2, 0, 0, 0, 0], [0, 0, 0, 3, 4, 0, 0], [0, 0, 0, 0, 0, 5, 6]],
  ("sequential", "keep"): [[0, 1, 2, 0, 0, 0, 0], [0, 1, 2, 3, 4, 0, 0], [0, 1, 2, 3, 4, 5, 6]],
  ("sequential", "background"): [
    [0, 1, 2, 0, 0, 0, 0],
    [0, 0, 0, 3, 4, 0, 0],
    [0, 0, 0, 0, 0, 5, 6],
  ],
}


@pytest.mark.parametrize("setting,labeling", list(TRAIN_HEADS))
@pytest.mark.parametrize("void_bg", [False, True])
def test_train_lut(setting, labeling, void_bg):
  plan = tasks.make_plan(
    "2-2", 6, setting=setting, labeling=labeling, void_as_background=void_bg
  )
  for step, head in zip(plan.steps, TRAIN_HEADS[(setting, labeling)], strict=True):
    expected = _lut_expect(head, rest=IGN, last=0 if void_bg else IGN)
    np.testing.assert_array_equal(step.train_lut, expected)
    assert step.train_lut.dtype == np.uint8 and step.train_lut.shape == (256,)


def test_sequential_default_labeling_is_keep():
  plan = tasks.make_plan("2-2", 6, setting="sequential")
  assert plan.labeling == "keep"
  np.testing.assert_array_equal(plan.steps[1].train_lut[:7], [0, 1, 2, 3, 4, 0, 0])


EVAL_HEADS = {
  "ignore": [[0, 1, 2, IGN, IGN, IGN, IGN], [0, 1, 2, 3, 4, IGN, IGN], [0, 1, 2, 3, 4, 5, 6]],
  "background": [[0, 1, 2, 0, 0, 0, 0], [0, 1, 2, 3, 4, 0, 0], [0, 1, 2, 3, 4, 5, 6]],
}


@pytest.mark.parametrize("setting,labeling", list(TRAIN_HEADS))
@pytest.mark.parametrize("unseen", tasks.UNSEEN_EVAL)
@pytest.mark.parametrize("void_bg", [False, True])
def test_eval_lut(setting, labeling, unseen, void_bg):
  plan = tasks.make_plan(
    "2-2",
    6,
    setting=setting,
    labeling=labeling,
    unseen_eval=unseen,
    void_as_background=void_bg,
  )
  for step, head in zip(plan.steps, EVAL_HEADS[unseen], strict=True):
    # Void stays ignored at evaluation even when training maps it to background.
    np.testing.assert_array_equal(step.eval_lut, _lut_expect(head))


def test_luts_non_identity_order_and_custom_ignore():
  # Order (4, 6, 1, 2, 3, 5): channels 4->1, 6->2, 1->3, 2->4, 3->5, 5->6.
  plan = tasks.make_plan("2-2", 6, order="4,6,1,2,3,5", ignore_label=250)
  s1 = plan.steps[1]
  assert s1.new_classes == (1, 2) and s1.old_classes == (4, 6)
  assert s1.new_channels == (3, 4) and s1.old_channels == (1, 2)
  assert s1.future_classes == (3, 5)
  assert s1.num_channels == 5
  train = np.full(256, 250, dtype=np.uint8)
  train[:7] = [0, 3, 4, 0, 0, 0, 0]
  np.testing.assert_array_equal(s1.train_lut, train)  # 255 is junk here -> 250
  evl = np.full(256, 250, dtype=np.uint8)
  evl[:7] = [0, 3, 4, 250, 1, 250, 2]
  np.testing.assert_array_equal(s1.eval_lut, evl)
  final = plan.steps[2].eval_lut
  np.testing.assert_array_equal(final[:7], [0, 3, 4, 5, 1, 6, 2])
  # Channel c is order[c - 1]: applying the final LUT to the order gives 1..6.
  np.testing.assert_array_equal(final[list(plan.order)], np.arange(1, 7))


def test_luts_are_read_only():
  plan = tasks.make_plan("2-2", 6)
  with pytest.raises(ValueError):
    plan.steps[0].train_lut[3] = 1


def test_joint_lut_maps_every_class():
  plan = tasks.make_plan("joint", 6, order=[6, 5, 4, 3, 2, 1])
  (step,) = plan.steps
  np.testing.assert_array_equal(step.train_lut[:7], [0, 6, 5, 4, 3, 2, 1])
  np.testing.assert_array_equal(step.eval_lut[:7], [0, 6, 5, 4, 3, 2, 1])
  assert step.train_lut[7] == IGN and step.train_lut[255] == IGN


# ----------------------------------------------------------------------------------------
# Plan structure
# ----------------------------------------------------------------------------------------


def test_plan_structure_voc_15_1():
  plan = tasks.make_plan("15-1", 20)
  assert plan.classes_per_step == (16, 1, 1, 1, 1, 1)
  assert [s.num_channels for s in plan.steps] == [16, 17, 18, 19, 20, 21]
  assert plan.steps[0].new_channels == tuple(range(1, 16))
  assert plan.steps[0].old_channels == ()
  assert plan.steps[3].new_classes == (18,)
  assert plan.steps[3].old_classes == tuple(range(1, 18))
  assert plan.steps[-1].future_classes == ()
  assert plan.labeling is None and plan.order == tuple(range(1, 21))


def test_classes_per_step_ade():
  plan = tasks.make_plan("100-10", 150, setting="disjoint")
  assert plan.classes_per_step == (101, 10, 10, 10, 10, 10)
  assert tasks.make_plan("joint", 150).classes_per_step == (151,)


def test_channel_names_and_describe():
  names = ["bg", "a", "b", "c", "d"]
  plan = tasks.make_plan("2-1", 4, order=[3, 1, 4, 2])
  assert plan.channel_names(names) == ["bg", "c", "a", "d", "b"]
  with pytest.raises(ValueError):
    plan.channel_names(names[:4])
  text = plan.describe(names)
  lines = text.splitlines()
  assert len(lines) == 1 + 3
  assert "step 0" in lines[1] and "3:c" in lines[1] and "1:a" in lines[1]
  assert "step 2" in lines[3] and "2:b" in lines[3]


def test_plans_hash_and_compare():
  a = tasks.make_plan("2-2", 6)
  b = tasks.make_plan("2-2", 6)
  assert a == b and hash(a) == hash(b)
  assert a != tasks.make_plan("2-2", 6, setting="disjoint")


# ----------------------------------------------------------------------------------------
# make_plan validation
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs,fragment",
  [
    (dict(setting="overlap"), "Unknown setting 'overlap'"),
    (dict(setting="disjoint", labeling="keep"), "only meaningful for setting='sequential'"),
    (dict(setting="overlapped", labeling="background"), "only meaningful"),
    (dict(setting="sequential", labeling="old"), "Unknown labeling 'old'"),
    (dict(unseen_eval="zero"), "Unknown unseen_eval 'zero'"),
    (dict(order="sorted"), "Unknown class order 'sorted'"),
    (dict(order=[1, 2, 3, 4, 5, 5]), "duplicated: [5]"),
    (dict(ignore_label=6), "ignore_label"),
    (dict(ignore_label=256), "ignore_label"),
  ],
)
def test_make_plan_rejects(kwargs, fragment):
  with pytest.raises(ValueError) as err:
    tasks.make_plan("2-2", 6, **kwargs)
  assert fragment in str(err.value)


def test_make_plan_lists_valid_values():
  with pytest.raises(ValueError) as err:
    tasks.make_plan("2-2", 6, setting="bogus")
  for name in tasks.SETTINGS:
    assert name in str(err.value)
  with pytest.raises(ValueError) as err:
    tasks.make_plan("2-2", 6, setting="sequential", labeling="bogus")
  for name in tasks.LABELINGS:
    assert name in str(err.value)


def test_make_plan_bad_scenario():
  with pytest.raises(ValueError, match="'2-3'.*6 foreground classes"):
    tasks.make_plan("2-3", 6)
