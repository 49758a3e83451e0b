"""The notebooks run end to end (as Colab would, minus the install cell's install)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  "name, printed",
  [
    ("quickstart", ("test error", "usf")),
    ("nnx", ("NNX loop  usf", "trainer   fa", "test error")),  # fajax.nnx under bp, fa, usf
  ],
)
def test_notebook_executes(tmp_path, name, printed):
  nb = nbformat.read(os.path.join(ROOT, "notebooks", f"{name}.ipynb"), as_version=4)
  client = NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  for line in printed:
    assert line in text
  assert any("image/png" in o.get("data", {}) for o in outputs)  # the alignment plot
