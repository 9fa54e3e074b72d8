"""The first paper's methods (Michieli & Zanuttigh, CVIU 2021, sec. 4) and ILT.

Every method adds its distillation term to the cross-entropy (Eq. 1,
L = L_CE + lambda_D L_D) or freezes part of the encoder after step 0. The paper
gives no lambda_D values ("experimentally tuned"), so the weights below are:
  * kd_cls / kd_cls_t: 1, the public ILT code's lambda;
  * kd_enc: 50 with the mean-squared-error reduction, the public code's value
    on the last ResNet block;
  * kd_dec: 50, our choice (same scale as kd_enc, same reduction);
  * spkd / spkd_avg: 100, our choice: Tung & Mori's gamma = 3000 with their
    1/B^2 normalisation is about 100-190 under Eq. 8's 1/B at batch 16-32;
  * kd_cls_t temperature 10, our choice (the paper uses 1..1000 by scenario);
  * ilt: the MiB code's ILT (used for the second paper's tables): 100 x its
    output KD (student log-softmax over the old channels against the old
    softmax, averaged over classes and pixels: the `lwf` term of
    losses/mib.py) + 100 x MSE on the encoder output.
Options default to the public code's conventions; `conventions=paper` in the
config argument switches to the equations as written (each method's
`paper_options`).

Frozen parts (no update at all at steps > 0: no gradient step, no weight
decay, BatchNorm statistics kept):
  * ef: the whole encoder, i.e. every parameter under `backbone/` (the ResNet:
    stem and stages 1-4). The ASPP decoder and the classifier heads train.
  * e2lf: "the first two layers of the ResNet": `backbone/stem` (the 7x7
    stride-2 conv + its BatchNorm; 3x3 for resnet_small) and `backbone/stage1`
    (ResNet's conv2_x: 3 bottleneck blocks in ResNet-50/101). Other readings
    (e.g. only two convolutions) can be set with `--config.freeze`.
"""

from incseg_jax.methods import Method, register

_KD_CODE = {"student_softmax": "all", "pixels": "bg_old", "reduction": "mean"}
_L2_CODE = {"reduction": "mean"}
# The equations as written (`conventions=paper`): Eqs. 3/5 sum over every
# pixel of an image and average over images; Eqs. 6/7 are squared Frobenius
# norms per image.
_KD_PAPER = {"student_softmax": "all", "pixels": "all", "reduction": "sum"}
_L2_PAPER = {"reduction": "sum"}

register(Method(name="kd_cls", losses={"ce": 1.0, "kd_cls": 1.0}, options={"kd_cls": _KD_CODE},
                paper_options={"kd_cls": _KD_PAPER}, doc="output distillation on the old classes (Eq. 3)"))
register(Method(name="kd_cls_t", losses={"ce": 1.0, "kd_cls_t": 1.0},
                options={"kd_cls_t": dict(_KD_CODE, temperature=10.0)}, paper_options={"kd_cls_t": _KD_PAPER},
                doc="output distillation with temperature (Eqs. 4-5)"))
register(Method(name="ef", losses={"ce": 1.0}, frozen=("backbone",), doc="encoder frozen after step 0 (EF)"))
register(Method(name="e2lf", losses={"ce": 1.0}, frozen=("backbone/stem", "backbone/stage1"),
                doc="first two encoder layers frozen after step 0 (E2LF)"))
register(Method(name="kd_enc", losses={"ce": 1.0, "kd_enc": 50.0}, options={"kd_enc": _L2_CODE},
                paper_options={"kd_enc": _L2_PAPER}, doc="L2 on the encoder output (Eq. 6)"))
register(Method(name="kd_dec", losses={"ce": 1.0, "kd_dec": 50.0}, options={"kd_dec": _L2_CODE},
                paper_options={"kd_dec": _L2_PAPER}, doc="L2 on the ASPP branches (Eq. 7)"))
register(Method(name="spkd", losses={"ce": 1.0, "spkd": 100.0}, doc="similarity-preserving KD (Eq. 8)"))
register(Method(name="spkd_avg", losses={"ce": 1.0, "spkd_avg": 100.0},
                doc="similarity-preserving KD on spatially summed features (Eq. 9)"))
register(Method(name="ilt", losses={"ce": 1.0, "lwf": 100.0, "kd_enc": 100.0}, options={"kd_enc": _L2_CODE},
                paper_options={"kd_enc": _L2_PAPER},
                doc="ILT as in the MiB code: output KD (its class-averaged KD, our `lwf` term) + encoder L2"))
