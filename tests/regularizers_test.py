"""Tests for EWC, PI and RW's state rules and penalties (`incseg_jax/losses/regularizers.py`).

The float64 NumPy reference below is a transcription of the MiB code's
`utils/regularizer.py` (fcdl94/MiB: classes `EWC`, `PI`, `RW`), written
independently of the implementation, on dicts of named arrays as torch's
`named_parameters()` gives them. It is driven the way the MiB code's
`train.py` drives it: every iteration `update()` sees the forward loss's
gradients at the parameters before the optimizer step, `penalty()` is read at
those parameters, and the next task step's regularizer is built from the
finished step's `state_dict()` (taken after the last optimizer step).

How our rules map onto it: `rule.init(StateContext(...))` is the constructor
(with the previous step's final running state in place of `state_dict()`,
so MiB's `get()` / `get_score()` happen inside our `init`), `rule.update` is
`update()`, and the registered terms `ewc`, `pi`, `rw` are `penalty()`
without the `reg_importance` factor.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from incseg_jax import losses
from incseg_jax.losses import regularizers
from incseg_jax.losses import state as state_lib

RTOL, ATOL = 1e-5, 1e-6
EWC_OPTS = {"alpha": 0.9, "normalize": True}
PI_OPTS = {"normalize": True}
# A small `iterations` so that the RW score is updated several times per step.
RW_OPTS = {"alpha": 0.9, "iterations": 3, "normalize": True}
ITERS = 8  # iterations per task step: RW's score moves at 3 and 6 (its temp is set at 0, 3, 6)


# ----------------------------------------------------------------------------------------
# The MiB code's regularizers in float64 NumPy (utils/regularizer.py)
# ----------------------------------------------------------------------------------------

MIB_EPS = 1e-8


def normalize_fn(mat):
  """MiB's `normalize_fn`: min-max over the whole tensor."""
  return (mat - mat.min()) / (mat.max() - mat.min() + MIB_EPS)


class RefEWC:
  """MiB's `EWC`; `params` plays `model.named_parameters()`, `old_params` `model_old.state_dict()`."""

  def __init__(self, params, old_params, fisher=None, alpha=0.9, normalize=True):
    self.alpha = alpha
    if old_params is not None:
      self.model_old_dict = dict(old_params)
      self.penalize = True
    else:
      self.penalize = False
    if fisher is not None:
      # The old Fisher is normalised for the penalty; the running one continues from the raw values.
      self.fisher_old = {k: normalize_fn(p) if normalize else p for k, p in fisher.items()}
      self.fisher = {k: p.copy() for k, p in fisher.items()}
    else:
      self.fisher_old = None
      self.penalize = False
      self.fisher = {}
    for n, p in params.items():  # new keys (the new head) start at ones
      if n not in self.fisher:
        self.fisher[n] = np.ones_like(p)

  def update(self, params, grads):
    for n in params:
      self.fisher[n] = (self.alpha * grads[n] ** 2) + ((1 - self.alpha) * self.fisher[n])

  def penalty(self, params):
    if not self.penalize:
      return 0.0
    return sum((self.fisher_old[n] * (p - self.model_old_dict[n]) ** 2).sum()
               for n, p in params.items() if n in self.model_old_dict)

  def state_dict(self, final_params):
    del final_params
    return {"fisher": {k: v.copy() for k, v in self.fisher.items()}}

  @classmethod
  def from_state(cls, params, old_params, state, opts):
    return cls(params, old_params, fisher=None if state is None else state["fisher"], alpha=opts["alpha"],
               normalize=opts["normalize"])


