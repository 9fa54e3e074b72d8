"""Tests of `incseg_jax.published`: the transcribed tables, their transcription, and the papers beside ours."""

import json
import os
import subprocess
import sys

import pytest

from incseg_jax import checkpointing
from incseg_jax import compare
from incseg_jax import config_lib
from incseg_jax import published
from incseg_jax import sweep
from incseg_jax import tasks
from incseg_jax.published import beside as beside_lib
from incseg_jax.published import records
from incseg_jax.published import transcribe
from incseg_jax.published.keys import Key

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHAPES = os.path.join(ROOT, "configs", "shapes.py")
VOC = os.path.join(ROOT, "configs", "voc.py")
# CI checks the shared material out beside the repository.
PAPERS = os.path.join(os.path.dirname(ROOT), "shared", "papers")

# ---------------------------------------------------------------------------
# (a) Cells read by hand in the papers' text, against the data files.

# (key, our method, role) -> the number as printed.
HAND_PICKED = {
    # UCD Table 1, row "MiB [23]", 15-5 Overlapped, columns 1-15 / 16-20 / all.
    ("voc/15-5/overlapped", "mib", "old"): 75.5,
    ("voc/15-5/overlapped", "mib", "new"): 49.4,
    ("voc/15-5/overlapped", "mib", "all"): 69.0,
    # UCD Table 1, row "PLOP* [29]", 15-1 Overlapped, column 16-20.
    ("voc/15-1/overlapped", "plop", "new"): 22.4,
    # UCD Table 1, row "EWG [15]" (the EWC row), 19-1 Disjoint, column 1-19.
    ("voc/19-1/disjoint", "ewc", "old"): 23.2,
    # UCD Table 1, row "RECALL‡ [41]", 15-1 Disjoint, column all.
    ("voc/15-1/disjoint", "recall", "all"): 62.1,
    # UCD Table 2, row "MiB+UCD", 10-1 Overlapped, column 11-20.
    ("voc/10-1/overlapped", "mib_ucd", "new"): 26.5,
    # UCD Table 3 (the header with "50-50" one column early), row "MiB [23]", 50-50, columns 1-50 and all.
    ("ade20k/50-50/disjoint", "mib", "old"): 35.5,
    ("ade20k/50-50/disjoint", "mib", "all"): 27.0,
    # UCD Table 4, row "PLOP+UCD", 100-10, column 101-150 (two decimals printed).
    ("ade20k/100-10/overlapped", "plop_ucd", "new"): 15.23,
    # UCD Table 5, row "MiB+UCD", 13-1, column mIoU.
    ("cityscapes/13-1/overlapped", "mib_ucd", "all"): 43.1,
    # First paper, Table 1, row "EF , Lcls−T D": mIoU 0-19 (21st number), tv (22nd), mIoU, mPA, mCA.
    ("voc/19-1/sequential", "ef+kd_cls_t", "old"): 73.0,
    ("voc/19-1/sequential", "ef+kd_cls_t", "new"): 51.9,
    ("voc/19-1/sequential", "ef+kd_cls_t", "all"): 72.0,
    ("voc/19-1/sequential", "ef+kd_cls_t", "mca"): 82.3,
    # First paper, Table 1, row "M0(0 − 19)": the step-0 model's mIoU.
    ("voc/19-1/sequential", "M0", "all"): 73.4,
    # First paper, Table 3, row "Fine-tuning": mIoU 0-15 (17th number), 16-20 (23rd), mIoU, mPA.
    ("voc/15-5/sequential", "ft", "old"): 60.6,
    ("voc/15-5/sequential", "ft", "new"): 38.7,
    ("voc/15-5/sequential", "ft", "mpa"): 88.4,
    # First paper, Table 2 (bottle added last, frequency order), row "Fine-tuning", mIoU.
    ("voc/19-1/sequential/order=ilt_frequency", "ft", "all"): 66.5,
    # First paper, Table 11, row "Lenc D": mIoU old, new, mIoU (62.1, 47.9, 55.3).
    ("voc/10-1/sequential", "kd_enc", "old"): 62.1,
    ("voc/10-1/sequential", "kd_enc", "all"): 55.3,
    # First paper, Table 13 (MSRC, boat added: the paper's 20-1), row "Fine-tuning": 85.3 51.2 83.7.
    ("msrc/20-1/sequential", "ft", "new"): 51.2,
    # First paper, Table 17 (incremental labeling, 10 at once), row "Lcls−T D": mIoU 65.9.
    ("voc/10-10/sequential/labeling=background", "kd_cls_t", "all"): 65.9,
    # First paper, Table S1, row "EF , Lcls−T D": ImageNet mIoU old 71.9, MSCOCO mIoU new 64.2.
    ("voc/19-1/sequential/pretrain=imagenet", "ef+kd_cls_t", "old"): 71.9,
    ("voc/19-1/sequential/pretrain=mscoco", "ef+kd_cls_t", "new"): 64.2,
}


