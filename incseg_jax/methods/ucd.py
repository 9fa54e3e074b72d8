"""UCD's methods (Yang et al., uncertainty-aware contrastive distillation).

  * `ucd`: the cross-entropy (weight 1) + 0.01 x the `ucd` term (tau 0.07),
    the paper's defaults (sec. 4.2; the public code divides the term by 100).
  * `cd`: the same without the uncertainty weights (Table 6's "CD").

Both hold only the contrastive term besides `ce`, so that a combination such
as `mib+ucd` or `plop+ucd` takes its classification / distillation terms from
the other method (MiB-UCD, Eq. 17; PLOP-UCD, Eq. 20). They follow the label
conventions of the PLOP/UCD code: void stays ignored in training and
not-yet-learned classes count as background in evaluation.

Every option of the term is listed, so the Table 7 ablations are config
overrides, e.g. `--config.loss_options.ucd.background_in_contrast=True` and
`--config.loss_options.ucd.old_features_at_new=True` (its first row),
`old_features_at_new=True` alone (second row), the defaults (third row).
`conventions=paper` uses Eq. 8 as printed (negatives only in the
denominator); see `incseg_jax/losses/contrastive.py` for both forms.

The public code's two bugs (docs/reference_code.md, "Reference bugs") are
options of the term too, off by default:
`--config.loss_options.ucd.bilinear_labels=True` (its label resizing) and
`--config.loss_options.ucd.unshifted_negatives=True` (its stability shift).
The PLOP-based code's three further differences (`pseudo_labels`,
`old_features_at`, `min_label_weights`; docs/reference_code.md §14) are
options of the term with their defaults off, not listed in UCD_OPTIONS yet:
a run saved without them would compare as another experiment on resume.
"""

from incseg_jax.losses import contrastive  # noqa: F401  pylint: disable=unused-import  (registers "ucd")
from incseg_jax.methods import Method, register

UCD_WEIGHT = 0.01
UCD_OPTIONS = {
    "temperature": 0.07,
    "uncertainty": True,
    "background_in_contrast": False,
    "old_features": True,
    "old_features_at_new": False,
    "denominator": "positive_and_negatives",
    "block_size": 1024,
    "bilinear_labels": False,
    "unshifted_negatives": False,
}
# `conventions=paper`: Eq. 8 as printed.
UCD_PAPER_OPTIONS = {"denominator": "negatives"}

register(Method(name="ucd", losses={"ce": 1.0, "ucd": UCD_WEIGHT}, options={"ucd": dict(UCD_OPTIONS)},
                paper_options={"ucd": UCD_PAPER_OPTIONS}, void_as_background=False, unseen_eval="background",
                doc="uncertainty-aware contrastive distillation (UCD, Eq. 11)"))
register(Method(name="cd", losses={"ce": 1.0, "ucd": UCD_WEIGHT}, options={"ucd": dict(UCD_OPTIONS, uncertainty=False)},
                paper_options={"ucd": UCD_PAPER_OPTIONS}, void_as_background=False, unseen_eval="background",
                doc="contrastive distillation without uncertainty (CD, Eq. 7)"))