class RefPI:
  """MiB's `PI` (path integral)."""

  def __init__(self, params, old_params, score, normalize=False):
    self.penalize = True
    if old_params is not None:
      self.model_old_dict = dict(old_params)
      for k, p in params.items():  # the new head's reference is its starting value
        if k not in self.model_old_dict:
          self.model_old_dict[k] = p.copy()
    else:
      self.model_old_dict = {k: p.copy() for k, p in params.items()}
      self.penalize = False
    if score is not None:
      self.score = score
      self.score_actual = {n: normalize_fn(p) if normalize else p for n, p in score.items()}
    else:
      self.score = None
      self.penalize = False
    self.delta = {n: np.zeros_like(p) for n, p in params.items()}
    self.model_temp = None

  def update(self, params, grads):
    if self.model_temp is not None:
      for n, p in params.items():
        self.delta[n] = self.delta[n] + grads[n] * (self.model_temp[n] - p)
    self.model_temp = {k: p.copy() for k, p in params.items()}

  def penalty(self, params):
    if not self.penalize:
      return 0.0
    return sum((self.score_actual[n] * (p - self.model_old_dict[n]) ** 2).sum()
               for n, p in params.items() if n in self.score_actual)

  def get(self, final_params):
    score = {}
    for n, p in final_params.items():
      s = self.delta[n] / ((p - self.model_old_dict[n]) ** 2 + 1e-20)
      s = np.where(s > 0, s, 0.0)
      if self.score is not None and n in self.score:
        s = self.score[n] + s
      score[n] = s
    return score

  def state_dict(self, final_params):
    return {"score": self.get(final_params)}

  @classmethod
  def from_state(cls, params, old_params, state, opts):
    return cls(params, old_params, score=None if state is None else state["score"], normalize=opts["normalize"])


class RefRW:
  """MiB's `RW` (Riemannian walk)."""

  def __init__(self, params, old_params, score, fisher, alpha=0.9, iterations=10, normalize=True):
    self.alpha = alpha
    self.penalize = True
    self.iterations = iterations
    self.count = 0
    if old_params is not None:
      self.model_old_dict = dict(old_params)
    else:
      self.model_old_dict = {k: p.copy() for k, p in params.items()}
      self.penalize = False
    if fisher is not None and score is not None:
      self.fisher = {}
      self.score_plus_fisher = {}
      for key, par in fisher.items():
        self.score_plus_fisher[key] = normalize_fn(par) if normalize else par.copy()
        self.fisher[key] = par.copy()
      self.score_old = {}
      for n, p in score.items():
        self.score_old[n] = p
        self.score_plus_fisher[n] = self.score_plus_fisher[n] + (normalize_fn(p) if normalize else p)
    else:
      self.penalize = False
      self.score_old = None
      self.fisher = {}
    self.score = {n: np.zeros_like(p) for n, p in params.items()}
    for n, p in params.items():
      if n not in self.fisher:
        self.fisher[n] = np.ones_like(p)
    self.model_temp = None

  def update(self, params, grads):
    if self.count % self.iterations == 0:
      if self.model_temp is not None:
        for n, p in params.items():
          delta = grads[n] * (self.model_temp[n] - p)
          den = 0.5 * self.fisher[n] * (p - self.model_temp[n]) ** 2 + MIB_EPS
          self.score[n] = self.score[n] + delta / den
      self.model_temp = {k: p.copy() for k, p in params.items()}
    self.count += 1
    for n in params:
      self.fisher[n] = (self.alpha * grads[n] ** 2) + ((1 - self.alpha) * self.fisher[n])

  def get_score(self):
    score = {}
    for n, p in self.score.items():
      score[n] = np.where(p >= 0, p, 0.0)
      if self.score_old is not None and n in self.score_old:
        score[n] = 0.5 * (score[n] + self.score_old[n])
    return score

  def penalty(self, params):
    if not self.penalize:
      return 0.0
    return sum((self.score_plus_fisher[n] * (p - self.model_old_dict[n]) ** 2).sum()
               for n, p in params.items() if n in self.model_old_dict)

  def state_dict(self, final_params):
    del final_params
    return {"score": self.get_score(), "fisher": {k: v.copy() for k, v in self.fisher.items()}}

  @classmethod
  def from_state(cls, params, old_params, state, opts):
    return cls(params, old_params, score=None if state is None else state["score"],
               fisher=None if state is None else state["fisher"], alpha=opts["alpha"],
               iterations=opts["iterations"], normalize=opts["normalize"])


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def flatten(tree, prefix=""):
  """A nested dict as {"a.b.c": float64 array}, the names torch's `named_parameters()` would give."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, name + "."))
    else:
      out[name] = np.asarray(v, np.float64)
  return out


def assert_tree_close(ours, ref, what):
  """Our nested state tree equals the reference's named dict: same names, same values to float32 precision."""
  flat = flatten(ours)
  assert sorted(flat) == sorted(ref), f"{what}: names {sorted(flat)} != {sorted(ref)}"
  for n in ref:
    np.testing.assert_allclose(flat[n], ref[n], rtol=RTOL, atol=ATOL, err_msg=f"{what}: {n}")


