"""RECALL (Maracani et al., ICCV 2021), its replay variant: web-crawled images of the old classes.

At each incremental step the batches carry, beside the step's own images,
unlabelled images of the old classes (`config.replay.dir/<class>/*.jpg`)
labelled by the previous model, and the step's own images get the previous
model's old classes on their background (`incseg_jax/replay.py`). The loss is
the plain cross-entropy over every class seen so far; as in the RECALL code
only the decoder trains in incremental steps (the encoder is frozen after
step 0). The RECALL code averages the cross-entropy over the labelled pixels
only (`--config.loss_options.ce.reduction=valid`); the default here keeps
every method's convention (all pixels, docs/reference_code.md §1), so that
`recall` shares its step-0 model with `ft` (identical at step 0), and with
replay nearly every pixel is labelled, so the two differ little.
Any other method combines with the replay by `+recall` (e.g. `mib+recall`).
"""

from incseg_jax.methods import Method, register

register(Method(
    name="recall",
    losses={"ce": 1.0},
    frozen=("backbone",),
    replay=True,
    doc="RECALL (replay): CE on the step's images and replay images of the old classes labelled by the "
        "previous model (4 : 4 per batch), background filled with the previous model's old classes; encoder frozen"))
