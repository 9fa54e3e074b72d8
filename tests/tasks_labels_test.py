"""Tests for incseg_jax.tasks.labels: `LabelPolicy` and the per-step training/evaluation LUTs."""

import itertools

import numpy as np
import pytest

from incseg_jax import tasks

IGN = 255

# Every (setting, labeling) pair make_plan accepts; None for sequential means "keep".
SETTING_LABELINGS = [
  ("overlapped", None),
  ("disjoint", None),
  ("sequential", "keep"),
  ("sequential", "background"),
  ("sequential", None),
]

POLICIES = [
  tasks.LabelPolicy(void_in_training=v, label_zero=z, unseen_eval=u)
  for v, z, u in itertools.product(tasks.VOID_IN_TRAINING, tasks.LABEL_ZERO, tasks.UNSEEN_EVAL)
]


def _lut_expect(head, last=IGN):
  """A full 256-entry LUT from its first entries and entry 255; everything else is ignore."""
  lut = np.full(256, IGN, dtype=np.uint8)
  lut[: len(head)] = head
  lut[255] = last
  return lut


# ----------------------------------------------------------------------------------------
# LabelPolicy
# ----------------------------------------------------------------------------------------


def test_policy_defaults():
  policy = tasks.LabelPolicy()
  assert (policy.void_in_training, policy.label_zero, policy.unseen_eval) == ("ignore", "background", "ignore")
  assert len(set(POLICIES)) == 8  # frozen and hashable


@pytest.mark.parametrize(
  "field,valid", [("void_in_training", tasks.VOID_IN_TRAINING), ("label_zero", tasks.LABEL_ZERO),
                  ("unseen_eval", tasks.UNSEEN_EVAL)]
)
@pytest.mark.parametrize("bad", ["zero", None, True])
def test_policy_rejects_unknown_values(field, valid, bad):
  with pytest.raises(ValueError) as err:
    tasks.LabelPolicy(**{field: bad})
  assert str(err.value) == f"Unknown {field} {bad!r}; expected one of {list(valid)}"


def _for_dataset(**overrides):
  kwargs = dict(dataset_name="ade20k", void_is_zero=True, zero_name="void", dataset_void="background",
                void_as_background=False, unseen_eval="ignore")
  kwargs.update(overrides)
  return tasks.LabelPolicy.for_dataset(**kwargs)


@pytest.mark.parametrize("void_is_zero", [False, True])
@pytest.mark.parametrize("void_as_background", [False, True])
@pytest.mark.parametrize("unseen", tasks.UNSEEN_EVAL)
def test_for_dataset_combines_dataset_and_method(void_is_zero, void_as_background, unseen):
  policy = _for_dataset(void_is_zero=void_is_zero, void_as_background=void_as_background, unseen_eval=unseen)
  assert policy == tasks.LabelPolicy(void_in_training="background" if void_as_background else "ignore",
                                     label_zero="background", unseen_eval=unseen)
  if void_is_zero:
    assert _for_dataset(dataset_void="ignore", void_as_background=void_as_background,
                        unseen_eval=unseen).label_zero == "ignore"


def test_for_dataset_rejects():
  with pytest.raises(ValueError) as err:
    _for_dataset(dataset_void="nothing")
  assert str(err.value) == "config.dataset.void='nothing': expected one of background, ignore"
  with pytest.raises(ValueError) as err:
    _for_dataset(dataset_name="voc", void_is_zero=False, zero_name="background", dataset_void="ignore")
  assert str(err.value) == (
    "config.dataset.void='ignore': label 0 of dataset 'voc' is a real class ('background'), not void; only "
    "datasets with a void label 0 (ade20k, cityscapes) accept it"
  )
  with pytest.raises(ValueError, match="Unknown unseen_eval 'zero'"):
    _for_dataset(unseen_eval="zero")


def test_make_plan_takes_only_a_policy():
  with pytest.raises(TypeError, match="policy must be a LabelPolicy"):
    tasks.make_plan("2-2", 6, policy="ignore")
  with pytest.raises(TypeError):
    tasks.make_plan("2-2", 6, void_as_background=True)  # pylint: disable=unexpected-keyword-arg