def penalty_inputs(params, teacher_params, state):
  return losses.LossInputs(student=None, teacher=None, labels=None, images=None, task=None, params=params,
                           teacher_params=teacher_params, state=state)


def as_host(tree):
  return jax.tree.map(np.asarray, tree)


def jitted_update(rule, opts):
  """The rule's update traced under jit with a traced step, as inside the train step."""
  return jax.jit(lambda s, g, p, i: rule.update(s, state_lib.UpdateInputs(grads=g, params=p, step=i, options=opts)))


def init(rule, params, teacher_params, previous, opts):
  ctx = state_lib.StateContext(params=params, teacher_params=teacher_params, previous=previous, task=None,
                               options=opts)
  return as_host(rule.init(ctx))


def tree_map_np(fn, *trees):
  return jax.tree.map(lambda *xs: np.asarray(fn(*xs), np.float32), *trees)


def backbone_and_head(rng, heads):
  """A parameter tree with a backbone and heads of the given widths (float32)."""
  tree = {"backbone": {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))},
          "classifier": {f"head_{k}": {"kernel": rng.normal(size=(4, w)), "bias": rng.normal(size=(w,))}
                         for k, w in enumerate(heads)}}
  return tree_map_np(lambda x: x, tree)


def run_step(rng, start):
  """One scripted task step: ITERS iterations of random gradients and a monotone, SGD-like walk.

  The parameters do not follow -lr * grad: in the MiB code the optimizer step
  also carries the penalty's gradient (and momentum), so the walk is scripted
  apart from the gradients the rules see. Each element walks in a fixed
  direction by 0.025-0.075 per iteration, so theta_end - theta_start is far
  from 0 (PI divides by its square + 1e-20) and parameter differences stay
  well resolved in float32; the gradients have both signs, so PI's and RW's
  max(score, 0) clip some elements.

  Returns:
    (grads, thetas): per iteration i the gradients and the parameters before
    the optimizer step (thetas[0] = start); thetas[ITERS] is the final value.
  """
  direction = jax.tree.map(lambda x: np.where(rng.uniform(size=x.shape) < 0.5, -1.0, 1.0), start)
  thetas, grads = [start], []
  for _ in range(ITERS):
    grads.append(tree_map_np(lambda x: rng.normal(size=x.shape) * 1.5, start))
    thetas.append(tree_map_np(lambda t, d: t - 0.05 * d * (0.5 + rng.uniform(size=t.shape)), thetas[-1], direction))
  return grads, thetas


def grow(rng, params, k, width):
  """The student's start at step k: the teacher's parameters plus a fresh `classifier/head_k`."""
  new = tree_map_np(lambda x: x, params)
  new["classifier"] = dict(new["classifier"])
  new["classifier"][f"head_{k}"] = tree_map_np(lambda x: x, {"kernel": rng.normal(size=(4, width)),
                                                             "bias": rng.normal(size=(width,))})
  return new


def scenario(seed=0):
  """Three task steps (head widths 3, then +2, then +1): each step's start, gradients and parameters."""
  rng = np.random.default_rng(seed)
  steps = []
  start = backbone_and_head(rng, [3])
  for k, width in enumerate([None, 2, 1]):
    if k > 0:
      start = grow(rng, steps[-1]["thetas"][-1], k, width)
    grads, thetas = run_step(rng, start)
    steps.append({"start": start, "grads": grads, "thetas": thetas,
                  "teacher": None if k == 0 else steps[-1]["thetas"][-1]})
  return steps


