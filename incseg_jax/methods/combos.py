"""Combined presets of the second paper: MiB+UCD (Eq. 17) and PLOP+UCD (Eq. 20).

These are explicit presets rather than `a+b` combinations because the parts
overlap: UCD alone carries the plain cross-entropy, which MiB replaces with
its unbiased CE (and PLOP with its pseudo-labelled CE), and the parts follow
different label conventions. Both follow the UCD code, which is built on the
PLOP/MiB code bases: void stays ignored in training and not-yet-learned
classes count as background in evaluation (docs/reference_code.md §10, §14).

The PLOP-based UCD code differs from Eq. 20 in the inputs of its contrastive
term (PLOP's pseudo-labels, old features where the label is background,
pair weights forced to 1 from the smallest label on); `plop_ucd` computes
the equations, and the `ucd` term's options `pseudo_labels`,
`old_features_at="background_label"` and `min_label_weights` (off) the code
(`incseg_jax/losses/contrastive.py`; `pseudo_labels` reads the thresholds of
PLOP's prepare hook, which `plop_ucd` runs).
"""

from incseg_jax.methods import Method, get, register
from incseg_jax.methods import mib as mib_lib
from incseg_jax.methods import plop  # noqa: F401  pylint: disable=unused-import  (registers "plop")
from incseg_jax.methods import ucd as ucd_lib

register(Method(
    name="mib_ucd",
    losses={"unbiased_ce": 1.0, "unbiased_kd": 10.0, "ucd": ucd_lib.UCD_WEIGHT},
    options={"ucd": dict(ucd_lib.UCD_OPTIONS)},
    paper_options=dict(mib_lib.MIB_PAPER_OPTIONS, ucd=ucd_lib.UCD_PAPER_OPTIONS),
    head_init=mib_lib.mib_head_init,
    void_as_background=False, unseen_eval="background",
    doc="MiB + UCD: unbiased CE + 10 x unbiased KD + 0.01 x UCD (Eq. 17)"))

_PLOP = get("plop")
register(Method(
    name="plop_ucd",
    losses=dict(_PLOP.losses, ucd=ucd_lib.UCD_WEIGHT),
    options=dict(_PLOP.options, ucd=dict(ucd_lib.UCD_OPTIONS)),
    paper_options=dict(_PLOP.paper_options, ucd=ucd_lib.UCD_PAPER_OPTIONS),
    head_init=_PLOP.head_init, prepare=_PLOP.prepare,
    void_as_background=False, unseen_eval="background",
    doc="PLOP + UCD: pseudo-labelled CE + 0.01 x Local POD + 0.01 x UCD (Eq. 20)"))
