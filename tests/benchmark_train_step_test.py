"""The train-step benchmark (incseg_jax/benchmarks/train_step.py) and its torch twin's torch-free parts."""

import gzip
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from incseg_jax import sharding
from incseg_jax.benchmarks import torch_twin
from incseg_jax.benchmarks import train_step as bench

ROOT = os.path.join(os.path.dirname(__file__), "..")
FIELDS = ("train-step benchmark", "setting: shapes 15-1 method=lwf, task step 1 (16 -> 17 channels)",
          "loss terms: ce x1, lwf x100",
          "teacher: auto: forward computed (read by lwf)", "build (spec, variables, optimizer state):", "compile:",
          "persistent cache:", "first step:", "time to first step (build + compile + first step):",
          "step time: median", "process CPU time median", "images/s:", "FLOPs per step:", "achieved:", "MFU:",
          "peak device memory:", "input pipeline:", "protocol:", "torch:")


def test_runs_on_a_tiny_config_and_prints_every_field(smoke_config, tmp_path, capsys):
  out_json = tmp_path / "r.json"
  opts = bench.Options(steps=2, warmup=0, pipeline_batches=2, peak_tflops=0.5, json=str(out_json))
  results = bench.run(smoke_config("method=lwf"), opts)
  printed = capsys.readouterr().out
  for field in FIELDS:
    assert field in printed, (field, printed)
  m = results["measured"]
  assert m["flops"] > 0 and m["memory"]["peak"] > 0 and m["step_s_median"] > 0
  assert m["mfu"] == pytest.approx(m["flops"] / m["step_s_median"] / 0.5e12)
  assert "MFU: " in printed and "% of 0.5 TFLOP/s (--peak_tflops)" in printed
  # The tiny shapes records are built: the real pipeline is timed against the step.
  assert results["pipeline_images_per_s"] > 0 and "keep" in results["pipeline"]
  assert "torch: not compared (pass --compare=torch)" in printed
  assert json.loads(out_json.read_text())["setting"]["terms"][1][0] == "lwf"
  # runlocal's schedule is in steps: base_length for task step 0, inc_length for each later one.
  cfg, p = smoke_config("method=lwf"), results["protocol"]
  want = [cfg.schedule.base_length] + [cfg.schedule.inc_length] * 5
  assert p["steps"] == want and p["total"] == sum(want) and p["images"] is None
  assert p["hours"] == pytest.approx(sum(want) * m["step_s_median"] / 3600)
  assert f"protocol: {sum(want):,} train steps over 6 task steps" in printed


def test_protocol_in_epochs_counts_each_task_steps_images_from_the_records(smoke_config, tmp_path):
  from incseg_jax import experiment  # pylint: disable=g-import-not-at-top
  cfg = smoke_config("method=lwf")
  with cfg.unlocked():
    cfg.schedule.unit, cfg.schedule.base_length, cfg.schedule.inc_length = "epochs", 3, 2
  p = bench.protocol(cfg, 2.0)
  images = [len(i) for i in experiment.build(cfg).step_indices]  # what training reads
  assert p["images"] == images and min(images) > 0
  b = cfg.input.batch_size
  want = [3 * math.ceil(images[0] / b)] + [2 * math.ceil(n / b) for n in images[1:]]
  assert p["steps"] == want and p["hours"] == pytest.approx(sum(want) * 2.0 / 3600)
  assert "image counts from shapes's records" in bench.protocol_line(p)
  # Without records the count is unknown: said, not guessed.
  with cfg.unlocked():
    cfg.dataset.data_dir = str(tmp_path)
  p = bench.protocol(cfg, 2.0)
  assert p == {"note": "not counted: config.schedule.unit=epochs needs each task step's image count, from the "
                       f"records (shapes records not built in {tmp_path})"}


_WITHOUT_TENSORFLOW = """
import atexit, importlib.abc, os, runpy, sys
atexit.register(lambda: print("at exit: XLA_PYTHON_CLIENT_PREALLOCATE",
                              os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")))
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] == "tensorflow":
      raise ImportError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, Block())
sys.argv = ["train_step"] + sys.argv[1:]
runpy.run_module("incseg_jax.benchmarks.train_step", run_name="__main__", alter_sys=True)
"""