@pytest.mark.parametrize("key, method, role", sorted(HAND_PICKED))
def test_hand_picked_cells(key, method, role):
  assert published.lookup(key)[method][role] == HAND_PICKED[(key, method, role)]


def test_rows_name_table_row_and_columns():
  mib = published.rows("voc", "15-5", "overlapped")["mib"]
  assert mib["source"] == "UCD Table 1, row 'MiB [23]'" and mib["table"] == "ucd/1"
  assert mib["columns"] == {"old": "1-15", "new": "16-20", "all": "all"}
  assert mib["spans"] == {"old": (1, 15), "new": (16, 20)} and mib["mpa"] is None
  # The first paper counts class 0 among the old classes; its step-0 model has no "new".
  m0 = published.rows("voc", "15-5", "sequential")["M0"]
  assert m0["spans"] == {"old": (0, 15)} and m0["new"] is None and m0["old"] == 75.5
  # ADE20K 100-10 disjoint reports the added classes per step, not together.
  mib_ade = published.rows("ade20k", "100-10", "disjoint")["mib"]
  assert mib_ade["new"] is None and mib_ade["steps"]["140-150"] == 18.7
  # Rows with no preset here are not rows of ours, but the grid names them.
  assert "" not in published.rows("voc", "15-5", "overlapped")
  grid = published.table("ucd/1")
  assert [str(k) for k in grid.keys] == ["voc/19-1/disjoint", "voc/19-1/overlapped", "voc/15-5/disjoint",
                                         "voc/15-5/overlapped", "voc/15-1/disjoint", "voc/15-1/overlapped"]
  assert grid.methods["voc/15-5/overlapped"][:3] == ("ft", "pi", "ewc")
  assert [row for row, _ in grid.unmatched] == ["ILT† [50]", "MiB+SDR [51]"]


def test_unknown_keys_and_tables_name_the_known_ones():
  with pytest.raises(ValueError, match=r"voc/15-2/overlapped: no published numbers; known keys: .*voc/15-5/overlapped"):
    published.rows("voc", "15-2", "overlapped")
  with pytest.raises(ValueError, match=r"expected <dataset>/<scenario>/<setting>"):
    published.lookup("voc/15-5")
  with pytest.raises(ValueError, match=r"qualifier 'colour=red' is not <name>=<value> with a name in"):
    published.lookup("voc/15-5/overlapped/colour=red")
  with pytest.raises(ValueError, match=r"'ucd/42': no such table; transcribed: .*ucd/1"):
    published.table("ucd/42")
  with pytest.raises(ValueError, match=r"'ucd/8' was not transcribed: sensitivity to UCD's temperature"):
    published.table("ucd/8")
  with pytest.raises(ValueError, match=r"not in table ucd/2 \(its keys: voc/10-10/disjoint"):
    published.lookup("voc/15-5/overlapped", table="ucd/2")


def test_keys_drop_defaults_and_round_trip():
  assert str(Key.make("voc", "19-1", "sequential", "keep", "dataset", "")) == "voc/19-1/sequential"
  assert str(Key.make("msrc", "20-1", "sequential", "keep", "frequency")) == "msrc/19-1/sequential"
  key = Key.parse("VOC/10-10/sequential/pretrain=imagenet/labeling=background")
  assert str(key) == "voc/10-10/sequential/labeling=background/pretrain=imagenet"
  assert key.slug == "10-10_sequential_labeling-background_pretrain-imagenet"
  assert Key.parse(str(key)) == key and key.full_order == "dataset"


