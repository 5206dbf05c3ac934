"""Both notebooks run top to bottom against the tiny finished experiment, outputs stripped in git."""

import asyncio
import os
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import EXPERIMENT, PROMPTS, REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_both_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == ["heatmaps.ipynb", "paper_figures.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in notebook.cells if c.cell_type == "code")


@pytest.mark.slow  # two Jupyter kernels
def test_notebooks_execute_against_a_finished_run(runs_dir, tmp_path, monkeypatch):
    # A run without the checkpoint the heatmaps read is passed over, as evaluate.py passes it over.
    copied = tmp_path / "runs"
    shutil.copytree(runs_dir / EXPERIMENT, copied / EXPERIMENT)
    (copied / EXPERIMENT / "qk_scale" / "seed0" / "checkpoints" / "best.ckpt").unlink()
    # The kernels inherit this environment: the parameter cells read it (no papermill needed).
    monkeypatch.setenv("ATTNLAB_RUNS_DIR", str(copied))
    monkeypatch.setenv("ATTNLAB_EXPERIMENT", EXPERIMENT)
    monkeypatch.setenv("ATTNLAB_PROMPT", PROMPTS[0])
    monkeypatch.setenv("ATTNLAB_FIGURES_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    notebooks = {path.stem: nbformat.read(path, as_version=4) for path in NOTEBOOKS}
    clients = [NotebookClient(nb, timeout=300, kernel_name="python3",
                              resources={"metadata": {"path": str(REPO / "notebooks")}})
               for nb in notebooks.values()]

    async def execute_all():  # one kernel each, side by side: their imports dominate the time
        await asyncio.gather(*(client.async_execute() for client in clients))

    asyncio.run(execute_all())
    for name, notebook in notebooks.items():
        outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.get("output_type") == "error"], name
        assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3, name
    assert (tmp_path / "figures" / "val_loss_vs_tokens.pdf").is_file()  # paper_figures saved its figures