# ----------------------------------------------------------------------------------------
# The LUTs against the construction before LabelPolicy existed
# ----------------------------------------------------------------------------------------


def _reference_luts(*, setting, labeling, channel_of, old, new, num_fg, ignore_label, policy):
  """A verbatim copy of the LUT construction before `LabelPolicy`: the plan's `_build_luts` with the loose
  `void_as_background` / `unseen_eval` flags, then `experiment._ignore_zero` for `config.dataset.void="ignore"`."""
  void_as_background = policy.void_in_training == "background"
  unseen_eval = policy.unseen_eval
  train = np.full((256,), ignore_label, dtype=np.uint8)
  evl = np.full((256,), ignore_label, dtype=np.uint8)
  train[0] = 0
  evl[0] = 0
  train[ignore_label] = 0 if void_as_background else ignore_label
  evl[ignore_label] = ignore_label
  keep_old = setting == "sequential" and labeling == "keep"
  seen = set(old) | set(new)
  for c in range(1, num_fg + 1):
    if c in new or (keep_old and c in old):
      train[c] = channel_of[c]
    else:
      train[c] = 0
    if c in seen:
      evl[c] = channel_of[c]
    else:
      evl[c] = ignore_label if unseen_eval == "ignore" else 0
  if policy.label_zero == "ignore":
    train[0] = ignore_label
    evl[0] = ignore_label
  return train, evl


@pytest.mark.parametrize("setting,labeling", SETTING_LABELINGS)
@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_luts_identical_to_the_old_construction(setting, labeling, policy):
  cases = [("2-2", 6, "dataset", 255), ("4-1-1", 6, "random", 7), ("joint", 6, "4,6,1,2,3,5", 250),
           ("15-1", 20, "random", 255), ("13-6", 19, "dataset", 20), ("100-10", 150, "random", 255)]
  for task, num_fg, order, ignore_label in cases:
    plan = tasks.make_plan(task, num_fg, setting=setting, labeling=labeling, order=order, seed=5,
                           ignore_label=ignore_label, policy=policy)
    channel_of = {c: i + 1 for i, c in enumerate(plan.order)}
    for step in plan.steps:
      train, evl = _reference_luts(setting=setting, labeling=plan.labeling, channel_of=channel_of,
                                   old=step.old_classes, new=step.new_classes, num_fg=num_fg,
                                   ignore_label=ignore_label, policy=policy)
      for got, want in ((step.train_lut, train), (step.eval_lut, evl)):
        assert got.dtype == np.uint8 and got.shape == (256,) and not got.flags.writeable
        assert got.tobytes() == want.tobytes(), (task, order, ignore_label, step.index)


# ----------------------------------------------------------------------------------------
# Hand-written LUTs ("2-2" with num_fg = 6: steps {1, 2}, {3, 4}, {5, 6})
# ----------------------------------------------------------------------------------------

# Training LUT heads (values 0..6) with the dataset order.
TRAIN_HEADS = {
  ("overlapped", None): [[0, 1, 2, 0, 0, 0, 0], [0, 0, 0, 3, 4, 0, 0], [0, 0, 0, 0, 0, 5, 6]],
  ("disjoint", None): [[0, 1, 2, 0, 0, 0, 0], [0, 0, 0, 3, 4, 0, 0], [0, 0, 0, 0, 0, 5, 6]],
  ("sequential", "keep"): [[0, 1, 2, 0, 0, 0, 0], [0, 1, 2, 3, 4, 0, 0], [0, 1, 2, 3, 4, 5, 6]],
  ("sequential", None): [[0, 1, 2, 0, 0, 0, 0], [0, 1, 2, 3, 4, 0, 0], [0, 1, 2, 3, 4, 5, 6]],
  ("sequential", "background"): [[0, 1, 2, 0, 0, 0, 0], [0, 0, 0, 3, 4, 0, 0], [0, 0, 0, 0, 0, 5, 6]],
}
# Evaluation LUT heads by unseen_eval; independent of the setting.
EVAL_HEADS = {
  "ignore": [[0, 1, 2, IGN, IGN, IGN, IGN], [0, 1, 2, 3, 4, IGN, IGN], [0, 1, 2, 3, 4, 5, 6]],
  "background": [[0, 1, 2, 0, 0, 0, 0], [0, 1, 2, 3, 4, 0, 0], [0, 1, 2, 3, 4, 5, 6]],
}


