"""The sharded train step gives the same loss, gradient norm, BatchNorm statistics and method state on 8 simulated devices as on 1."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import jax, numpy as np
    from incseg_jax import losses, models, sharding, train_step as ts
    import ml_collections
    cfg = ml_collections.ConfigDict(dict(backbone="resnet_small", decoder="deeplab_v3", output_stride=8,
        aspp_channels=8, atrous_rates=(1, 2, 3), small_width=8, small_blocks=(1, 1, 1, 1), bn_frozen=False))
    optim = ml_collections.ConfigDict(dict(momentum=0.9, nesterov=True, weight_decay=1e-4))
    teacher = models.build_model(cfg, (4,))
    student = models.build_model(cfg, (4, 2))
    tvars = models.init_variables(teacher, jax.random.key(0), 32)
    svars = models.grow_variables(tvars, models.init_variables(student, jax.random.key(1), 32))
    svars = jax.tree.map(np.array, svars)  # the donated state must not share buffers with the teacher
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
             "label": rng.integers(0, 6, size=(8, 32, 32)).astype(np.int32)}
    batch["label"][:, :4] = 255
    mesh = sharding.make_mesh()
    sched = ts.lr_schedule(0.01, 0.0, 0.9, 10)
    tx = ts.make_optimizer(optim, sched, svars["params"], ())
    state = ts.TrainState(step=np.int32(0), params=svars["params"], batch_stats=svars["batch_stats"],
                          opt_state=tx.init(svars["params"]))
    state = sharding.put_replicated(state, mesh)
    task = losses.TaskInfo(index=1, num_channels=6, old_channels=(1, 2, 3), new_channels=(4, 5))
    step = ts.make_train_step(student, teacher, [("ce", 1.0, {})], task, tx, sched)
    losses_out, grad_norms = [], []
    for i in range(2):
        state, m = step(state, sharding.put_replicated(tvars, mesh), sharding.put_batch(batch, mesh),
                        jax.random.key(0))
        losses_out.append(float(m["loss"]))
        grad_norms.append(float(m["grad_norm"]))
    # The new BatchNorm statistics: those of the global batch, whatever the device count.
    stats = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.batch_stats)]
    # EWC: its state (Fisher, importance) replicated like the parameters and
    # updated inside the step from the global batch's gradients.
    from incseg_jax.losses import regularizers, state as state_lib
    opts = {"alpha": 0.9, "normalize": True}
    previous = {"fisher": jax.tree.map(lambda x: rng.uniform(0.1, 2.0, np.shape(x)).astype(np.float32),
                                       tvars["params"])}
    ewc = regularizers.ewc_init(state_lib.StateContext(params=svars["params"], teacher_params=tvars["params"],
                                                       previous=previous, task=task, options=opts))
    state = ts.TrainState(step=np.int32(0), params=svars["params"], batch_stats=svars["batch_stats"],
                          opt_state=tx.init(svars["params"]), method_state={"ewc": ewc})
    state = sharding.put_replicated(state, mesh)
    step = ts.make_train_step(student, teacher, [("ce", 1.0, {}), ("ewc", 500.0, opts)], task, tx, sched,
                              states=[("ewc", regularizers.EWC, opts)])
    ewc_losses = []
    for i in range(3):
        state, m = step(state, sharding.put_replicated(tvars, mesh), sharding.put_batch(batch, mesh),
                        jax.random.key(0))
        ewc_losses.append(float(m["loss_ewc"]))
    fisher = state.method_state["ewc"]["fisher"]
    leaf = jax.tree.leaves(fisher)[0]
    print(json.dumps({"devices": jax.device_count(), "loss": losses_out, "grad_norm": grad_norms, "stats": stats,
                      "shards": len(sharding.put_batch(batch, mesh)["image"].addressable_shards),
                      "ewc_loss": ewc_losses, "fisher_sum": float(sum(np.sum(x) for x in jax.tree.leaves(fisher))),
                      "state_replicated": bool(leaf.sharding.is_fully_replicated)}))
""")


def run(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_sharded_step_matches_single_device():
  one, eight = run(1), run(8)
  assert one["devices"] == 1 and eight["devices"] == 8 and eight["shards"] == 8
  # Same loss before the first update and after one (BatchNorm statistics are
  # computed over the global batch in both cases).
  for a, b in zip(one["loss"] + one["grad_norm"], eight["loss"] + eight["grad_norm"]):
    assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (one, eight)
  # The new BatchNorm statistics after two updates, leaf by leaf.
  assert len(one["stats"]) == len(eight["stats"])
  for a, b in zip(one["stats"], eight["stats"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # A method's state: replicated, and the same on 8 devices as on 1.
  assert eight["state_replicated"] and eight["ewc_loss"][0] == 0.0 and eight["ewc_loss"][-1] > 0
  for a, b in zip(one["ewc_loss"] + [one["fisher_sum"]], eight["ewc_loss"] + [eight["fisher_sum"]]):
    assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (one, eight)
