"""Class-incremental task plans: scenario strings -> per-step classes, image filters and label maps.

A *scenario* such as "15-5" or "100-10" says how many foreground classes are learned in each step. Together with a
*setting* (which training images a step may use and how their labels are rewritten), a *class order* and a
`LabelPolicy` (how void, raw label 0 and classes not learned yet are labelled) it defines a `TaskPlan`: one
`TaskStep` per incremental step.

Conventions used throughout (pure Python/NumPy, no TF, no JAX):

* The dataset has foreground classes `1..num_fg`, background 0 and an ignore label (255 by default). Values above
  `num_fg` other than the ignore label are treated as ignore.
* A *class order* is a permutation of `1..num_fg`.
* Model *channels* are in learning order: channel 0 is background, channels `1..n0` are the step-0 classes in
  order, then step 1's classes, and so on. Channel `c >= 1` is the original class `order[c - 1]`.
* Every label rewrite is a 256-entry uint8 lookup table (LUT) applied to the original label values, so the data
  pipeline only ever does `lut[label]`.

Modules: `scenario` (scenario strings, class orders), `labels` (`LabelPolicy` and the LUTs), `plan` (settings,
`TaskStep`, `TaskPlan`, `make_plan` and the per-step image filters).
"""

from incseg_jax.tasks.labels import LABEL_ZERO
from incseg_jax.tasks.labels import UNSEEN_EVAL
from incseg_jax.tasks.labels import VOID_IN_TRAINING
from incseg_jax.tasks.labels import LabelPolicy
from incseg_jax.tasks.plan import LABELINGS
from incseg_jax.tasks.plan import SETTINGS
from incseg_jax.tasks.plan import TaskPlan
from incseg_jax.tasks.plan import TaskStep
from incseg_jax.tasks.plan import check_nonempty
from incseg_jax.tasks.plan import count_step_images
from incseg_jax.tasks.plan import make_plan
from incseg_jax.tasks.plan import step_image_indices
from incseg_jax.tasks.scenario import ORDER_NAMES
from incseg_jax.tasks.scenario import parse_scenario
from incseg_jax.tasks.scenario import resolve_class_order

__all__ = [
  "SETTINGS",
  "LABELINGS",
  "UNSEEN_EVAL",
  "VOID_IN_TRAINING",
  "LABEL_ZERO",
  "ORDER_NAMES",
  "LabelPolicy",
  "parse_scenario",
  "resolve_class_order",
  "TaskStep",
  "TaskPlan",
  "make_plan",
  "step_image_indices",
  "count_step_images",
  "check_nonempty",
]