def perturbed(rng, params, scale=0.3):
  return tree_map_np(lambda x: x + scale * rng.normal(size=x.shape), params)


# Per method: our rule, penalty term, reference class, options, and the reference's attribute
# each of our state entries is compared with (None: compared elsewhere).
METHODS = {
    "ewc": (regularizers.EWC, regularizers.ewc, RefEWC, EWC_OPTS),
    "pi": (regularizers.PI, regularizers.pi, RefPI, PI_OPTS),
    "rw": (regularizers.RW, regularizers.rw, RefRW, RW_OPTS),
}


def compare_state(name, ours, ref, k, i, old_names):
  """Our state against the reference's attributes after init (i=None) or after update i."""
  where = f"{name} step {k} " + ("init" if i is None else f"update {i}")
  if name == "ewc":
    assert_tree_close(ours["fisher"], ref.fisher, where + " fisher")
    if k > 0:
      assert_tree_close(ours["importance"], ref.fisher_old, where + " importance")
  elif name == "pi":
    assert_tree_close(ours["delta"], ref.delta, where + " delta")
    # MiB's reference for the score: the teacher's values, the new head's start.
    assert_tree_close(ours["ref"], ref.model_old_dict, where + " ref")
    if ref.model_temp is not None:  # MiB sets model_temp at the first update; ours starts at the params
      assert_tree_close(ours["temp"], ref.model_temp, where + " temp")
    if k > 0:
      assert_tree_close(ours["score"], ref.score, where + " score")
      assert_tree_close(ours["importance"], ref.score_actual, where + " importance")
  else:
    assert_tree_close(ours["fisher"], ref.fisher, where + " fisher")
    assert_tree_close(ours["score"], ref.score, where + " score")
    if ref.model_temp is not None:
      assert_tree_close(ours["temp"], ref.model_temp, where + " temp")
    if k > 0:
      assert_tree_close(ours["score_old"], ref.score_old, where + " score_old")
      assert_tree_close(ours["importance"], ref.score_plus_fisher, where + " importance")
  if k > 0:
    # Importance exists for the teacher's parameters only: a head gets it from the step after it was learned.
    assert sorted(flatten(ours["importance"])) == sorted(old_names), where


def run_scenario(name, steps, opts=None):
  """Drives our rule and the reference through `steps`; checks states and penalties; returns our states."""
  rule, term, ref_cls, default_opts = METHODS[name]
  opts = default_opts if opts is None else opts
  update = jitted_update(rule, opts)
  rng = np.random.default_rng(123)
  previous, ref_state, history = None, None, []
  for k, step in enumerate(steps):
    teacher = step["teacher"]
    state = init(rule, step["start"], teacher, previous, opts)
    ref = ref_cls.from_state(flatten(step["start"]), None if teacher is None else flatten(teacher), ref_state, opts)
    old_names = [] if teacher is None else list(flatten(teacher))
    compare_state(name, state, ref, k, None, old_names)
    history.append({"init": state})
    for i, (g, theta) in enumerate(zip(step["grads"], step["thetas"][:-1])):
      state = as_host(update(state, g, theta, jnp.int32(i)))
      ref.update(flatten(theta), flatten(g))
      compare_state(name, state, ref, k, i, old_names)
      if k > 0 and i % 3 == 0:
        # The penalty at the iteration's parameters and at a random point around the teacher.
        for point in (theta, perturbed(rng, theta)):
          got = float(term(penalty_inputs(point, teacher, state)))
          np.testing.assert_allclose(got, ref.penalty(flatten(point)), rtol=RTOL, err_msg=f"{name} step {k} it {i}")
    history[-1]["final"] = state
    previous, ref_state = state, ref.state_dict(flatten(step["thetas"][-1]))
  return history


# ----------------------------------------------------------------------------------------
# 1. Against the MiB code, over three task steps
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def steps():
  return scenario()