def test_every_table_is_accounted_for():
  tables = {t["id"]: t for t in published.tables()}
  assert [i for i, t in tables.items() if t["status"] == "transcribed"] == [
      "ilt/1", "ilt/2", "ilt/3", "ilt/4", "ilt/5", "ilt/6", "ilt/7", "ilt/10", "ilt/11", "ilt/13", "ilt/14",
      "ilt/15", "ilt/16", "ilt/17", "ilt/18", "ilt/S1", "ilt/S2", "ilt/S3", "ucd/1", "ucd/2", "ucd/3", "ucd/4",
      "ucd/5"]
  assert all(t["reason"] for t in tables.values() if t["status"] == "skipped") and len(tables) == 38
  assert "'50-50' at column 10" in tables["ucd/3"]["notes"][0]
  assert "repeat Table 2's numbers" in tables["ilt/S1"]["notes"][0]
  assert len(published.cells()) == sum(t.get("cells", 0) for t in tables.values())


# ---------------------------------------------------------------------------
# (b) The transcription reproduces the committed files.


@pytest.mark.skipif(not os.path.isdir(PAPERS), reason=f"the papers' text copies are not at {PAPERS} "
                    "(../shared/papers beside the repository)")
def test_transcription_reproduces_the_data_files(tmp_path):
  tables, papers = transcribe.transcribe(PAPERS)
  files = transcribe.render(tables, papers)
  assert sorted(files) == sorted(os.listdir(published.DATA_DIR))
  for name, text in files.items():
    with open(os.path.join(published.DATA_DIR, name), encoding="utf-8") as f:
      assert f.read() == text, f"{name} differs: rerun python -m incseg_jax.published.transcribe"
  # The command line writes the same files.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  cli = subprocess.run([sys.executable, "-m", "incseg_jax.published.transcribe", f"--papers={PAPERS}",
                        f"--out={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert cli.returncode == 0, cli.stderr
  assert "ilt/8: skipped: " in cli.stdout and "ucd/1: 306 cells, 17 rows" in cli.stdout
  for name, text in files.items():
    assert (tmp_path / name).read_text(encoding="utf-8") == text


def test_transcription_fails_loudly_on_a_mangled_table(tmp_path):
  text = "# Uncertainty-aware Contrastive Distillation for Incremental Semantic Segmentation\n\n" \
         "TABLE 1: Mean IoU on the Pascal-VOC 2012 dataset for different scenarios.\n\n" \
         "Method\t15-5\t\t\n\tDisjoint\t\t\n\t1-15\t16-20\tall\nFT\t1.1\t33.6\n"
  (tmp_path / "ucd.txt").write_text(text)
  (tmp_path / "ilt.txt").write_text("Knowledge Distillation for Incremental Learning in\nSemantic Segmentation\n")
  with pytest.raises(ValueError, match=r"UCD Table 1, row 'FT': 2 values, the header has 3 columns"):
    transcribe.transcribe(str(tmp_path))
  (tmp_path / "ucd.txt").write_text(text.replace("FT\t1.1\t33.6", "Magic\t1.1\t33.6\t9.2"))
  with pytest.raises(ValueError, match=r"row 'Magic' .* has no entry in incseg_jax/published/rownames.py"):
    transcribe.transcribe(str(tmp_path))
  os.remove(tmp_path / "ilt.txt")
  with pytest.raises(FileNotFoundError, match=r"no text copy of ilt \(Knowledge distillation"):
    transcribe.transcribe(str(tmp_path))


def test_cells_csv_round_trip_and_bad_file():
  cells = [c for c in published.cells() if c.table_id == "ucd/5"]
  assert records.read_cells_csv(records.cells_csv(cells), "x.csv") == cells
  with pytest.raises(ValueError, match=r"x.csv, line 2: .*unknown role"):
    records.read_cells_csv(records.cells_csv(cells[:1]).replace(",old,", ",older,"), "x.csv")


# ---------------------------------------------------------------------------
# (c) compare --published on small fake runs.

NAMES = [f"c{i}" for i in range(1, 21)]


def fake_run(path, method, task="15-5", dataset="voc", setting="overlapped", labeling=None, order="dataset",
             old=0.5, new=0.3, config_text=None):
  """A finished run's results.json and config.json (`config_text`, else only its class order).

  Every step scores IoU 0.9 on the background, `old` on the step-0 classes and `new` on the later ones (for a
  joint run: `old` on classes 1-15, `new` on 16-20).
  """
  sizes = tasks.parse_scenario("15-5" if task == "joint" else task, 20)
  if task == "joint":
    sizes = (20,)
  base = 15 if task == "joint" else sizes[0]
  steps, seen = [], 0
  for k, size in enumerate(sizes):
    seen += size
    iou = [0.9] + [old if i < base else new for i in range(seen)]
    metrics = {"class_names": ["background"] + NAMES[:seen], "iou": iou, "acc": iou, "present": [True] * (seen + 1),
               "miou": sum(iou) / len(iou), "pixel_acc": 0.9, "mean_class_acc": 0.7}
    steps.append({"task_step": k, "new_classes": NAMES[seen - size:seen], "metrics": metrics,
                  "new_channels": list(range(seen - size + 1, seen + 1))})
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump({"dataset": dataset, "task": task, "setting": setting, "labeling": labeling, "method": method,
               "class_order": NAMES, "channel_names": ["background"] + NAMES, "steps": steps}, f)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config_text or json.dumps({"class_order": order}))
  return str(path)


