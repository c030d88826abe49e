"""Runs the review notebook headless (nbclient) against a sweep, as a user opens it: its parameters from the
environment variables it reads, restored afterwards."""

from __future__ import annotations

import os
from pathlib import Path

from paths import REPO

NOTEBOOK = REPO / "notebooks" / "review_sweep.ipynb"


def run_review_notebook(uri: str, sweep: str, workdir: Path, experiment: str = "saeception", **env: str) -> list:
    """The notebook's code cells after a headless run against `sweep` at tracking URI `uri` (`env`: more variables,
    e.g. MPLBACKEND)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    given = {"SAECEPTION_TRACKING_URI": uri, "SAECEPTION_SWEEP": sweep, "SAECEPTION_EXPERIMENT": experiment, **env}
    old = {k: os.environ.get(k) for k in given}
    os.environ.update(given)
    try:
        # startup_timeout: a kernel starting on a loaded 2-core machine took over nbclient's default 60 s once.
        NotebookClient(nb, timeout=300, startup_timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return [c for c in nb.cells if c.cell_type == "code"]
