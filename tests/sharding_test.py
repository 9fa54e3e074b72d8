"""The sharded train step gives the same loss, gradient norm, BatchNorm statistics and method state on 8 simulated devices as on 1.

One subprocess with 8 simulated CPU devices runs the step twice: on a mesh of
all 8 and on a mesh of its first device alone (a one-device program, as in a
one-device process). One process instead of two saves an interpreter start
and the models' initialisation.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import jax, numpy as np
    from jax.sharding import AxisType, Mesh
    from incseg_jax import losses, models, runtime, sharding, train_step as ts
    from incseg_jax.losses import regularizers, state as state_lib
    import ml_collections
    runtime.use_compilation_cache()  # as the commands and the test process use it (without TensorFlow's import)
    cfg = ml_collections.ConfigDict(dict(backbone="resnet_small", decoder="deeplab_v3", output_stride=8,
        aspp_channels=8, atrous_rates=(1, 2, 3), small_width=8, small_blocks=(1, 1, 1, 1), bn_frozen=False))
    optim = ml_collections.ConfigDict(dict(momentum=0.9, nesterov=True, weight_decay=1e-4))
    teacher = models.build_model(cfg, (4,))
    student = models.build_model(cfg, (4, 2))
    tvars = jax.device_get(models.init_variables(teacher, jax.random.key(0), 32))
    svars = jax.device_get(models.grow_variables(tvars, models.init_variables(student, jax.random.key(1), 32)))
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
             "label": rng.integers(0, 6, size=(8, 32, 32)).astype(np.int32)}
    batch["label"][:, :4] = 255
    fisher0 = {"fisher": jax.tree.map(lambda x: rng.uniform(0.1, 2.0, np.shape(x)).astype(np.float32),
                                      tvars["params"])}
    task = losses.TaskInfo(index=1, num_channels=6, old_channels=(1, 2, 3), new_channels=(4, 5))
    sched = ts.lr_schedule(0.01, 0.0, 0.9, 10)
    tx = ts.make_optimizer(optim, sched, svars["params"], ())


    def train(mesh, terms, states, method_state, steps):
        # Host copies in, so that the donated state never shares buffers with the other run.
        state = ts.TrainState(step=np.int32(0), params=svars["params"], batch_stats=svars["batch_stats"],
                              opt_state=tx.init(svars["params"]), method_state=method_state)
        state = sharding.put_replicated(jax.device_get(state), mesh)
        step = ts.make_train_step(student, teacher, terms, task, tx, sched, states=states)
        metrics = []
        for _ in range(steps):
            state, m = step(state, sharding.put_replicated(tvars, mesh), sharding.put_batch(batch, mesh),
                            jax.random.key(0))
            metrics.append({k: float(v) for k, v in m.items()})
        return state, metrics


    def run(mesh):
        state, metrics = train(mesh, [("ce", 1.0, {})], (), {}, 2)
        # The new BatchNorm statistics: those of the global batch, whatever the device count.
        stats = [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.batch_stats)]
        # EWC: its state (Fisher, importance) replicated like the parameters and
        # updated inside the step from the global batch's gradients.
        opts = {"alpha": 0.9, "normalize": True}
        ewc = regularizers.ewc_init(state_lib.StateContext(params=svars["params"], teacher_params=tvars["params"],
                                                           previous=fisher0, task=task, options=opts))
        state, ewc_metrics = train(mesh, [("ce", 1.0, {}), ("ewc", 500.0, opts)], [("ewc", regularizers.EWC, opts)],
                                   {"ewc": ewc}, 3)
        fisher = state.method_state["ewc"]["fisher"]
        leaf = jax.tree.leaves(fisher)[0]
        return {"devices": len(mesh.devices.flat), "loss": [m["loss"] for m in metrics],
                "grad_norm": [m["grad_norm"] for m in metrics], "stats": stats,
                "shards": len(sharding.put_batch(batch, mesh)["image"].addressable_shards),
                "ewc_loss": [m["loss_ewc"] for m in ewc_metrics],
                "fisher_sum": float(sum(np.sum(x) for x in jax.tree.leaves(fisher))),
                "state_replicated": bool(leaf.sharding.is_fully_replicated)}


    one_device = Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(AxisType.Auto,))
    print(json.dumps({"process_devices": jax.device_count(), "one": run(one_device), "all": run(sharding.make_mesh())}))
""")


def run():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.long
def test_sharded_step_matches_single_device():
  out = run()
  one, eight = out["one"], out["all"]
  assert out["process_devices"] == 8
  assert one["devices"] == 1 and one["shards"] == 1 and eight["devices"] == 8 and eight["shards"] == 8
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