def compare_cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "incseg_jax.compare", "--noper_class", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True)


def test_compare_published(tmp_path):
  ft = fake_run(tmp_path / "ft", "ft")
  mib = fake_run(tmp_path / "mib", "mib", old=0.7, new=0.5)
  joint = fake_run(tmp_path / "joint", "joint", task="joint", old=0.8, new=0.8)
  plain = compare_cli(ft, mib, joint)
  out = compare_cli(ft, mib, joint, "--published=voc/15-5/overlapped", f"--csv={tmp_path / 'c.csv'}")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0].startswith("published: UCD Table 1 for voc/15-5/overlapped;") and "Δ = ours − paper" in lines[0]
  table = [ln for ln in lines if ln.startswith("|")]
  assert table[0] == ("| method | mIoU old (15) | mIoU new (5) | mIoU | mPA | mCA | avg mIoU | forgetting | HM | "
                      "paper old (1-15) | Δ old | paper new (16-20) | Δ new | paper all | Δ all | paper row |")
  # Ours beside the paper: ours unchanged, then the paper's number and ours minus it (mIoU points).
  mine = plain.stdout.splitlines()
  assert [ln.rsplit(" | ", 7)[0] + " |" for ln in table[2:]] == mine[2:] and table[0].startswith(mine[0][:-1])
  # mib: old 70.0 vs 75.5, new 50.0 vs 49.4, all (0.9 + 15 * 0.7 + 5 * 0.5) / 21 = 66.2 vs 69.0.
  assert table[3].endswith("| 75.5 | -5.5 | 49.4 | +0.6 | 69.0 | -2.8 | MiB [23] (ucd/1) |")
  assert table[2].endswith("| 2.1 | +47.9 | 33.1 | -3.1 | 9.8 | +37.3 | FT (ucd/1) |")  # all 9.9 / 21
  # The step-0 model is no row of this paper; joint is (scored on the runs' class groups).
  assert table[4].endswith("| - | - | - | - | - | - | - |") and table[4].startswith("| M0 (step 0) |")
  assert table[5].endswith("| 79.1 | +0.9 | 72.6 | +7.4 | 77.4 | +3.1 | Joint (ucd/1) |")  # all 16.9 / 21
  csv_lines = (tmp_path / "c.csv").read_text().splitlines()
  assert csv_lines[0].endswith(",paper old (1-15),Δ old,paper new (16-20),Δ new,paper all,Δ all,paper row")

  # The first paper counts background among the old classes: ours over the same classes is shown too.
  seq = [fake_run(tmp_path / m, m, setting="sequential", labeling="keep") for m in ("s_ft", "ef+kd_cls_t")]
  out = compare_cli(*seq, "--published=voc/15-5/sequential")
  assert out.returncode == 0, out.stderr
  assert "counts class 0 (background)" in out.stdout
  row = [ln for ln in out.stdout.splitlines() if ln.startswith("| ef+kd_cls_t |")][0]
  # ours over background + 15 old classes: (0.9 + 15 * 0.5) / 16 = 52.5 vs 70.0; all 9.9 / 21 = 47.1 vs 64.3.
  assert row.endswith("| 52.5 | 70.0 | -17.5 | 45.9 | -15.9 | 64.3 | -17.2 | EF , Lcls−T D (ilt/3) |")


