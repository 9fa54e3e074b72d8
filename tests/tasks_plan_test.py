"""Tests for incseg_jax.tasks.plan: plan structure, validation and the per-step training image filters."""

import numpy as np
import pytest

from incseg_jax import tasks

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

OVERLAPPED = [[0, 1, 4, 8], [1, 2, 7, 8], [2, 3, 4]]
ONLY_SEEN = [[0], [1, 7, 8], [2, 3, 4]]  # disjoint and sequential: no future class allowed


# ----------------------------------------------------------------------------------------
# Image membership
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "setting,labeling,expected",
  [
    ("overlapped", None, OVERLAPPED),
    ("disjoint", None, ONLY_SEEN),
    ("sequential", None, ONLY_SEEN),
    ("sequential", "background", ONLY_SEEN),  # the labeling changes the LUTs, not the filter
  ],
)
def test_membership(setting, labeling, expected):
  plan = tasks.make_plan("2-2", 6, setting=setting, labeling=labeling)
  assert tasks.step_image_indices(plan, IMAGES) == expected
  # One-shot iterators are read once.
  assert tasks.count_step_images(plan, [iter(ids) for ids in IMAGES]) == [len(m) for m in expected]


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
  images = [sorted(set(rng.choice(np.arange(0, 11), size=rng.integers(0, 5)).tolist())) for _ in range(400)]
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
  msg = str(err.value)
  assert "step 1 (new classes [3, 4])" in msg and "step 0" not in msg
  assert "'2-2'" in msg and "'disjoint'" in msg
  tasks.check_nonempty(plan, [1, 1, 2])  # no error
  with pytest.raises(ValueError, match="2 counts for 3 steps"):
    tasks.check_nonempty(plan, [1, 1])


# ----------------------------------------------------------------------------------------
# Plan structure
# ----------------------------------------------------------------------------------------


def test_plan_structure_voc_15_1():
  plan = tasks.make_plan(" 15-1 ", 20)
  assert plan.scenario == "15-1"
  assert plan.num_steps == 6
  assert plan.classes_per_step == (16, 1, 1, 1, 1, 1)
  assert [s.num_channels for s in plan.steps] == [16, 17, 18, 19, 20, 21]
  assert plan.steps[0].new_channels == tuple(range(1, 16))
  assert plan.steps[0].old_channels == ()
  assert plan.steps[3].new_classes == (18,)
  assert plan.steps[3].old_classes == tuple(range(1, 18))
  assert plan.steps[3].seen_classes == tuple(range(1, 19))
  assert plan.steps[-1].future_classes == ()
  assert plan.labeling is None and plan.order == tuple(range(1, 21))


def test_step_channels_non_identity_order():
  # Order (4, 6, 1, 2, 3, 5): channels 4->1, 6->2, 1->3, 2->4, 3->5, 5->6.
  s1 = tasks.make_plan("2-2", 6, order="4,6,1,2,3,5").steps[1]
  assert s1.new_classes == (1, 2) and s1.old_classes == (4, 6)
  assert s1.new_channels == (3, 4) and s1.old_channels == (1, 2)
  assert s1.future_classes == (3, 5)
  assert s1.num_channels == 5


def test_classes_per_step_ade():
  assert tasks.make_plan("100-10", 150, setting="disjoint").classes_per_step == (101, 10, 10, 10, 10, 10)
  assert tasks.make_plan("joint", 150).classes_per_step == (151,)


def test_sequential_default_labeling_is_keep():
  assert tasks.make_plan("2-2", 6, setting="sequential").labeling == "keep"


def test_channel_names_and_describe():
  names = ["bg", "a", "b", "c", "d"]
  plan = tasks.make_plan("2-1", 4, order=[3, 1, 4, 2], setting="sequential")
  assert plan.channel_names(names) == ["bg", "c", "a", "d", "b"]
  with pytest.raises(ValueError, match="need >= 5"):
    plan.channel_names(names[:4])
  lines = plan.describe(names).splitlines()
  assert lines[0] == (
    "scenario '2-1': 3 step(s) [3, 1, 1] (heads incl. background), setting sequential, labeling keep, "
    "4 foreground classes, ignore 255"
  )
  assert lines[1] == "step 0: +2 classes [3:c, 1:a] -> channels 1..2; 0 old; 3 channels"
  assert lines[3] == "step 2: +1 classes [2:b] -> channel 4; 3 old; 5 channels"
  assert plan.describe().splitlines()[1] == "step 0: +2 classes [3, 1] -> channels 1..2; 0 old; 3 channels"


def test_plans_hash_and_compare():
  a = tasks.make_plan("2-2", 6)
  b = tasks.make_plan("2-2", 6)
  assert a == b and hash(a) == hash(b)
  assert a != tasks.make_plan("2-2", 6, setting="disjoint")


# ----------------------------------------------------------------------------------------
# make_plan validation (scenario, order, num_fg and policy errors: see the scenario and labels tests)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs,fragments",
  [
    (dict(setting="overlap"), ["Unknown setting 'overlap'", *tasks.SETTINGS]),
    (dict(setting="disjoint", labeling="keep"), ["only meaningful for setting='sequential'", "disjoint setting"]),
    (dict(setting="overlapped", labeling="background"), ["only meaningful for setting='sequential'"]),
    (dict(setting="sequential", labeling="old"), ["Unknown labeling 'old'", *tasks.LABELINGS]),
    (dict(order="sorted"), ["Unknown class order 'sorted'"]),
    (dict(order=[1, 2, 3, 4, 5, 5]), ["duplicated: [5]"]),
    (dict(ignore_label=6), ["ignore_label must be an int in 7..255"]),
    (dict(ignore_label=256), ["ignore_label must be an int in 7..255"]),
    (dict(ignore_label=True), ["ignore_label must be an int in 7..255"]),
  ],
)
def test_make_plan_rejects(kwargs, fragments):
  with pytest.raises(ValueError) as err:
    tasks.make_plan("2-2", 6, **kwargs)
  for fragment in fragments:
    assert fragment in str(err.value)
