"""End to end through the CLI, exactly as a user runs it: a 2-trial x 1-cycle sweep, 2 DDP workers,
tracked by a real `mlflow server` (started here, on loopback) named only by MLflow's own environment
variables; what a user then opens is checked through the server's REST API."""


from paths import REPO


def test_committed_notebook_has_no_outputs():
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / "review_sweep.ipynb", as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