@pytest.fixture(scope="module")
def histories():
  """run_scenario, run (and checked) once per method and normalize option for the whole module."""
  cache = {}

  def get(name, steps, normalize=True):
    if (name, normalize) not in cache:
      cache[name, normalize] = run_scenario(name, steps, dict(METHODS[name][3], normalize=normalize))
    return cache[name, normalize]

  return get


@pytest.mark.parametrize("name", ["ewc", "pi", "rw"])
def test_matches_mib_code_over_three_steps(name, steps, histories):
  """State after every init and update, and penalties, equal the float64 transcription of MiB's class."""
  histories(name, steps)


@pytest.mark.parametrize("name", ["ewc", "pi", "rw"])
def test_matches_mib_code_unnormalized(name, steps, histories):
  """The same with normalize=False (the MiB code's --reg_no_normalize)."""
  histories(name, steps, normalize=False)


def test_ewc_scenario_properties(steps, histories):
  """EWC: a new head's Fisher starts at ones; importance is the previous Fisher min-max normalised per tensor."""
  history = histories("ewc", steps)
  for k in (1, 2):
    init_state, prev_final = history[k]["init"], history[k - 1]["final"]
    head = init_state["fisher"]["classifier"][f"head_{k}"]
    for leaf in head.values():
      np.testing.assert_array_equal(leaf, 1.0)
    # The running Fisher of the old parameters continues from the raw (unnormalised) previous values.
    np.testing.assert_array_equal(init_state["fisher"]["backbone"]["w"], prev_final["fisher"]["backbone"]["w"])
    for n, leaf in flatten(init_state["importance"]).items():
      # Normalised per tensor: each leaf spans [0, 1) on its own, not the whole tree's range.
      assert leaf.min() == 0.0, n
      np.testing.assert_allclose(leaf.max(), 1.0, rtol=1e-6, err_msg=n)
    raw = prev_final["fisher"]["classifier"]["head_0"]["bias"]
    np.testing.assert_allclose(init_state["importance"]["classifier"]["head_0"]["bias"],
                               (raw - raw.min()) / (raw.max() - raw.min() + 1e-8), rtol=RTOL, atol=ATOL)
  assert "head_1" in history[2]["init"]["importance"]["classifier"]
  assert "head_2" not in history[2]["init"]["importance"]["classifier"]


def test_pi_score_summed_over_steps(steps, histories):
  """PI: the score at step 2's start is step 1's score plus step 1's own clipped path integral."""
  history = histories("pi", steps)
  s1, s2 = history[1], history[2]
  final = s1["final"]
  theta_end = steps[1]["thetas"][-1]
  for path in (("backbone", "w"), ("classifier", "head_0", "kernel")):
    get = lambda t: t[path[0]][path[1]] if len(path) == 2 else t[path[0]][path[1]][path[2]]  # noqa: E731
    own = get(final["delta"]).astype(np.float64) / (
        (get(theta_end).astype(np.float64) - get(final["ref"])) ** 2 + 1e-20)
    np.testing.assert_allclose(get(s2["init"]["score"]), get(s1["init"]["score"]) + np.maximum(own, 0.0),
                               rtol=RTOL, atol=ATOL)
  # head_1 was learned at step 1: its score is its own path integral only (nothing to add).
  assert "head_1" not in s1["init"]["score"]["classifier"]
  assert "head_1" in s2["init"]["score"]["classifier"]


def test_rw_score_averaged_with_previous(steps, histories):
  """RW: the finished score is max(score, 0), averaged with the previous steps' where that exists."""
  history = histories("rw", steps)
  s1_final, s2_init = history[1]["final"], history[2]["init"]
  clipped = lambda x: np.maximum(x, 0.0)  # noqa: E731
  np.testing.assert_allclose(
      s2_init["score_old"]["backbone"]["w"],
      0.5 * (clipped(s1_final["score"]["backbone"]["w"]) + s1_final["score_old"]["backbone"]["w"]),
      rtol=RTOL, atol=ATOL)
  # head_1 was new at step 1, so it has no previous score to average with.
  np.testing.assert_allclose(s2_init["score_old"]["classifier"]["head_1"]["kernel"],
                             clipped(s1_final["score"]["classifier"]["head_1"]["kernel"]), rtol=RTOL, atol=ATOL)
  # The score at step 1's start is step 0's, clipped (no average at step 0).
  np.testing.assert_allclose(history[1]["init"]["score_old"]["backbone"]["b"],
                             clipped(history[0]["final"]["score"]["backbone"]["b"]), rtol=RTOL, atol=ATOL)
  # The score moved during each step (iterations=3 with 8 iterations: two score updates).
  assert np.abs(s1_final["score"]["backbone"]["w"]).min() > 0