def test_compare_published_refuses_another_experiment_and_marks_shapes(tmp_path):
  run = fake_run(tmp_path / "ft", "ft")
  out = compare_cli(run, "--published=voc/15-1/overlapped")
  assert out.returncode == 2
  assert "the runs are scenario 15-5 (steps [15, 5]), the published numbers 15-1 (steps [15, 1, 1, 1, 1, 1])" \
      in out.stderr
  with pytest.raises(ValueError, match="the runs are setting overlapped, the published numbers disjoint"):
    compare.published_columns([compare.load(run)], "voc/15-5/disjoint")
  other = fake_run(tmp_path / "freq", "ft", task="19-1", setting="sequential", labeling="keep", order="frequency")
  with pytest.raises(ValueError, match="class order is 'frequency', the published numbers' 'ilt_frequency'"):
    compare.published_columns([compare.load(other)], "voc/19-1/sequential/order=ilt_frequency")
  shapes = fake_run(tmp_path / "shapes", "mib", dataset="shapes")
  out = compare_cli(shapes, "--published=voc/15-5/overlapped")
  assert out.returncode == 0 and "shapes stands in for Pascal VOC2012" in out.stdout
  assert "it is not a reproduction" in out.stdout
  with pytest.raises(ValueError, match="shapes stands in for VOC only: give a voc/... key"):
    compare.published_columns([compare.load(shapes)], "ade20k/100-50/overlapped")


def test_beside_checks_the_class_order():
  shape = beside_lib.RunShape("voc", "15-1", "sequential", "keep", "dataset", 20)
  with pytest.raises(ValueError, match=r"class order is 'dataset', the published numbers' 'ilt_frequency'"):
    beside_lib.prepare("voc/15-1/sequential/order=ilt_frequency", shape)
  assert beside_lib.prepare("voc/15-1/sequential", shape).ours_old_column
  with pytest.raises(ValueError, match=r"labeling=keep, the published numbers labeling=background"):
    beside_lib.prepare("voc/10-1/sequential/labeling=background",
                       beside_lib.RunShape("voc", "10-1", "sequential", "keep", None, 20))
  # shapes' frequency order stands in for the first paper's VOC frequency order.
  beside_lib.prepare("voc/15-1/sequential/order=ilt_frequency",
                     beside_lib.RunShape("shapes", "15-1", "sequential", None, "frequency", 20))


# ---------------------------------------------------------------------------
# (d) sweep --published and --table, without training.


class FinishedJob:
  """A run that 'finishes' at once: writes what a finished run leaves (config, done steps, results)."""

  def __init__(self, run, old, new):
    fake_run(run.workdir, run.method, task=run.config.task, dataset="shapes", setting=run.config.setting,
             old=old, new=new, config_text=config_lib.to_json(run.config))
    for k in range(sweep.num_task_steps(run.config)):
      os.makedirs(checkpointing.task_dir(run.workdir, k), exist_ok=True)
      checkpointing.mark_done(run.workdir, k, {})

  def poll(self):
    return True, None

  def stop(self):
    pass


def test_sweep_published(tmp_path, capsys):
  source = sweep.ConfigSource(SHAPES, "task=15-5,setting=overlapped,runlocal", {}, ())
  scores = {"ft": (0.1, 0.4), "mib": (0.6, 0.5)}
  status = sweep.run_sweep(source, ["ft", "mib"], [0], str(tmp_path), published="voc/15-5/overlapped",
                           start=lambda run: FinishedJob(run, *scores[run.method]))
  assert status == 0
  md = (tmp_path / "sweep.md").read_text().splitlines()
  assert md[2].startswith("published: UCD Table 1 for voc/15-5/overlapped;")
  assert "shapes stands in for Pascal VOC2012" in md[3]
  assert md[5].endswith("| paper old (1-15) | Δ old | paper new (16-20) | Δ new | paper all | Δ all | paper row |")
  assert md[7].startswith("| ft | 1 | 10.0 ± - | 40.0 ± - |")
  assert md[8].endswith("| 75.5 | -15.5 | 49.4 | +0.6 | 69.0 | -10.0 | MiB [23] (ucd/1) |")  # all 12.4 / 21
  summary = json.loads((tmp_path / "sweep.json").read_text())
  assert summary["published"]["rows"]["mib"]["paper"] == {"old": 75.5, "new": 49.4, "all": 69.0}
  csv_lines = (tmp_path / "sweep.csv").read_text().splitlines()
  assert csv_lines[0].endswith(",paper_old,diff_old,paper_new,diff_new,paper_all,diff_all,paper_row")
  assert csv_lines[2].endswith(
      ",0.755000,-0.155000,0.494000,0.006000,0.690000,-0.099524,\"UCD Table 1, row 'MiB [23]'\"")
  assert "MiB [23] (ucd/1)" in capsys.readouterr().out
  with pytest.raises(ValueError, match=r"the runs are scenario 15-5 .* the published numbers 19-1"):
    sweep.run_sweep(source, ["ft"], [0], str(tmp_path / "x"), published="voc/19-1/overlapped")


