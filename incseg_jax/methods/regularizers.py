"""EWC, PI and RW as the MiB code runs them (its `utils/regularizer.py` and `argparser.py`).

Each is the cross-entropy plus `reg_importance` x its parameter penalty
(`incseg_jax/losses/regularizers.py`), with the MiB code's defaults: EWC 500,
PI 500, RW 100; alpha 0.9 (EWC, RW), the RW score every 10 train steps,
min-max normalised importance. Their importance is accumulated from step 0
on, so each trains its own step 0 (the state an `init_from` run brings must
be the same term's). They run in MiB's code, so they share its label
conventions (void trained as background, classes not yet learned ignored in
evaluation), and combine with MiB as `mib+ewc` (MiB's unbiased CE then
replaces the plain CE, see `methods.get`).
"""

from incseg_jax.losses import regularizers as _regularizers  # noqa: F401  (registers the terms)
from incseg_jax.methods import Method, register

register(Method(
    name="ewc",
    losses={"ce": 1.0, "ewc": 500.0},
    options={"ewc": {"alpha": 0.9, "normalize": True}},
    void_as_background=True,
    doc="EWC (MiB code): CE + 500 x sum F~ (theta - theta_old)^2, Fisher as a running average (alpha 0.9)"))

register(Method(
    name="pi",
    losses={"ce": 1.0, "pi": 500.0},
    options={"pi": {"normalize": True}},
    void_as_background=True,
    doc="PI / path integral (MiB code): CE + 500 x sum S~ (theta - theta_old)^2"))

register(Method(
    name="rw",
    losses={"ce": 1.0, "rw": 100.0},
    options={"rw": {"alpha": 0.9, "iterations": 10, "normalize": True}},
    void_as_background=True,
    doc="RW / Riemannian walk (MiB code): CE + 100 x sum (F~ + S~) (theta - theta_old)^2"))
