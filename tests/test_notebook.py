"""notebooks/world_models.ipynb runs top to bottom at smoke size and shows the run inline."""

import shutil
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "world_models.ipynb"


def _outputs(notebook) -> list[dict]:
    return [output for cell in notebook.cells for output in cell.get("outputs", [])]


@pytest.mark.slow  # the smoke pipeline and a tiny dream benchmark in a kernel: a few minutes
def test_notebook_runs_at_smoke_size_and_shows_the_run(tmp_path, monkeypatch, minatar_smoke_run):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    work = tmp_path / "work"
    # The smoke pipeline itself is tested elsewhere: the notebook gets a finished copy of it,
    # so its experiment cell resumes (every stage skipped) and the test stays short.
    shutil.copytree(minatar_smoke_run, work / "minatar_breakout-smoke", symlinks=True)
    (work / "minatar_breakout-smoke" / ".lock").unlink(missing_ok=True)
    monkeypatch.setenv("WM_JAX_NOTEBOOK_SCALE", "smoke")
    monkeypatch.setenv("WM_JAX_NOTEBOOK_EXPERIMENT", "minatar_breakout")
    monkeypatch.setenv("WM_JAX_NOTEBOOK_RUN_DIR", str(work))
    monkeypatch.setenv("WM_JAX_NOTEBOOK_BENCH", "tiny")
    before = sorted(NOTEBOOK.parent.iterdir())
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=1200,  # per cell: the experiment's cell runs the whole smoke pipeline
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # in the checkout: no install
    )
    client.execute()

    outputs = _outputs(notebook)
    assert not [o for o in outputs if o["output_type"] == "error"]
    images = {kind for o in outputs for kind in o.get("data", {}) if kind.startswith("image/")}
    assert {"image/png", "image/gif"} <= images  # reconstructions, fitness, plot; the GIF
    markdown = "\n".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| C in the real game (2 unseen seeds) |" in markdown  # the score table
    assert "| M | rollouts | steps/s | compile s |" in markdown  # the dream benchmark
    # Everything went into the folder it was given; nothing beside the notebook.
    assert (work / "minatar_breakout-smoke" / "results.json").is_file()
    assert sorted(NOTEBOOK.parent.iterdir()) == before