def test_table_plan_on_shapes():
  source = sweep.ConfigSource(SHAPES, "task=15-1,method=mib,runlocal", {}, ())
  subs = sweep.table_plan(source, "ucd/1", "/w")
  assert [(str(s.key), s.workdir) for s in subs] == [
      ("voc/19-1/disjoint", "/w/19-1_disjoint"), ("voc/19-1/overlapped", "/w/19-1_overlapped"),
      ("voc/15-5/disjoint", "/w/15-5_disjoint"), ("voc/15-5/overlapped", "/w/15-5_overlapped"),
      ("voc/15-1/disjoint", "/w/15-1_disjoint"), ("voc/15-1/overlapped", "/w/15-1_overlapped")]
  sub = subs[2]
  assert sub.source.arg == "method=mib,runlocal,task=15-5,setting=disjoint"
  assert sub.methods == ["ft", "pi", "ewc", "rw", "lwf", "lwf_mc", "ilt", "sdr", "ucd", "mib", "mib_ucd", "plop",
                         "plop_ucd", "joint"]
  assert sub.skipped[0] == "recall: needs replay images of the old classes (--config.replay.dir)"
  assert [s.split(":")[0] for s in sub.skipped[1:]] == ["ILT† [50]", "MiB+SDR [51]"]
  assert sub.notes == []  # shapes: no protocol is added
  # The first paper's frequency order: shapes' own frequency order stands in; M0 is listed, not run.
  (freq,) = sweep.table_plan(source, "ilt/2", "/w", only=["ft", "kd_cls_t", "M0"])
  assert freq.source.arg.endswith("task=19-1,setting=sequential,order=frequency") and freq.methods == ["ft", "kd_cls_t"]
  assert freq.notes == ["order=frequency (shapes's training pixel counts) stands in for the paper's "
                        "order=ilt_frequency"]
  assert freq.skipped == ["M0: the step-0 model, not a method (compare prints it as 'M0 (step 0)')"]
  with pytest.raises(ValueError, match=r"--table=ucd/3 is on ade20k; shapes stands in for voc only: one of .*ucd/2"):
    sweep.table_plan(source, "ucd/3", "/w")
  with pytest.raises(ValueError, match=r"--methods=mib,magic: magic not in table ucd/1"):
    sweep.table_plan(source, "ucd/1", "/w", only=["mib", "magic"])


def test_table_plan_on_voc_adds_the_papers_protocol():
  subs = sweep.table_plan(sweep.ConfigSource(VOC, "manual_dir=/data/voc"), "ilt/17", "/w", only=["ft"])
  assert [str(s.key) for s in subs] == ["voc/10-10/sequential/labeling=background"]
  assert subs[0].source.arg == "manual_dir=/data/voc,task=10-10,setting=sequential,labeling=background,protocol=ilt"
  assert subs[0].source.make("ft", 0).labeling == "background"
  with pytest.raises(ValueError, match=r"--table=ucd/5 is on cityscapes, but --config is on voc"):
    sweep.table_plan(sweep.ConfigSource(VOC), "ucd/5", "/w")


def test_run_table_runs_each_sub_sweep_with_its_numbers(tmp_path, capsys):
  source = sweep.ConfigSource(SHAPES, "runlocal", {}, ())
  status = sweep.run_table(source, "ucd/2", [0], str(tmp_path), only=["ft"],
                           start=lambda run: FinishedJob(run, 0.2, 0.3))
  assert status == 0
  out = capsys.readouterr().out
  assert "sweep --table=ucd/2 [4/4]: voc/10-1/overlapped in" in out
  assert sorted(os.listdir(tmp_path)) == ["10-10_disjoint", "10-10_overlapped", "10-1_disjoint", "10-1_overlapped",
                                          "table.md"]
  table = (tmp_path / "table.md").read_text()
  assert table.startswith("# ucd/2: Mean IoU on the Pascal-VOC 2012 dataset")
  assert "## voc/10-1/overlapped" in table and "| ft | 1 | 20.0 ± - | 30.0 ± - |" in table
  assert "| 6.3 | +13.7 | 2.8 | +27.2 |" in table  # FT, 10-1 overlapped: 1-10 6.3, 11-20 2.8
  # Rerun: every run is finished and skipped (a run started would fail the test).
  assert sweep.run_table(source, "ucd/2", [0], str(tmp_path), only=["ft"],
                         start=lambda run: pytest.fail(f"{run.name} started again")) == 0
  assert capsys.readouterr().out.count("finished in") == 4