def test_pi_reference_is_teacher_when_head_init_changes_old_leaf():
  """PI with an old leaf changed at the step's start (MiB's balanced init) against the MiB code.

  In the MiB code (run.py) `model.module.init_new_classifier(device)` sets
  `cls[0].bias[0]` of the student to b_0 - log(N_new + 1) before `Trainer(...)`
  builds `PI(model, model_old, ...)`, whose `model_old_dict =
  model_old.state_dict()` keeps the teacher's b_0; `get()` then divides by
  `(p - model_old_dict[n])^2`, the move from the teacher's value. `pi_init`
  must take `ref` from the teacher on old leaves, not from the student's
  start (this test found that it once did).
  """
  steps = scenario(seed=1)
  # Step 1's start as mib_head_init leaves it: head_0's background bias lowered by log(1 + 1).
  start = steps[1]["start"]
  start["classifier"]["head_0"] = dict(start["classifier"]["head_0"])
  bias = start["classifier"]["head_0"]["bias"].copy()
  bias[0] -= np.float32(math.log(2.0))
  start["classifier"]["head_0"]["bias"] = bias
  steps[1]["grads"], steps[1]["thetas"] = run_step(np.random.default_rng(7), start)
  steps[2]["teacher"] = steps[1]["thetas"][-1]
  steps[2]["start"] = grow(np.random.default_rng(8), steps[2]["teacher"], 2, 1)
  steps[2]["grads"], steps[2]["thetas"] = run_step(np.random.default_rng(9), steps[2]["start"])
  # Step 2's score at classifier.head_0.bias[0] is delta / (theta_end - b_0)^2,
  # with the teacher's b_0, not the lowered start.
  run_scenario("pi", steps)


# ----------------------------------------------------------------------------------------
# 2. Hand-computed cases
# ----------------------------------------------------------------------------------------


def test_ewc_running_average_by_hand():
  """EWC's Fisher on a scalar: 1 -> 0.9 g1^2 + 0.1 * 1 -> 0.9 g2^2 + 0.1 * previous."""
  params = {"s": np.float32(0.5)}
  state = init(regularizers.EWC, params, None, None, EWC_OPTS)
  np.testing.assert_array_equal(state["fisher"]["s"], 1.0)  # step 0: ones, no importance yet
  assert "importance" not in state
  update = jitted_update(regularizers.EWC, EWC_OPTS)
  # g1 = 2: 0.9 * 4 + 0.1 * 1 = 3.7.
  state = as_host(update(state, {"s": np.float32(2.0)}, params, jnp.int32(0)))
  np.testing.assert_allclose(state["fisher"]["s"], 3.7, rtol=1e-6)
  # g2 = 1: 0.9 * 1 + 0.1 * 3.7 = 1.27.
  state = as_host(update(state, {"s": np.float32(1.0)}, params, jnp.int32(1)))
  np.testing.assert_allclose(state["fisher"]["s"], 1.27, rtol=1e-6)
  # Next step, unnormalised: the importance is that Fisher; the running Fisher continues from it.
  nxt = init(regularizers.EWC, params, params, state, dict(EWC_OPTS, normalize=False))
  np.testing.assert_allclose(nxt["importance"]["s"], 1.27, rtol=1e-6)
  np.testing.assert_allclose(nxt["fisher"]["s"], 1.27, rtol=1e-6)
  # Normalised, a single value spans nothing: (x - min) / (max - min + 1e-8) = 0.
  nxt = init(regularizers.EWC, params, params, state, EWC_OPTS)
  np.testing.assert_array_equal(nxt["importance"]["s"], 0.0)


