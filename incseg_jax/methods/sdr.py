"""SDR (Michieli & Zanuttigh, CVPR 2021) as its public code's `--method SDR` preset (LTTM/SDR, argparser.py).

  unbiased_ce 1 + unbiased_kd 100 (MiB's terms: the code's `unce`, `unkd`,
  `loss_kd` 100) + sdr_pm 0.01 (prototypes matching, `loss_de_prototypes` with
  `loss_de_prototypes_sumafter`) + sdr_att 1e-3 (`loss_fc`) + sdr_rep 1e-3
  (`lfc_sep_clust`) + sdr_fs 1e-3 (`loss_featspars`, `max_maskedforclass`,
  `exponential`, `ratio`).

The SDR terms (`incseg_jax/losses/sdr.py`) are off at step 0, which the
published runs train as fine-tuning with the unbiased CE (plain CE there) while
collecting the prototypes; the prototypes (the state of `sdr_pm` and `sdr_att`)
accumulate from step 0 on, so `init_from` takes step 0 only from a run that
carried the same state. The preset does not set the code's `init_balanced`, so
new heads keep their fresh initialisation (MiB's background-based one is not
used). Labels follow the MiB code, on which SDR's is built: void is trained as
background and classes not yet learned are ignored in evaluation.

The background's prototype follows the code's default (disjoint) setting
(`background_prototype="first_step"`); the code's `--overlap` runs never
update it (`--config.loss_options.sdr_pm.background_prototype=never` and the
same for `sdr_att`), its sequential runs always do and match the old classes
on their labels (`always`, and `sdr_pm.old_labels=ground_truth`).

`conventions=paper` sets MiB's Eq. 15 for `unbiased_kd` (sum over the old
classes, as for `mib`); the SDR terms have no separate paper form here.
"""

from incseg_jax.losses import sdr as _sdr_losses  # noqa: F401  (registers the terms)
from incseg_jax.methods import Method, register
from incseg_jax.methods import mib as mib_lib

SDR_WEIGHTS = {"unbiased_ce": 1.0, "unbiased_kd": 100.0, "sdr_pm": 0.01, "sdr_att": 1e-3, "sdr_rep": 1e-3,
               "sdr_fs": 1e-3}
_PROTOTYPES = {"background_prototype": "first_step", "mixed_channels": False}
SDR_OPTIONS = {
    "sdr_pm": dict(_PROTOTYPES, mean_first=True, old_labels="pseudo"),
    "sdr_att": dict(_PROTOTYPES, no_background=False, divide_inside_loop=False),
    "sdr_rep": {"no_background": False, "mixed_channels": False},
    "sdr_fs": {"normalization": "max_maskedforclass", "shrinking": "exponential", "function": "ratio", "eps": 1e-15},
}

register(Method(
    name="sdr",
    losses=SDR_WEIGHTS,
    options=SDR_OPTIONS,
    paper_options=dict(mib_lib.MIB_PAPER_OPTIONS),
    void_as_background=True, unseen_eval="ignore",
    doc="SDR (code preset): unbiased CE + 100 x unbiased KD + 0.01 x prototypes matching + 1e-3 x attraction "
        "+ 1e-3 x repulsion + 1e-3 x sparsification"))
