"""Parameter penalties of EWC, PI (path integral) and RW (Riemannian walk), as the MiB code computes them.

Each is sum over the previous model's parameters of
`importance * (theta - theta_old)^2`, summed (not averaged) over every
element, where `theta_old` is the previous model's value and `importance` is
the method's state (`incseg_jax/methods/regularizers.py`: EWC's Fisher, PI's
path-integral score, RW's Fisher + score, each min-max normalised per
parameter tensor at the start of the step). Parameters the previous model did
not have (the new head) are not penalised. The MiB code multiplies by
`reg_importance` (500 for EWC and PI, 100 for RW): here that is the term's
weight in `config.losses`.

The state rules below follow that code's update order exactly: its
`regularizer.update()` runs after the forward terms' backward pass and before
the penalty's, so the running estimates see the forward terms' gradients; the
state of a step is finalised into the next step's importance when the next
step starts. Each rule's state and its cost (in float32 copies of the
trainable parameters, P):
  * EWC: `fisher` (running, P) and `importance` (the previous steps', on the
    old parameters): 2P. Fisher_t = alpha g_t^2 + (1 - alpha) Fisher_{t-1}
    every train step, from ones for parameters never seen (step 0, a new head);
    the next step penalises with normalise(Fisher).
  * PI: `delta` (path integral, P), `temp` (parameters at the previous train
    step, P), `ref` (the previous model's parameters, the new head's starting
    values, P), `score` and
    `importance` (the previous steps', on the old parameters): 5P.
    delta += g_t (theta_{t-1} - theta_t) from the second train step on; the
    score is max(delta / ((theta_end - ref)^2 + 1e-20), 0) plus the previous
    score, and the next step penalises with normalise(score).
  * RW: `fisher` (P), `score` (P), `temp` (P), `score_old` and `importance`:
    5P. Every `iterations` train steps (from the second such point on) score
    += g (temp - theta) / (0.5 Fisher (theta - temp)^2 + 1e-8) and temp =
    theta; the Fisher as EWC's, updated after the score. The finished score
    is max(score, 0), averaged with the previous one where it exists; the
    next step penalises with normalise(Fisher) + normalise(score).
Normalisation (`normalize`, default on as in the code) is min-max per
parameter tensor. The options are the rules' (`alpha`, `normalize`,
`iterations`); the penalty itself does not use them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from incseg_jax import losses
from incseg_jax.losses import state as state_lib

# The MiB code's constants (utils/regularizer.py): the normalisation's and RW's
# denominator epsilon, and PI's.
EPS = 1e-8
PI_EPS = 1e-20


# The start-of-step computations below (`*_init`, the scores, the normalisation) take and give host arrays and
# use NumPy: run as eager jnp, every op on every parameter was its own dispatch and compile, 2.7 s of PI's
# init at a test model's step 1 against 0.02 s (docs/benchmarks.md). NumPy's float32 arithmetic is
# exactly the equations' (eager XLA divided the normalisation by its scalar denominator 1 ulp differently).
def _normalized(tree, normalize: bool):
  return jax.tree.map(lambda x: state_lib.minmax_normalize(x, EPS) if normalize else np.asarray(x, np.float32), tree)


def _fisher_update(fisher, grads, alpha: float):
  """The MiB code's `(alpha * grad^2) + ((1 - alpha) * fisher)`."""
  return jax.tree.map(lambda f, g: (alpha * jnp.square(g.astype(jnp.float32))) + ((1 - alpha) * f), fisher, grads)


def ewc_init(ctx: state_lib.StateContext):
  ones = state_lib.float32_like(ctx.params, 1.0)
  if ctx.previous is None:
    return {"fisher": ones}
  old = state_lib.restrict(ctx.previous["fisher"], ctx.teacher_params)
  return {"fisher": state_lib.merge(ctx.previous["fisher"], ones),
          "importance": state_lib.copy_tree(_normalized(old, ctx.options.get("normalize", True)))}


def ewc_update(state, u: state_lib.UpdateInputs):
  return dict(state, fisher=_fisher_update(state["fisher"], u.grads, u.options.get("alpha", 0.9)))


def pi_score(previous, final_params):
  """PI's score of a finished step: max(delta / ((theta_end - ref)^2 + 1e-20), 0), plus the earlier score."""
  def one(delta, theta, ref):
    s = delta / (np.square(np.asarray(theta, np.float32) - ref) + np.float32(PI_EPS))
    return np.where(s > 0, s, np.float32(0.0))
  score = jax.tree.map(one, previous["delta"], state_lib.restrict(final_params, previous["delta"]), previous["ref"])
  if "score" not in previous:
    return score
  return state_lib.combine(previous["score"], score, lambda old, new: old + new)  # the code's order