def test_ewc_penalty_two_elements_by_hand():
  """EWC on a 2-element tensor, Fisher and penalty by hand.

  g1 = [2, 0]: F = [0.9*4 + 0.1, 0.1] = [3.7, 0.1];
  g2 = [1, 3]: F = [0.9 + 0.37, 8.1 + 0.01] = [1.27, 8.11];
  normalised: [0, 6.84 / (6.84 + 1e-8)] ~ [0, 1];
  penalty at theta_old + [0.4, 0.5]: 0 * 0.16 + 1 * 0.25 = 0.25
  (unnormalised: 1.27 * 0.16 + 8.11 * 0.25 = 0.2032 + 2.0275 = 2.2307).
  """
  old = {"w": np.array([1.0, -1.0], np.float32)}
  state = init(regularizers.EWC, old, None, None, EWC_OPTS)
  update = jitted_update(regularizers.EWC, EWC_OPTS)
  state = as_host(update(state, {"w": np.array([2.0, 0.0], np.float32)}, old, jnp.int32(0)))
  state = as_host(update(state, {"w": np.array([1.0, 3.0], np.float32)}, old, jnp.int32(1)))
  np.testing.assert_allclose(state["fisher"]["w"], [1.27, 8.11], rtol=1e-6)
  theta = {"w": np.array([1.4, -0.5], np.float32)}
  nxt = init(regularizers.EWC, old, old, state, EWC_OPTS)
  np.testing.assert_allclose(nxt["importance"]["w"], [0.0, 1.0], atol=1e-7)
  np.testing.assert_allclose(float(regularizers.ewc(penalty_inputs(theta, old, nxt))), 0.25, rtol=1e-6)
  raw = init(regularizers.EWC, old, old, state, dict(EWC_OPTS, normalize=False))
  np.testing.assert_allclose(float(regularizers.ewc(penalty_inputs(theta, old, raw))), 2.2307, rtol=1e-6)


def test_pi_path_integral_by_hand():
  """PI over two iterations on w = [w_a, w_b], worked by hand (values exact in binary).

  Start (= ref): w = [1, 0].
  iteration 0: g = [0.5, 1]; no previous parameters yet, so delta stays 0;
    temp = [1, 0]; the optimizer then moves w to [0.75, 0.5].
  iteration 1: g = [2, 1]; delta += g * (temp - w) = [2 * 0.25, 1 * (-0.5)] = [0.5, -0.5];
    temp = [0.75, 0.5]; the optimizer then moves w to its final value [0.5, 1].
  Next step's score: delta / ((w_end - ref)^2 + 1e-20) = [0.5 / 0.25, -0.5 / 1] = [2, -0.5],
    clipped at 0: [2, 0]; normalised: [2 / (2 + 1e-8), 0] ~ [1, 0].
  Penalty at w_end + [0.3, 2]: 1 * 0.09 + 0 * 4 = 0.09 (unnormalised: 2 * 0.09 = 0.18).
  """
  start = {"w": np.array([1.0, 0.0], np.float32)}
  state = init(regularizers.PI, start, None, None, PI_OPTS)
  update = jitted_update(regularizers.PI, PI_OPTS)
  state = as_host(update(state, {"w": np.array([0.5, 1.0], np.float32)}, start, jnp.int32(0)))
  np.testing.assert_array_equal(state["delta"]["w"], [0.0, 0.0])
  np.testing.assert_array_equal(state["temp"]["w"], [1.0, 0.0])
  w1 = {"w": np.array([0.75, 0.5], np.float32)}
  state = as_host(update(state, {"w": np.array([2.0, 1.0], np.float32)}, w1, jnp.int32(1)))
  np.testing.assert_array_equal(state["delta"]["w"], [0.5, -0.5])
  np.testing.assert_array_equal(state["temp"]["w"], [0.75, 0.5])
  w_end = {"w": np.array([0.5, 1.0], np.float32)}
  nxt = init(regularizers.PI, w_end, w_end, state, PI_OPTS)
  np.testing.assert_allclose(nxt["score"]["w"], [2.0, 0.0], rtol=1e-7)
  np.testing.assert_allclose(nxt["importance"]["w"], [1.0, 0.0], rtol=1e-7)
  np.testing.assert_array_equal(nxt["ref"]["w"], w_end["w"])  # the new step measures from its own start
  np.testing.assert_array_equal(nxt["delta"]["w"], [0.0, 0.0])
  theta = {"w": np.array([0.8, 3.0], np.float32)}
  np.testing.assert_allclose(float(regularizers.pi(penalty_inputs(theta, w_end, nxt))), 0.09, rtol=1e-6)
  raw = init(regularizers.PI, w_end, w_end, state, dict(PI_OPTS, normalize=False))
  np.testing.assert_allclose(float(regularizers.pi(penalty_inputs(theta, w_end, raw))), 0.18, rtol=1e-6)


