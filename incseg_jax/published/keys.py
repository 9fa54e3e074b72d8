"""The key of one published experiment: `<dataset>/<scenario>/<setting>[/<name>=<value>...]`.

`voc/15-5/overlapped` is VOC2012, 15 classes then 5, overlapped setting.
Qualifiers say what else sets the experiment apart, each as the config
argument that selects it: `labeling=background` (the first paper's
incremental labeling; `keep` is sequential's default and never written),
`order=ilt_frequency` (a class order other than the dataset's default) and
`pretrain=imagenet|mscoco` (the first paper's pre-training ablation, Tables
S1-S3; not a config argument: the backbone is `--config.pretrained`).
"""

from __future__ import annotations

import dataclasses

# The class order a dataset's config uses when `order=` is not given (configs/<dataset>.py): a key names
# its order only when it differs. MSRC's default is frequency order, as the first paper sorts its classes.
DEFAULT_ORDER = {"msrc": "frequency"}
# A paper's scenario names that our configs spell differently (configs/msrc.py: task_aliases).
SCENARIO_ALIASES = {"msrc": {"20-1": "19-1"}}
# Qualifiers in the order they are written.
QUALIFIERS = ("labeling", "order", "pretrain")


def default_order(dataset: str) -> str:
  return DEFAULT_ORDER.get(dataset, "dataset")


def default_labeling(setting: str) -> str | None:
  """Sequential's default labeling ("keep", the first paper's incremental learning); None for the others."""
  return "keep" if setting == "sequential" else None


@dataclasses.dataclass(frozen=True, order=True)
class Key:
  """One published experiment: dataset, scenario, setting and the qualifiers that are not defaults.

  Attributes:
    dataset: registry name (`voc`, `ade20k`, `cityscapes`, `msrc`).
    scenario: our scenario string (`15-5`, `10-5-5`, `100-50`; MSRC's paper
      name `20-1` is our `19-1`).
    setting: `overlapped`, `disjoint` or `sequential`.
    labeling: `background` or None (the setting's default).
    order: a class order other than the dataset's default, or None.
    pretrain: `imagenet` / `mscoco` for the pre-training ablation, or None.
  """
  dataset: str
  scenario: str
  setting: str
  labeling: str | None = None
  order: str | None = None
  pretrain: str | None = None

  @classmethod
  def make(cls, dataset: str, scenario: str, setting: str, labeling: str | None = None, order: str | None = None,
           pretrain: str | None = None) -> "Key":
    """The key with defaults dropped: sequential's `keep`, the dataset's default order, empty strings."""
    scenario = SCENARIO_ALIASES.get(dataset, {}).get(scenario, scenario)
    labeling = None if not labeling or labeling == default_labeling(setting) else labeling
    order = None if not order or order == default_order(dataset) else order
    return cls(dataset, scenario, setting, labeling, order, pretrain or None)

  @classmethod
  def parse(cls, text: str) -> "Key":
    """`voc/15-5/overlapped[/labeling=background][/order=...][/pretrain=...]` -> Key.

    Raises:
      ValueError: fewer than three parts, an empty part, or a qualifier that is
        not `name=value` with a known name.
    """
    parts = [p.strip() for p in str(text).strip().strip("/").split("/")]
    if len(parts) < 3 or not all(parts):
      raise ValueError(f"published key {text!r}: expected <dataset>/<scenario>/<setting>[/<name>=<value>...], "
                       "e.g. voc/15-5/overlapped or voc/19-1/sequential/order=ilt_frequency")
    extra = {}
    for part in parts[3:]:
      name, sep, value = part.partition("=")
      if not sep or name not in QUALIFIERS or not value:
        raise ValueError(f"published key {text!r}: qualifier {part!r} is not <name>=<value> with a name in "
                         f"{list(QUALIFIERS)}")
      extra[name] = value
    return cls.make(parts[0].lower(), parts[1], parts[2].lower(), **extra)

  def __str__(self) -> str:
    extra = [f"{name}={getattr(self, name)}" for name in QUALIFIERS if getattr(self, name)]
    return "/".join([self.dataset, self.scenario, self.setting] + extra)

  @property
  def slug(self) -> str:
    """A directory name: `15-5_overlapped`, `19-1_sequential_order-ilt_frequency`."""
    extra = [f"{name}-{getattr(self, name)}" for name in QUALIFIERS if getattr(self, name)]
    return "_".join([self.scenario, self.setting] + extra)

  @property
  def full_labeling(self) -> str | None:
    return self.labeling or default_labeling(self.setting)

  @property
  def full_order(self) -> str:
    return self.order or default_order(self.dataset)
