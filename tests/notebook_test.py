"""The quickstart notebook runs headless on the CPU in its shrunk form (RUNLOCAL), so it cannot rot."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.join(os.path.dirname(__file__), "..")
NOTEBOOK = os.path.join(ROOT, "notebooks", "incseg_jax_quickstart.ipynb")


@pytest.mark.long
def test_the_quickstart_notebook_runs_shrunk(shapes_data_dir, tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  # The injected cell after the parameters, as papermill does it: a smoke run of two task steps.
  nb.cells.insert(nb.cells.index(params[0]) + 1, nbformat.v4.new_code_cell(
      f"RUNLOCAL = True\nTASK = '15-5'\nWORKDIR = {str(tmp_path / 'runs')!r}"))
  monkeypatch.setenv("INCSEG_DATA_DIR", shapes_data_dir)  # the kernel inherits it: the tiny shapes build
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
  NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "miou" in outputs
  assert "'miou': " in outputs  # the evaluated checkpoint's metrics
  sweep_dir = tmp_path / "runs" / "shapes_15-5"
  assert (sweep_dir / "sweep.md").exists()
  for name in ("miou_per_step.png", "ft_seed0_iou.png", "mib_seed0_predictions.png"):
    assert (sweep_dir / "plots" / name).stat().st_size > 1000, name
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert len(images) == 5  # the mIoU curves, and per method its IoU map and its predictions
