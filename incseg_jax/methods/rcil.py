"""RCIL (Zhang et al., CVPR 2022; public code zhangchbin/RCIL): the `rcil` preset.

This module owns the preset. The two-branch model and its merge are in
`incseg_jax/models/rcil.py`, the pooled cube distillation in
`incseg_jax/losses/rcil.py`. As the code's `--method RCIL` (`argparser.py`)
runs on VOC:
  * every task step trains the two-branch model (`models.rcil.two_branch_model`)
    started from the step's plain variables with both branches equal
    (`models.rcil.expand`): at step 0 both branches train; after step 0 the
    plain-named branch (the previous step's merged layer) is frozen, its
    BatchNorm included (running statistics, no update), and the twin trains;
  * when the step's training ends the branches are merged (`models.rcil.merge`),
    so the step's final checkpoint, its evaluation and the next teacher are a
    plain model;
  * losses: MiB's unbiased CE (`--unce`; plain CE at step 0), 100 x MiB's
    unbiased KD (`--unkd --loss_kd 100`, the code's class mean), and
    0.01 x each pooled cube distillation term (`pcd_spatial`, `pcd_channel`;
    the last map of each weighted 0.0005 / 0.01, see that module);
  * MiB's background-based head initialisation (`--init_balanced`);
  * labels as PLOP's code, on which RCIL's is built (docs/reference_code.md §10):
    void stays ignored in training, classes not yet learned count as
    background in evaluation.

`--classif_adaptive_factor`, which the preset also sets, only acts inside the
code's entropy pseudo-labelling, which `--method RCIL` leaves off: it changes
nothing and has no counterpart here. `conventions=paper` gives MiB's Eq. 15
sum for `unbiased_kd`, as `mib`.
"""

from __future__ import annotations

from incseg_jax.losses import rcil as rcil_losses
from incseg_jax.methods import Method, TrainVariant, register
from incseg_jax.methods.mib import MIB_PAPER_OPTIONS, mib_head_init
from incseg_jax.models import rcil as rcil_models

TWO_BRANCHES = TrainVariant(model=rcil_models.two_branch_model, expand=rcil_models.expand,
                            merge=rcil_models.merge, frozen=rcil_models.frozen_branch_prefixes)

register(Method(
    name="rcil", losses={"unbiased_ce": 1.0, "unbiased_kd": 100.0, "pcd_spatial": 0.01, "pcd_channel": 0.01},
    options={"pcd_spatial": {"layers": rcil_losses.LAYERS, "kernels": rcil_losses.KERNELS, "last_weight": 0.05,
                             "class_schedule": True},
             "pcd_channel": {"layers": rcil_losses.CHANNEL_LAYERS, "window": 3, "last_weight": 0.05,
                             "class_schedule": True}},
    paper_options=MIB_PAPER_OPTIONS, head_init=mib_head_init, train_variant=TWO_BRANCHES,
    void_as_background=False, unseen_eval="background",
    doc="RCIL: two-branch convs merged after each step + unbiased CE + 100 x unbiased KD + 0.01 x pooled cube "
        "distillation (spatial, channel) + MiB head init"))