@pytest.mark.parametrize("setting,labeling", SETTING_LABELINGS)
@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_luts_by_hand(setting, labeling, policy):
  plan = tasks.make_plan("2-2", 6, setting=setting, labeling=labeling, policy=policy)
  zero = IGN if policy.label_zero == "ignore" else 0
  void = 0 if policy.void_in_training == "background" else IGN
  train_heads = TRAIN_HEADS[setting, labeling]
  for step, train_head, eval_head in zip(plan.steps, train_heads, EVAL_HEADS[policy.unseen_eval], strict=True):
    np.testing.assert_array_equal(step.train_lut, _lut_expect([zero] + train_head[1:], last=void))
    # Void stays ignored at evaluation even when training maps it to background.
    np.testing.assert_array_equal(step.eval_lut, _lut_expect([zero] + eval_head[1:]))


def test_label_zero_ignore_with_mib_conventions():
  # MiB on ADE20K: raw 0 (void) ignored everywhere, yet the ignore label itself trained as background.
  policy = tasks.LabelPolicy(void_in_training="background", label_zero="ignore", unseen_eval="ignore")
  plan = tasks.make_plan("2-2", 6, order=[5, 6, 3, 4, 1, 2], ignore_label=250, policy=policy)
  s1 = plan.steps[1]
  train = np.full(256, 250, dtype=np.uint8)
  train[:7] = [250, 0, 0, 3, 4, 0, 0]  # 0 ignored; old 5, 6 and future 1, 2 are background
  train[250] = 0
  np.testing.assert_array_equal(s1.train_lut, train)  # 255 is junk here -> 250
  evl = np.full(256, 250, dtype=np.uint8)
  evl[:7] = [250, 250, 250, 3, 4, 1, 2]
  np.testing.assert_array_equal(s1.eval_lut, evl)


def test_label_zero_ignore_keeps_future_classes_background():
  # UCD conventions with void=ignore: only raw label 0 changes; a future class is still background in training.
  policy = tasks.LabelPolicy(label_zero="ignore", unseen_eval="background")
  plan = tasks.make_plan("13-6", 19, setting="sequential", policy=policy)
  s0, s1 = plan.steps
  np.testing.assert_array_equal(s0.train_lut[[0, 1, 13, 14, 19, 20, 255]], [IGN, 1, 13, 0, 0, IGN, IGN])
  np.testing.assert_array_equal(s0.eval_lut[[0, 1, 13, 14, 19, 20, 255]], [IGN, 1, 13, 0, 0, IGN, IGN])
  np.testing.assert_array_equal(s1.train_lut[[0, 1, 13, 14, 19, 20, 255]], [IGN, 1, 13, 14, 19, IGN, IGN])
  np.testing.assert_array_equal(s1.eval_lut[[0, 1, 13, 14, 19, 20, 255]], [IGN, 1, 13, 14, 19, IGN, IGN])


def test_luts_non_identity_order_and_custom_ignore():
  # Order (4, 6, 1, 2, 3, 5): channels 4->1, 6->2, 1->3, 2->4, 3->5, 5->6.
  plan = tasks.make_plan("2-2", 6, order="4,6,1,2,3,5", ignore_label=250)
  s1 = plan.steps[1]
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


def test_joint_lut_maps_every_class():
  plan = tasks.make_plan("joint", 6, order=[6, 5, 4, 3, 2, 1])
  (step,) = plan.steps
  np.testing.assert_array_equal(step.train_lut[:7], [0, 6, 5, 4, 3, 2, 1])
  np.testing.assert_array_equal(step.eval_lut[:7], [0, 6, 5, 4, 3, 2, 1])
  assert step.train_lut[7] == IGN and step.train_lut[255] == IGN


def test_luts_are_read_only():
  plan = tasks.make_plan("2-2", 6)
  with pytest.raises(ValueError):
    plan.steps[0].train_lut[3] = 1
  with pytest.raises(ValueError):
    plan.steps[0].eval_lut[3] = 1
