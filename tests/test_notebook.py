"""The quickstart notebook runs end to end (as Colab would, minus the install cell's install)."""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_executes(tmp_path):
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  client = NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert "test error" in text and "usf" in text
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the alignment plot


def test_nnx_notebook_executes(tmp_path):
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "nnx.ipynb"), as_version=4)
  client = NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  for line in ("NNX loop  usf", "trainer   fa", "test error"):
    assert line in text
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the alignment plot