def test_runs_where_tensorflow_is_not_installed(shapes_data_dir):
  # Accelerator images often hold JAX and PyTorch but not TensorFlow (launch/gpu_benchmark.sh): the step
  # needs none; only the input pipeline, which then says why it was not timed.
  env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_PYTHON_CLIENT_")}
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  out = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, "--config=configs/shapes.py:method=lwf,runlocal",
                        f"--config.dataset.data_dir={shapes_data_dir}", "--steps=1", "--warmup=0",
                        "--pipeline_batches=2", "--compare=torch", "--torch_python=/nonexistent/bin/python"],
                       cwd=ROOT, capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "step time: median" in out.stdout and "protocol: " in out.stdout
  assert "torch: skipped: --torch_python=/nonexistent/bin/python cannot be run" in out.stdout
  # The twin would share the device: JAX must not take 75% of it at start.
  assert "at exit: XLA_PYTHON_CLIENT_PREALLOCATE false" in out.stdout
  assert ("input pipeline: not measured (TensorFlow is not importable: No module named 'tensorflow' (blocked by the "
          "test); the step needs none)") in out.stdout


def test_teacher_modes(smoke_config):
  mesh = sharding.make_mesh()
  with pytest.raises(ValueError, match="--teacher=on: no loss term of method 'ft' reads the teacher"):
    bench.build(smoke_config("method=ft"), "on", mesh)
  with pytest.raises(ValueError, match="config.task='joint' has one task step"):
    bench.build(smoke_config("method=joint"), "auto", mesh)
  off = bench.build(smoke_config("method=lwf"), "off", mesh)
  assert [t[0] for t in off.terms] == ["ce"] and off.teacher_vars is None
  assert off.teacher_status == "off (left out: lwf)" and not off.teacher_computed


def test_mfu_arithmetic_on_hand_numbers():
  # 400 TFLOP in 2 s on a 400 TFLOP/s device: half the peak.
  assert bench.mfu(400e12, 2.0, 400.0) == pytest.approx(0.5)
  assert bench.mfu(3e12, 0.01, 989.5) == pytest.approx(3e14 / 989.5e12)
  assert bench.mfu(None, 1.0, 100.0) is None and bench.mfu(1e12, 1.0, None) is None
  assert bench.resolve_peak(2.5, "", "cpu") == (2.5, "--peak_tflops")
  assert bench.resolve_peak(0.0, "A100", "cpu")[0] == 312.0
  assert bench.resolve_peak(0.0, "", "NVIDIA H200")[0] == 989.5
  value, why = bench.resolve_peak(0.0, "", "cpu")
  assert value is None and "pass --peak_tflops or --device_kind" in why
  for kind, key in (("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA A100-SXM4-40GB", "a100"), ("TPU v4", "v4"),
                    ("TPU v5 lite", "v5e"), ("cpu", None)):
    assert bench.detect_kind(kind) == key


