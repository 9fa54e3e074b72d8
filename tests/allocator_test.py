"""incseg_jax.allocator: which settings it applies, when, and that they stop the per-step page faults."""

import os
import subprocess
import sys
import textwrap

import pytest

from incseg_jax import allocator


class FakeLibc:
  """Records mallopt calls; answers `answer` (glibc: 1 on success, 0 on error)."""

  def __init__(self, answer=1):
    self.calls, self.answer = [], answer

  def mallopt(self, param, value):
    self.calls.append((param, value))
    return self.answer


@pytest.fixture(autouse=True)
def keep_state(monkeypatch):
  monkeypatch.setattr(allocator, "state", allocator.state)  # restored after each test


def test_choice_reads_the_variable_and_refuses_anything_else():
  assert allocator.choice({}) == "auto"
  assert allocator.choice({"INCSEG_JAX_MALLOC": " Tuned "}) == "tuned"
  assert allocator.choice({"INCSEG_JAX_MALLOC": ""}) == "auto"
  with pytest.raises(ValueError, match=r"INCSEG_JAX_MALLOC='fast': expected one of auto, tuned, system"):
    allocator.choice({"INCSEG_JAX_MALLOC": "fast"})


def test_cpu_only_follows_jax_platforms_then_the_installed_plugins(monkeypatch):
  assert allocator.cpu_only({"JAX_PLATFORMS": "cpu"})
  assert allocator.cpu_only({"JAX_PLATFORMS": " CPU "})
  assert not allocator.cpu_only({"JAX_PLATFORMS": "cuda"})
  assert not allocator.cpu_only({"JAX_PLATFORMS": "cpu,tpu"})
  monkeypatch.setattr(allocator, "ACCELERATOR_MODULES", ("json",))  # an installed module stands for a plugin
  assert not allocator.cpu_only({})
  assert allocator.cpu_only({"JAX_PLATFORMS": "cpu"})  # the variable wins over what is installed
  monkeypatch.setattr(allocator, "ACCELERATOR_MODULES", ("no_such_plugin_module_xyz",))
  assert allocator.cpu_only({})


def test_configure_sets_one_arena_no_mmap_no_trim():
  libc = FakeLibc()
  assert allocator.configure({"JAX_PLATFORMS": "cpu"}, libc) == "tuned" == allocator.state
  # glibc's <malloc.h>: M_ARENA_MAX -8, M_MMAP_MAX -4, M_TRIM_THRESHOLD -1 (value -1: never trim).
  assert libc.calls == [(-8, 1), (-4, 0), (-1, -1)]


@pytest.mark.parametrize("environ, why", [
    ({"INCSEG_JAX_MALLOC": "system", "JAX_PLATFORMS": "cpu"}, "INCSEG_JAX_MALLOC=system"),
    ({"JAX_PLATFORMS": "cuda"}, "accelerator"),
])
def test_configure_leaves_glibc_alone_when_told_or_on_accelerators(environ, why):
  libc = FakeLibc()
  state = allocator.configure(environ, libc)
  assert state.startswith("system (") and why in state
  assert not libc.calls


def test_tuned_applies_on_accelerator_hosts_too():
  libc = FakeLibc()
  assert allocator.configure({"INCSEG_JAX_MALLOC": "tuned", "JAX_PLATFORMS": "cuda"}, libc) == "tuned"
  assert len(libc.calls) == 3


def test_a_refused_setting_is_reported():
  assert allocator.configure({"JAX_PLATFORMS": "cpu"}, FakeLibc(answer=0)) == "system (mallopt refused a setting)"


def test_a_bad_variable_fails_the_import_with_its_name():
  out = subprocess.run([sys.executable, "-c", "import incseg_jax"], capture_output=True, text=True,
                       env=dict(os.environ, INCSEG_JAX_MALLOC="yes"))
  assert out.returncode == 1
  assert "INCSEG_JAX_MALLOC='yes': expected one of auto, tuned, system" in out.stderr
  assert "Traceback" not in out.stderr


# A jitted function whose 64 MiB intermediate (x @ x.T, 4096 x 4096 float32) is XLA scratch memory, run three
# times; printed: the allocator state, the page faults of the third run and its result.
PROBE = textwrap.dedent("""
    import resource
    import incseg_jax  # first, as `python -m incseg_jax...` does
    from incseg_jax import allocator
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: jnp.sum((x @ x.T) @ x))
    x = jnp.ones((4096, 64)) / 64
    for _ in range(3):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      total = float(f(x))
      faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(allocator.state, faults, total)
""")


@pytest.mark.skipif(allocator.glibc() is None, reason="the settings are glibc's")
def test_the_settings_stop_the_page_faults_of_each_step():
  """A 64 MiB scratch buffer is 16,384 pages: with glibc's defaults each run maps and faults them in again."""
  results = {}
  for mode in ("system", "auto"):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(INCSEG_JAX_MALLOC=mode, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    state, faults, total = out.stdout.split("\n")[-2].rsplit(" ", 2)
    results[mode] = state, int(faults), float(total)
  assert results["system"][0] == "system (INCSEG_JAX_MALLOC=system)"
  assert results["auto"][0] == "tuned"
  assert results["system"][1] > 8000, results  # without the setting: the buffer is faulted in again
  assert results["auto"][1] < 1000, results  # with it: the previous run's buffer is reused
  # Same values: x @ x.T is 1/64 everywhere, times x 1 everywhere, 4096 x 64 ones (exact in float32).
  assert results["system"][2] == results["auto"][2] == 4096 * 64