# ----------------------------------------------------------------------------------------
# 3. Invariances
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ewc", "pi", "rw"])
def test_penalty_zero_at_teacher(name, steps, histories):
  """Every penalty is 0 when the parameters are the teacher's, whatever the importance."""
  term = METHODS[name][1]
  history = histories(name, steps)
  for k in (1, 2):
    state, teacher = history[k]["init"], steps[k]["teacher"]
    assert float(term(penalty_inputs(teacher, teacher, state))) == 0.0
    # With the new head moved too: it is not the teacher's, so it costs nothing either.
    assert float(term(penalty_inputs(steps[k]["start"], teacher, state))) == 0.0
    assert float(term(penalty_inputs(perturbed(np.random.default_rng(k), teacher), teacher, state))) > 0.0


@pytest.mark.parametrize("name", ["ewc", "pi", "rw"])
def test_normalize_false_leaves_importance_raw(name, steps, histories):
  """normalize=False: the importance is the raw Fisher / score / Fisher + score of the previous steps."""
  history = histories(name, steps, normalize=False)
  for k in (1, 2):
    prev, state = history[k - 1]["final"], history[k]["init"]
    teacher_names = sorted(flatten(steps[k]["teacher"]))
    imp = flatten(state["importance"])
    assert sorted(imp) == teacher_names
    if name == "ewc":
      expected = {n: flatten(prev["fisher"])[n] for n in teacher_names}
    elif name == "pi":
      expected = flatten(state["score"])
    else:
      expected = {n: flatten(prev["fisher"])[n] + flatten(state["score_old"])[n] for n in teacher_names}
    for n in teacher_names:
      np.testing.assert_allclose(imp[n], expected[n], rtol=RTOL, atol=ATOL, err_msg=f"{name} step {k} {n}")
    # Some raw value lies outside [0, 1] (normalisation would have mapped it there).
    assert max(v.max() for v in imp.values()) > 1.0


@pytest.mark.parametrize("name", ["ewc", "pi", "rw"])
def test_penalty_ignores_new_head(name, steps, histories):
  """A leaf the teacher lacks (the step's new head) moves freely at no cost; an old leaf's move costs."""
  term = METHODS[name][1]
  history = histories(name, steps)
  for k in (1, 2):
    state, teacher = history[k]["init"], steps[k]["teacher"]
    theta = perturbed(np.random.default_rng(10 + k), steps[k]["start"])
    base = float(term(penalty_inputs(theta, teacher, state)))
    moved = tree_map_np(lambda x: x, theta)
    head = f"head_{k}"
    moved["classifier"] = dict(moved["classifier"])
    moved["classifier"][head] = tree_map_np(lambda x: x + 100.0, moved["classifier"][head])
    assert float(term(penalty_inputs(moved, teacher, state))) == base
    moved["classifier"]["head_0"] = tree_map_np(lambda x: x + 1.0, moved["classifier"]["head_0"])
    assert float(term(penalty_inputs(moved, teacher, state))) > base
