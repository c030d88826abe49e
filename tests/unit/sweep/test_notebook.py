"""The review notebook: committed without outputs, and run headless (nbclient) against a sweep laid out in a
local sqlite MLflow store as the sweep lays it out (no Ray): every figure is drawn as an image and the confirmation
table is shown as Markdown. tests/system/test_sweep_end_to_end.py runs it against a real sweep as well."""


import pytest
from matplotlib.figure import Figure
from review_notebook import NOTEBOOK, run_review_notebook

from saeception.sweep.tracking import Tracker, sqlite_uri

CONFIRMATION_ROW = "| 1 | sae_u | random | 0.0500 |"
# Code cells that draw: each must show an image, never a figure's text form.
DRAWS = ("display(Image(", "plt.subplots(")


def test_committed_notebook_has_no_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.fixture
def sweep(tmp_path):
    """A sweep's MLflow runs as the sweep writes them: the parent (objectives, plots, confirmation.md), two trials
    with per-cycle metrics, and a confirmation run whose children are the arms."""
    tracker = Tracker(sqlite_uri(tmp_path / "mlflow.db"))
    parent = tracker.sweep_run("saeception", "review", reuse=False)
    tracker.log_params(parent, {"objectives": "val_sae_u:max"})
    history = [{"cycle": c, "task_accuracy": 0.8 + c / 100, "sae_u": 0.3 + c / 10, "sae_csi": 0.5, "val_sae_u": 0.3 + c / 10}
               for c in range(3)]
    for i, trial in enumerate(("t1", "t2")):
        run = tracker.child_run(parent, trial, role="trial", name=f"trial-{trial}")
        tracker.log_params(run, {"searched.sae.k": 4 * (i + 1)})
        tracker.log_history(run, [{**h, "sae_u": h["sae_u"] - i / 10} for h in history])
        tracker.finish(run)
    confirmation = tracker.child_run(parent, "confirmation-c1", role="confirmation", name="confirmation-c1")
    for arm in ("best", "random"):
        for seed in (1, 2):
            run = tracker.child_run(confirmation, f"c1-{arm}-seed{seed}", role="confirm" if arm == "best" else "control",
                                    name=f"{arm}-seed{seed}", extra_tags={"saeception.arm": arm, "saeception.seed": str(seed)})
            tracker.log_history(run, history)
            tracker.finish(run)
    for name in ("optimization_history_val_sae_u.png", "confirmation.png"):
        fig = Figure(figsize=(3, 2))  # no pyplot: this process keeps its backend
        fig.add_subplot().plot([0, 1], [0, 1])
        fig.savefig(tmp_path / name)
        tracker.log_artifact(parent, tmp_path / name)
    (tmp_path / "confirmation.md").write_text("**Verdict:** sae_u: better than random\n\n| seed | metric | control | diff |\n"
                                              f"|---|---|---|---|\n{CONFIRMATION_ROW}\n")
    tracker.log_artifact(parent, tmp_path / "confirmation.md")
    tracker.finish(parent)
    return tracker.uri, "review"


def test_the_notebook_renders_every_figure_and_the_confirmation_as_markdown(sweep, tmp_path):
    # MPLBACKEND=Agg, as a headless machine may set it: the notebook must draw inline all the same.
    cells = run_review_notebook(*sweep, tmp_path, MPLBACKEND="Agg")
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], [o.get("evalue") for o in outputs]
    # A figure the notebook could not display shows as its text form alone, "<Figure size 1500x350 with 3 Axes>".
    assert not [o for o in outputs if "<Figure size" in o.get("text", "")
                or ("<Figure size" in o.get("data", {}).get("text/plain", "") and "image/png" not in o.data)]
    drawing = [c for c in cells if any(d in c.source for d in DRAWS)]
    assert len(drawing) == 2  # the sweep's plots and the trajectories
    for c in drawing:
        images = [o for o in c.outputs if o.output_type == "display_data" and "image/png" in o.data]
        assert images, c.source[:80]
    (plots,) = [c for c in drawing if "display(Image(" in c.source]
    assert sum("image/png" in o.get("data", {}) for o in plots.outputs) == 2  # both PNG artifacts of the parent run
    (table,) = [c for c in cells if "confirmation.md" in c.source]
    markdown = [o.data["text/markdown"] for o in table.outputs if o.output_type == "display_data" and "text/markdown" in o.data]
    assert len(markdown) == 1 and CONFIRMATION_ROW in markdown[0]
    assert not [o for o in table.outputs if o.output_type == "stream"]  # not printed as raw pipes
    assert not [o for o in outputs if "Downloading artifacts" in o.get("text", "")]  # no progress bar under each figure
