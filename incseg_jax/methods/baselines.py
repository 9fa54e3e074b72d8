"""Reference points of both papers' tables: fine-tuning and joint training."""

from incseg_jax.methods import Method, register

register(Method(
    name="ft",
    losses={"ce": 1.0},
    doc="fine-tuning: cross-entropy on the current labels only (lower bound)"))

register(Method(
    name="joint",
    losses={"ce": 1.0},
    joint=True,
    doc="joint training on all classes at once (upper bound)"))