@pytest.mark.parametrize("field, value, message", [
    ("device_kind", "h300", "--device_kind='h300' is not in the peak table; expected one of h100, h200, a100, v4, v5e"),
    ("steps", 0, "--steps=0: expected a positive integer"),
    ("warmup", -1, "--warmup=-1: expected a non-negative integer"),
    ("teacher", "sometimes", "--teacher='sometimes': expected one of auto, on, off"),
    ("peak_tflops", -1.0, "--peak_tflops=-1.0: expected a positive finite number"),
    ("peak_tflops", math.nan, "--peak_tflops=nan: expected a positive finite number"),
    ("compare", "tf", "--compare='tf': expected 'torch' or nothing"),
    ("torch_python", "/usr/bin/python3", "only used with --compare=torch"),
    ("torch_malloc", "tcmalloc", "--torch_malloc='tcmalloc': expected one of same, system"),
    ("threads", -2, "--threads=-2: expected a non-negative integer"),
    ("pipeline_batches", -1, "--pipeline_batches=-1: expected a non-negative integer"),
])
def test_bad_flag_values_are_named(field, value, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    bench.check_options(bench.Options(**{field: value}))


def test_the_twin_gets_this_process_allocator_setting_on_a_cpu_only(monkeypatch):
  from incseg_jax import allocator  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(allocator, "state", "tuned")
  assert bench.twin_malloc("same", "cpu") == "tuned"
  assert bench.twin_malloc("system", "cpu") == "system"  # torch as a plain script runs it
  assert bench.twin_malloc("same", "cuda") == "system"
  monkeypatch.setattr(allocator, "state", "system (INCSEG_JAX_MALLOC=system)")
  assert bench.twin_malloc("same", "cpu") == "system"
  assert "C allocator system (INCSEG_JAX_MALLOC=system)" in bench.report(_fake_results())[0]


def test_both_peaks_are_refused():
  with pytest.raises(ValueError, match="expected one of them"):
    bench.check_options(bench.Options(peak_tflops=100.0, device_kind="h100"))


def test_command_line_reports_a_bad_flag_in_one_line():
  out = subprocess.run([sys.executable, "-m", "incseg_jax.benchmarks.train_step",
                        "--config=configs/shapes.py:runlocal", "--device_kind=h300"],
                       cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  assert out.returncode == 2, out.stderr[-2000:]
  assert "error: --device_kind='h300' is not in the peak table" in out.stderr
  assert "Traceback" not in out.stderr


def test_torch_absent_is_a_clear_skip(monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # find_spec then answers None, as without torch
  ok, why = bench.torch_importable("")
  assert not ok and "torch is not importable in this interpreter" in why and "--torch_python=" in why
  setting = {"platform": "cpu"}
  result = bench.compare_torch(setting, bench.Options(compare="torch"))
  assert result == {"skipped": why}
  ok, why = bench.torch_importable("/nonexistent/bin/python")
  assert not ok and "--torch_python=/nonexistent/bin/python cannot be run" in why
  lines = bench.report(_fake_results(torch=result))
  assert any(line.startswith("torch: skipped: torch is not importable in this interpreter") for line in lines)


def test_report_without_memory_or_peak_says_na():
  lines = bench.report(_fake_results(memory=None, flops=None, mfu=None))
  assert "peak device memory: n/a (the backend gives no memory_analysis)" in lines
  assert "MFU: n/a (FLOPs unknown)" in lines and "FLOPs per step: n/a (XLA cost_analysis, per device program)" in lines


def test_profile_attributes_convolutions_to_forward_and_backward():
  def loss(w, x):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jax.nn.relu(y) ** 2)

  args = (jnp.ones((3, 3, 4, 8)), jnp.ones((2, 8, 8, 4)))
  text = jax.jit(jax.value_and_grad(loss)).lower(*args).compile().as_text()
  kinds = {(phase, kind) for phase, kind, _ in bench.hlo_ops(text).values()}
  assert ("backward", "convolution") in kinds and ("student forward + loss", "convolution") in kinds


def test_gpu_library_calls_count_as_convolutions_and_products():
  # Optimised GPU HLO (abridged): cuDNN convolutions and cuBLAS products are custom calls.
  text = """ENTRY %main (p0: f32[2,8,8,4], p1: f32[3,3,4,8], p2: f32[64,32]) -> f32[2,8,8,8] {
  %p0 = f32[2,8,8,4]{3,2,1,0} parameter(0)
  %p1 = f32[3,3,4,8]{3,2,1,0} parameter(1)
  %p2 = f32[64,32]{1,0} parameter(2)
  %custom-call.1 = (f32[2,8,8,8]{3,2,1,0}, u8[0]{0}) custom-call(%p0, %p1), custom_call_target="__cudnn$convForward", metadata={op_name="jit(f)/jvp(conv_general_dilated)"}
  %custom-call.2 = (f32[64,64]{1,0}, s8[4]{0}) custom-call(%p2, %p2), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(f)/transpose(jvp(dot_general))"}
  %custom-call.3 = f32[64]{0} custom-call(%p2), custom_call_target="SomethingElse", metadata={op_name="jit(f)/jvp(x)"}
  ROOT %gte = f32[2,8,8,8]{3,2,1,0} get-tuple-element(%custom-call.1), index=0
}
"""
  ops = bench.hlo_ops(text)
  assert ops["custom-call.1"][:2] == ("student forward + loss", "convolution")
  assert ops["custom-call.2"][:2] == ("backward", "convolution")  # products are counted with convolutions
  assert ops["custom-call.3"][1] == "elementwise, reduce, copy"


def test_device_traces_are_read_from_their_xla_ops_line(tmp_path):
  # A GPU trace names an op three times: launched by the host, once on the device's "XLA Ops" line, and
  # per kernel on a stream line (a fusion's kernel bears its name). Only the XLA Ops line is device time.
  meta = [dict(ph="M", name="process_name", pid=701, args=dict(name="/host:CPU")),
          dict(ph="M", name="process_name", pid=1, args=dict(name="/device:GPU:0")),
          dict(ph="M", name="thread_name", pid=1, tid=2, args=dict(name="XLA Ops")),
          dict(ph="M", name="thread_name", pid=1, tid=7, args=dict(name="Stream #7(compute)"))]
  x = lambda pid, tid, name, us: dict(ph="X", pid=pid, tid=tid, name=name, ts=0, dur=us)
  events = meta + [x(701, 5, "fusion.3", 40), x(1, 2, "fusion.3", 1000), x(1, 7, "fusion.3", 990),
                   x(1, 2, "custom-call.1", 3000), x(1, 7, "sm90_xmma_fprop_kernel", 2990)]
  path = tmp_path / "plugins" / "profile" / "run" / "host.perfetto_trace.json.gz"
  path.parent.mkdir(parents=True)
  with gzip.open(path, "wt") as f:
    json.dump(dict(traceEvents=events), f)
  assert bench.trace_op_times(str(tmp_path)) == pytest.approx({"fusion.3": 1e-3, "custom-call.1": 3e-3})
  # A CPU trace has host lines only: all of them are read.
  with gzip.open(path, "wt") as f:
    json.dump(dict(traceEvents=meta[:1] + [x(701, 5, "fusion.3", 40), x(701, 6, "fusion.3", 60)]), f)
  assert bench.trace_op_times(str(tmp_path)) == pytest.approx({"fusion.3": 1e-4})


def test_torch_twin_refuses_what_it_cannot_reproduce():
  base = dict(backbone="resnet50", decoder="deeplab_v3", output_stride=16, aspp_channels=256, atrous_rates=[6, 12, 18],
              activation="relu", dtype="float32", crop=64, batch=2, classes_per_step=[16, 1],
              teacher_classes_per_step=[16], teacher_computed=True, terms=[["ce", 1.0, {}], ["lwf", 100.0, {}]],
              num_old_channels=16, new_channels=[16], ignore_label=255, frozen=[], learning_rate=1e-3, momentum=0.9,
              nesterov=True, weight_decay=1e-4, steps=1, warmup=0, threads=1, device="cpu")
  torch_twin.check_setting(base)
  for change, message in (({"decoder": "deeplab_v2"}, "deeplab_v3 only"),
                          ({"terms": [["pod", 1.0, {}]]}, "loss term 'pod'"),
                          ({"terms": [["unbiased_kd", 10.0, {"mask": "new"}]]}, "unbiased_kd.mask='new'"),
                          ({"frozen": ["backbone"]}, "frozen parameters")):
    with pytest.raises(ValueError, match=message):
      torch_twin.check_setting(dict(base, **change))


@pytest.mark.skipif(not os.environ.get("INCSEG_TORCH_PYTHON"),
                    reason="set INCSEG_TORCH_PYTHON to a python with torch to run the twin")
def test_torch_twin_runs_the_same_setting(smoke_config, capsys):
  results = bench.run(smoke_config("method=mib"), bench.Options(steps=2, warmup=0, pipeline_batches=0,
                                                                compare="torch",
                                                                torch_python=os.environ["INCSEG_TORCH_PYTHON"]))
  assert results["torch"]["step_s_median"] > 0, results["torch"]
  assert "ratio ours / torch:" in capsys.readouterr().out


def _fake_results(memory="default", flops=1e12, mfu=0.25, torch=None):
  setting = dict(jax="0", platform="cpu", device_kind="cpu", devices=1, threads=1, dataset="shapes", task="15-1",
                 method="ft", task_step=1, channels=[16, 17], decoder="deeplab_v3", backbone="resnet_small",
                 output_stride=8, crop=64, batch=4, dtype="float32", terms=[["ce", 1.0, {}]], teacher="auto",
                 teacher_status="passed", malloc="system (INCSEG_JAX_MALLOC=system)", notes=[])
  if memory == "default":
    memory = dict(peak=2**30, argument=2**29, temp=2**29, output=0, alias=0, source="x")
  measured = dict(build_s=1.0, compile_s=2.0, first_step_s=0.5, time_to_first_step_s=3.5,
                  cache=dict(dir="", hits=0, misses=1), steps=2, warmup=0, step_s_median=1.0, step_s_min=1.0,
                  step_s_max=1.0, cpu_s_median=1.0, images_per_s=4.0, nonfinite_steps=0, flops=flops,
                  achieved_tflops=flops and flops / 1e12, peak_tflops=4.0, peak_source="--peak_tflops", mfu=mfu,
                  memory=memory)
  return dict(date="2026-12-02", setting=setting, measured=measured, pipeline="not measured", torch=torch)