def pi_init(ctx: state_lib.StateContext):
  # The code's `model_old_dict`: the previous model's values on its parameters
  # (not the student's start, which a head initialisation such as MiB's may
  # have changed), the starting values on the new head's.
  ref = ctx.params if ctx.teacher_params is None else state_lib.merge(ctx.teacher_params, ctx.params)
  state = {"delta": state_lib.float32_like(ctx.params, 0.0), "temp": state_lib.copy_tree(ctx.params),
           "ref": state_lib.copy_tree(ref)}
  if ctx.previous is not None:
    score = pi_score(ctx.previous, ctx.teacher_params)
    state["score"] = state_lib.copy_tree(score)
    state["importance"] = state_lib.copy_tree(_normalized(score, ctx.options.get("normalize", True)))
  return state


def pi_update(state, u: state_lib.UpdateInputs):
  started = u.step > 0  # the code's `model_temp` is set by the first update
  delta = jax.tree.map(lambda d, g, t, p: jnp.where(started, d + g * (t - p), d),
                       state["delta"], u.grads, state["temp"], u.params)
  temp = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), u.params)
  return dict(state, delta=delta, temp=temp)


def rw_score(previous):
  """RW's score of a finished step: max(score, 0), averaged with the earlier score where it has the parameter."""
  score = jax.tree.map(lambda s: np.where(s >= 0, s, np.float32(0.0)), previous["score"])
  if "score_old" not in previous:
    return score
  return state_lib.combine(previous["score_old"], score, lambda old, new: np.float32(0.5) * (new + old))


def rw_init(ctx: state_lib.StateContext):
  state = {"fisher": state_lib.float32_like(ctx.params, 1.0), "score": state_lib.float32_like(ctx.params, 0.0),
           "temp": state_lib.copy_tree(ctx.params)}
  if ctx.previous is not None:
    normalize = ctx.options.get("normalize", True)
    score = rw_score(ctx.previous)
    fisher_old = state_lib.restrict(ctx.previous["fisher"], ctx.teacher_params)
    importance = jax.tree.map(lambda f, s: f + s, _normalized(fisher_old, normalize),
                              _normalized(state_lib.restrict(score, ctx.teacher_params), normalize))
    state["fisher"] = state_lib.copy_tree(state_lib.merge(ctx.previous["fisher"], state["fisher"]))
    state["score_old"] = state_lib.copy_tree(score)
    state["importance"] = state_lib.copy_tree(importance)
  return state


def rw_update(state, u: state_lib.UpdateInputs):
  iterations = int(u.options.get("iterations", 10))
  at = (u.step % iterations) == 0
  started = at & (u.step > 0)

  def score_one(s, g, t, p, f):
    delta = g * (t - p)
    den = 0.5 * f * jnp.square(p - t) + EPS
    return jnp.where(started, s + delta / den, s)

  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), u.params)
  score = jax.tree.map(score_one, state["score"], u.grads, state["temp"], params, state["fisher"])
  temp = jax.tree.map(lambda t, p: jnp.where(at, p, t), state["temp"], params)
  fisher = _fisher_update(state["fisher"], u.grads, u.options.get("alpha", 0.9))
  return dict(state, fisher=fisher, score=score, temp=temp)


EWC = state_lib.StateRule("ewc", ewc_init, ewc_update, memory="2P: running Fisher + the previous steps' importance")
PI = state_lib.StateRule("pi", pi_init, pi_update,
                         memory="5P: path integral, last parameters, start parameters, previous score, importance")
RW = state_lib.StateRule("rw", rw_init, rw_update,
                         memory="5P: running Fisher, score, last parameters, previous score, importance")


def _penalty(inputs: losses.LossInputs) -> jax.Array:
  return state_lib.quadratic_penalty(inputs.state["importance"], inputs.params, inputs.teacher_params)




@losses.register("ewc", needs_teacher=True, reads_params=True, state=EWC)
def ewc(inputs: losses.LossInputs, alpha: float = 0.9, normalize: bool = True) -> jax.Array:
  """EWC: sum F~ (theta - theta_old)^2 with F~ the normalised running Fisher of the previous steps."""
  del alpha, normalize  # the state rule's
  return _penalty(inputs)


@losses.register("pi", needs_teacher=True, reads_params=True, state=PI)
def pi(inputs: losses.LossInputs, normalize: bool = True) -> jax.Array:
  """PI: sum S~ (theta - theta_old)^2 with S~ the normalised accumulated path-integral score."""
  del normalize
  return _penalty(inputs)


@losses.register("rw", needs_teacher=True, reads_params=True, state=RW)
def rw(inputs: losses.LossInputs, alpha: float = 0.9, iterations: int = 10, normalize: bool = True) -> jax.Array:
  """RW: sum (F~ + S~) (theta - theta_old)^2, normalised Fisher plus normalised score."""
  del alpha, iterations, normalize
  return _penalty(inputs)
