"""The benchmarked train step written again in plain PyTorch, for `train_step --compare=torch`.

The same DeepLab-v3 as `incseg_jax.models` (torchvision-layout ResNet with
every block of a dilated stage at the stage's dilation, five-branch ASPP with
BatchNorm, one 1x1 head per task step, logits bilinearly upsampled), the same
batch and crop, the student in train mode and the frozen teacher in eval mode
under no_grad (when a term reads it), the same loss terms (`ce`, `lwf`,
`kd_cls`, `kd_cls_t`, `unbiased_ce`, `unbiased_kd`: methods ft, lwf, kd_cls,
ilt-style KD and mib), the gradient norm and the finite-check the JAX step
makes, and PyTorch's SGD (momentum, Nesterov, weight decay), which is what
`train_step.make_optimizer` reproduces. Eager mode; on a GPU channels-last
and, for a bfloat16/float16 setting, autocast to that dtype.

torch is not a dependency of incseg_jax: the benchmark runs this module in an
interpreter that has it (a separate venv), with the setting it measured as
JSON (`train_step.setting`):

  /path/to/torchvenv/bin/python -m incseg_jax.benchmarks.torch_twin --setting=setting.json [--out=result.json]

Nothing here imports torch at module level, and only the standard library
otherwise (`incseg_jax.allocator` is standard library only too), so the
benchmark can call `check_setting` without torch and the twin runs without
jax.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from incseg_jax import allocator  # standard library only; its setting was applied when the package was imported

# Term -> option -> accepted values (None: any number); anything else is refused by `check_setting`.
SUPPORTED_TERMS = {
    "ce": {"reduction": ("all_pixels", "valid", "sum")},
    "lwf": {"class_reduction": ("mean", "sum"), "alpha": None},
    "kd_cls": {"student_softmax": ("all", "old"), "pixels": ("all", "bg_old"), "reduction": ("mean", "sum"),
               "resolution": ("full",)},
    "kd_cls_t": {"temperature": None, "student_softmax": ("all", "old"), "pixels": ("all", "bg_old"),
                 "reduction": ("mean", "sum"), "resolution": ("full",)},
    "unbiased_ce": {"reduction": ("all_pixels", "valid", "sum")},
    "unbiased_kd": {"class_reduction": ("mean", "sum"), "alpha": None, "mask": ("none",),
                    "mask_adaptive_factor": (False,)},
}
BACKBONES = {  # name -> (block, blocks per stage, base width, stem kernel)
    "resnet18": ("basic", (2, 2, 2, 2), 64, 7), "resnet34": ("basic", (3, 4, 6, 3), 64, 7),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64, 7), "resnet101": ("bottleneck", (3, 4, 23, 3), 64, 7),
}
# Stride and dilation of stage1..4 per output stride (incseg_jax/models/resnet.py's _STAGE_LAYOUT).
STAGE_LAYOUT = {32: ((1, 2, 2, 2), (1, 1, 1, 1)), 16: ((1, 2, 2, 1), (1, 1, 1, 2)), 8: ((1, 2, 1, 1), (1, 1, 2, 4))}
LEAKY_SLOPE = 0.01
_REQUIRED = ("backbone", "decoder", "output_stride", "aspp_channels", "atrous_rates", "activation", "dtype", "crop",
             "batch", "classes_per_step", "teacher_classes_per_step", "teacher_computed", "terms", "num_old_channels",
             "new_channels", "ignore_label", "frozen", "learning_rate", "momentum", "nesterov", "weight_decay",
             "steps", "warmup", "threads", "device")


def check_setting(s: dict) -> None:
  """Raises ValueError naming the first field of setting `s` the twin cannot reproduce."""
  missing = [k for k in _REQUIRED if k not in s]
  if missing:
    raise ValueError(f"setting lacks field(s) {missing}")
  if s["backbone"] not in BACKBONES and s["backbone"] != "resnet_small":
    raise ValueError(f"model.backbone={s['backbone']!r}: the twin has {sorted(BACKBONES) + ['resnet_small']}")
  if s["decoder"] != "deeplab_v3":
    raise ValueError(f"model.decoder={s['decoder']!r}: the twin implements deeplab_v3 only")
  if s["output_stride"] not in STAGE_LAYOUT:
    raise ValueError(f"model.output_stride={s['output_stride']!r}: expected one of {sorted(STAGE_LAYOUT)}")
  if s["activation"] not in ("relu", "leaky_relu"):
    raise ValueError(f"model.activation={s['activation']!r}: expected relu or leaky_relu")
  if s["dtype"] not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"model.dtype={s['dtype']!r}: expected float32, bfloat16 or float16")
  if s["frozen"]:
    raise ValueError(f"frozen parameters {s['frozen']}: the twin trains every parameter (pick a method without "
                     "frozen parts, and model.bn_frozen=False)")
  if s.get("aspp_dropout"):
    raise ValueError(f"model.aspp_dropout={s['aspp_dropout']}: the twin has no dropout")
  if s["device"] not in ("cpu", "cuda"):
    raise ValueError(f"device={s['device']!r}: expected cpu or cuda")
  for name, _, opts in s["terms"]:
    if name not in SUPPORTED_TERMS:
      raise ValueError(f"loss term {name!r}: the twin implements {', '.join(SUPPORTED_TERMS)}")
    for opt, value in opts.items():
      allowed = SUPPORTED_TERMS[name].get(opt, ())
      if allowed is not None and value not in allowed:
        raise ValueError(f"config.loss_options.{name}.{opt}={value!r}: the twin supports {list(allowed)}")


# ---------------------------------------------------------------------------------------------------------------
# The network (torch imported by the caller and passed in, so importing this module needs no torch).


def make_network(torch, s: dict, classes_per_step) -> Any:
  """The DeepLab-v3 of setting `s` with `classes_per_step` heads, as a torch.nn.Module (NCHW)."""
  nn, functional = torch.nn, torch.nn.functional

  def act():
    return nn.LeakyReLU(LEAKY_SLOPE) if s["activation"] == "leaky_relu" else nn.ReLU()

  def conv(cin, cout, k, stride=1, dilation=1):
    # Padding dilation*(k-1)//2, bias-free, as incseg_jax.models.resnet.conv.
    return nn.Conv2d(cin, cout, k, stride, dilation * (k - 1) // 2, dilation, bias=False)

  class Block(nn.Module):
    """Basic (expansion 1) or bottleneck (expansion 4) residual block, stride on the 3x3."""

    def __init__(self, kind, cin, width, stride, dilation):
      super().__init__()
      cout = width * (4 if kind == "bottleneck" else 1)
      if kind == "bottleneck":
        layers = [conv(cin, width, 1), nn.BatchNorm2d(width), act(),
                  conv(width, width, 3, stride, dilation), nn.BatchNorm2d(width), act(),
                  conv(width, cout, 1), nn.BatchNorm2d(cout)]
      else:
        layers = [conv(cin, width, 3, stride, dilation), nn.BatchNorm2d(width), act(),
                  conv(width, width, 3, 1, dilation), nn.BatchNorm2d(width)]
      self.body = nn.Sequential(*layers)
      self.shortcut = None
      if stride != 1 or cin != cout:
        self.shortcut = nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
      self.act = act()
      self.out_channels = cout

    def forward(self, x):
      return self.act(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))

  class ASPP(nn.Module):
    """DeepLab-v3 ASPP: 1x1, three atrous 3x3 and image pooling, each + BN + act; concat; 1x1 projection."""

    def __init__(self, cin, channels, rates):
      super().__init__()
      branch = lambda k, d: nn.Sequential(conv(cin, channels, k, 1, d), nn.BatchNorm2d(channels), act())
      self.branches = nn.ModuleList([branch(1, 1)] + [branch(3, r) for r in rates])
      self.pool = nn.Sequential(conv(cin, channels, 1), nn.BatchNorm2d(channels), act())
      self.project = nn.Sequential(conv(channels * (len(rates) + 2), channels, 1), nn.BatchNorm2d(channels), act())

    def forward(self, x):
      outs = [b(x) for b in self.branches]
      pooled = self.pool(x.mean(dim=(2, 3), keepdim=True))
      outs.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
      return self.project(torch.cat(outs, dim=1))

  class DeepLabV3(nn.Module):
    """ResNet encoder + ASPP + one 1x1 head per task step; returns the upsampled float32 logits."""

    def __init__(self):
      super().__init__()
      if s["backbone"] == "resnet_small":
        kind, blocks, width, stem_k = "basic", tuple(s["small_blocks"]), s["small_width"], 3
      else:
        kind, blocks, width, stem_k = BACKBONES[s["backbone"]]
      strides, dilations = STAGE_LAYOUT[s["output_stride"]]
      layers = [conv(3, width, stem_k, 2), nn.BatchNorm2d(width), act(), nn.MaxPool2d(3, 2, 1)]
      cin = width
      for i in range(4):
        for j in range(blocks[i]):
          block = Block(kind, cin, width * 2**i, strides[i] if j == 0 else 1, dilations[i])
          layers.append(block)
          cin = block.out_channels
      self.backbone = nn.Sequential(*layers)
      self.decoder = ASPP(cin, s["aspp_channels"], tuple(s["atrous_rates"]))
      self.heads = nn.ModuleList([nn.Conv2d(s["aspp_channels"], n, 1) for n in classes_per_step])
      for m in self.modules():
        if isinstance(m, nn.Conv2d) and m.bias is None:  # our KAIMING_NORMAL (fan_out); heads keep torch's init
          nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
      y = self.decoder(self.backbone(x))
      logits = torch.cat([h(y) for h in self.heads], dim=1)
      logits = functional.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
      return logits.float()

  return DeepLabV3()


# ---------------------------------------------------------------------------------------------------------------
# Loss terms: incseg_jax/losses/{ce,mib,kd}.py on NCHW logits.


def _reduce(torch, per_pixel, valid, reduction):
  if reduction == "all_pixels":
    return per_pixel.sum() / per_pixel.numel()
  if reduction == "valid":
    return per_pixel.sum() / valid.sum().clamp(min=1)
  return per_pixel.sum()


def loss_term(torch, name: str, opts: dict, student, teacher, labels, n_old: int, ignore: int):
  """The value of loss term `name` (see incseg_jax/losses) for NCHW float32 logits and NHW int64 labels."""
  functional = torch.nn.functional
  valid = labels != ignore
  if name == "ce":
    per = functional.cross_entropy(student, labels, ignore_index=ignore, reduction="none")
    return _reduce(torch, per, valid, opts.get("reduction", "all_pixels"))
  if name == "unbiased_ce":
    den = torch.logsumexp(student, dim=1)
    log_bg = torch.logsumexp(student[:, :n_old], dim=1) - den
    log_p = torch.cat([log_bg[:, None], student[:, 1:] - den[:, None]], dim=1)
    target = torch.where(valid & (labels >= n_old), labels, torch.zeros_like(labels))
    nll = -log_p.gather(1, target[:, None])[:, 0]
    return _reduce(torch, torch.where(valid, nll, torch.zeros_like(nll)), valid, opts.get("reduction", "all_pixels"))
  if name in ("lwf", "unbiased_kd"):
    target = torch.softmax(teacher[:, :n_old] * opts.get("alpha", 1.0), dim=1)
    if name == "lwf":
      log_q = torch.log_softmax(student[:, :n_old], dim=1)
    else:
      den = torch.logsumexp(student, dim=1, keepdim=True)
      bg_and_new = torch.cat([student[:, :1], student[:, n_old:]], dim=1)
      log_q = torch.cat([torch.logsumexp(bg_and_new, dim=1, keepdim=True) - den, student[:, 1:n_old] - den], dim=1)
    per = -(target * log_q).sum(dim=1)
    if opts.get("class_reduction", "mean") == "mean":
      per = per / n_old
    return per.mean()
  if name in ("kd_cls", "kd_cls_t"):
    t = opts.get("temperature", 10.0) if name == "kd_cls_t" else 1.0
    target = torch.softmax(teacher[:, :n_old] / t, dim=1)
    if opts.get("student_softmax", "all") == "all":
      log_q = torch.log_softmax(student / t, dim=1)[:, :n_old]
    else:
      log_q = torch.log_softmax(student[:, :n_old] / t, dim=1)
    per = -(target * log_q).sum(dim=1)
    mask = valid if opts.get("pixels", "all") == "all" else labels < n_old
    total = torch.where(mask, per, torch.zeros_like(per)).sum()
    if opts.get("reduction", "mean") == "mean":
      return total / mask.sum().clamp(min=1)
    return total / per.shape[0]
  raise ValueError(f"loss term {name!r}: the twin implements {', '.join(SUPPORTED_TERMS)}")


# ---------------------------------------------------------------------------------------------------------------
# The step and its timing.


def run(s: dict) -> dict:
  """Builds the twin of setting `s`, times it and returns the result dict (see the module doc)."""
  import torch  # pylint: disable=g-import-not-at-top
  check_setting(s)
  if s["threads"]:
    torch.set_num_threads(int(s["threads"]))
  device = torch.device(s["device"])
  if device.type == "cuda":
    if not torch.cuda.is_available():
      raise ValueError("device=cuda: this torch build sees no GPU")
    torch.backends.cudnn.benchmark = True
  torch.manual_seed(int(s.get("seed", 0)))
  t0 = time.perf_counter()
  fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
  student = make_network(torch, s, s["classes_per_step"]).to(device, memory_format=fmt).train()
  teacher = None
  if s["teacher_computed"]:
    teacher = make_network(torch, s, s["teacher_classes_per_step"]).to(device, memory_format=fmt).eval()
    teacher.requires_grad_(False)
  momentum = float(s["momentum"])
  opt = torch.optim.SGD(student.parameters(), lr=float(s["learning_rate"]), momentum=momentum,
                        nesterov=bool(s["nesterov"]) and momentum > 0, weight_decay=float(s["weight_decay"]))
  gen = torch.Generator().manual_seed(0)
  b, size = int(s["batch"]), int(s["crop"])
  channels = torch.tensor([0] + list(s["new_channels"]))
  batches = []
  for _ in range(2):
    labels = channels[torch.randint(len(channels), (b, size, size), generator=gen)]
    labels[torch.rand((b, size, size), generator=gen) < 0.05] = int(s["ignore_label"])
    images = torch.randn((b, 3, size, size), generator=gen).to(device, memory_format=fmt)
    batches.append((images, labels.to(device)))
  dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[s["dtype"]]
  params = [p for p in student.parameters() if p.requires_grad]
  n_old, ignore = int(s["num_old_channels"]), int(s["ignore_label"])

  def step(i):
    images, labels = batches[i % len(batches)]
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
      t_logits = None
      if teacher is not None:
        with torch.no_grad():
          t_logits = teacher(images)
      logits = student(images)
    loss = sum(w * loss_term(torch, name, opts, logits, t_logits, labels, n_old, ignore)
               for name, w, opts in s["terms"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    # The JAX step's guard: the update only when the loss and the gradient norm are finite.
    grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    finite = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))
    if finite:
      opt.step()
    return finite

  def timed(i):
    t, c = time.perf_counter(), time.process_time()
    finite = step(i)
    if device.type == "cuda":
      torch.cuda.synchronize()
    return time.perf_counter() - t, time.process_time() - c, finite

  build_s = time.perf_counter() - t0
  first, _, first_ok = timed(0)
  for i in range(int(s["warmup"])):
    timed(i + 1)
  wall, cpu, bad = [], [], int(not first_ok)
  for i in range(int(s["steps"])):
    w, c, ok = timed(i)
    wall.append(w)
    cpu.append(c)
    bad += int(not ok)
  flops = None
  try:
    from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
    counter = FlopCounterMode(display=False)
    with counter:
      step(0)
    flops = float(counter.get_total_flops())
  except Exception:  # pylint: disable=broad-except  (older torch without the counter)
    pass
  median = statistics.median(wall)
  mode = "eager " + device.type + (", channels-last" if device.type == "cuda" else "")
  mode += f", autocast {s['dtype']}" if dtype is not None else ", float32"
  return dict(torch=torch.__version__, mode=mode, threads=torch.get_num_threads(), malloc=allocator.state,
              build_s=build_s, first_step_s=first, step_s_median=median, step_s_min=min(wall), step_s_max=max(wall),
              cpu_s_median=statistics.median(cpu), images_per_s=b / median, steps=len(wall), nonfinite_steps=bad,
              flops=flops, peak_memory_bytes=torch.cuda.max_memory_allocated() if device.type == "cuda" else None)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setting", required=True, help="JSON file of the setting (train_step.setting + steps etc.)")
  parser.add_argument("--out", default="", help="write the result JSON here (default: print it)")
  args = parser.parse_args(argv)
  try:
    with open(args.setting) as f:
      s = json.load(f)
    result = run(s)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  text = json.dumps(result, indent=1)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  else:
    print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
