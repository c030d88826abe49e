"""End to end through the CLI, exactly as a user runs it: a 2-trial x 1-cycle sweep, 2 DDP workers,
tracked by a real `mlflow server` (started here, on loopback) named only by MLflow's own environment
variables; what a user then opens is checked through the server's REST API."""

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from paths import REPO, TINY
from review_notebook import run_review_notebook

from saeception.eval.confirm import VERDICTS

EXPERIMENT = "e2e-experiment"


def rest(url: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def sweep_args(storage: Path) -> list[str]:
    return ["--space", str(TINY), "--trials", "2", "--storage", str(storage), "--num-cpus", "2", "--workers-per-trial", "2",
            "--cpus-per-worker", "0.5", "--name", "e2e", "--seed", "3", "--confirm-seeds", "2"]


@pytest.mark.ray(seconds=160)
@pytest.mark.mlflow_server
def test_sweep_end_to_end(tmp_path, ray_env, mlflow_server, capsys):
    from saeception.sweep.cli import main

    storage = tmp_path / "sweep"
    assert main([*sweep_args(storage), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    shown = set(re.findall(r"  trial \d: (?!estimated GPU memory)(.*)", dry))  # the sampled configs, not their memory lines
    assert len(shown) == 2 and not storage.exists()

    env = {**ray_env, "MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), ray_env.get("PYTHONPATH")) if p)}
    r = subprocess.run([sys.executable, "-m", "saeception.sweep", *sweep_args(storage)], capture_output=True, text=True,
                       timeout=900, env=env, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 done, 0 stopped early, 0 running, 0 failed of 2" in r.stdout  # live progress
    assert not (storage / "mlflow.db").exists()  # the environment's tracking URI was used

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    roles = [x.data.tags.get("saeception.role") for x in runs]
    assert roles.count("confirm") == 2 and roles.count("control") == 8  # 2 seeds x (chosen config + 4 controls)
    # Every trial, confirmation and control run saw the same validation split (data.split_seed, not the run's
    # seed); the trials share their test split, and each confirmation seed draws its own, shared by its arms.
    split_tags = [({k: v for k, v in x.data.tags.items() if k.startswith("saeception.split.")},
                   x.data.tags.get("saeception.role"), x.data.tags.get("saeception.seed"))
                  for x in runs if x.data.tags.get("saeception.role") in ("trial", "confirm", "control")]
    assert len(split_tags) == 12 and sum(k.endswith(".sha256") for k in split_tags[0][0]) == 3
    assert len({t["saeception.split.val.sha256"] for t, _, _ in split_tags}) == 1
    test_hash = {(role == "trial", seed if role != "trial" else None): set() for _, role, seed in split_tags}
    for t, role, seed in split_tags:
        test_hash[(role == "trial", seed if role != "trial" else None)].add(t["saeception.split.test.sha256"])
    assert all(len(h) == 1 for h in test_hash.values()) and len(test_hash) == 3  # the trials + 2 seeds
    assert len(set().union(*test_hash.values())) == 3
    parents = [x for x in runs if x.data.tags.get("saeception.role") == "sweep"]
    children = [x for x in runs if x.data.tags.get("saeception.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "space.sae.k" in parent.data.params and parent.data.params["fixed.chain.cycles"] == "1"
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert "sae.expansion_factor" in child.data.params and "sharpen.top_k_pct" in child.data.params
        assert child.data.params["searched.aux.weight"] == child.data.params["aux.weight"]
        for key in ("task_accuracy", "val_sae_u", "sae_csi", "explained_variance"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [0, 1], key
        assert [m.step for m in client.get_metric_history(child.info.run_id, "aux_cosine")] == [1]

    import optuna

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{storage / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2

    printed = re.search(r"trial (\w+): val_sae_u ([0-9.]+)", r.stdout)
    assert printed, r.stdout
    best_id, best_value = printed.group(1), float(printed.group(2))
    assert abs(study.best_value - best_value) < 1e-4
    by_trial = {c.data.tags["saeception.trial_id"]: c for c in children}
    assert best_id in by_trial
    mlflow_values = {t: client.get_metric_history(c.info.run_id, "val_sae_u")[-1].value for t, c in by_trial.items()}
    assert max(mlflow_values, key=mlflow_values.get) == best_id
    assert abs(mlflow_values[best_id] - study.best_value) < 1e-9
    assert parent.data.tags["best_trial_id"] == best_id
    # The stage cache: the second trial reuses the first trial's fine-tuned model and activations.
    assert int(parent.data.tags["cache/hits"]) >= 2 and float(parent.data.tags["cache/seconds_saved"]) > 0
    assert f"open the results: {mlflow_server}/#/experiments/{exp.experiment_id}?workflowType=machine_learning" in r.stdout
    assert f"the answer (verdict, winner, comparisons): {mlflow_server}/#/experiments/{exp.experiment_id}/runs/" \
           f"{parent.info.run_id}?workflowType=machine_learning" in r.stdout
    assert all(c.data.tags["saeception.sweep_id"] == parent.data.tags["saeception.sweep_id"] for c in children)
    # --dry-run showed the configs the sweep then ran (same sampler, same seed).
    ran = {" ".join(f"{k.removeprefix('searched.')}={_fmt(v)}" for k, v in c.data.params.items() if k.startswith("searched."))
           for c in children}
    assert {" ".join(sorted(c.split())) for c in shown} == {" ".join(sorted(c.split())) for c in ran}

    # Evidence: the confirmation with every control and a verdict, in the CLI output and the parent run.
    assert "confirmation at the last cycle (2 seeds; finished per arm: best 2/2, aux0 2/2, random 2/2" in r.stdout
    # Plain text under 120 columns: the verdict, then per headline comparison the difference, interval and verdict.
    verdict = re.search(r"^verdict: (sae_u: .*?)\n(?! )", r.stdout, re.M | re.S)  # wrapped lines are indented
    assert verdict and "; task_accuracy: " in " ".join(verdict.group(1).split()) and "**" not in r.stdout, r.stdout[-3000:]
    for control in ("aux0", "random", "prototype", "nosharpen"):
        # 2 seeds are too few for a bounded anytime interval at the family's level: [-inf, inf], inconclusive.
        assert re.search(rf"^  sae_u +{control} +[+-][0-9.]+ +\[[+-](inf|[0-9.]+), [+-](inf|[0-9.]+)\] +"
                         r"(better|worse|equivalent|inconclusive)(, negligible)?$", r.stdout, re.M), control
    block = r.stdout[r.stdout.index("confirmation at the last cycle"):r.stdout.index("every arm, metric and cycle")]
    assert max(len(line) for line in block.splitlines()) <= 120, block
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"confirmation.md", "confirmation.json", "confirmation.png", "best_config.yaml", "confirmation_table.json",
            "best"} <= artifacts
    parent = client.get_run(parent.info.run_id)
    # The sweep's run opens on the answer: its description holds the verdict, the winner and the headline
    # comparisons; the winner's values are params; a handful of metrics (the numbers are in the table).
    note = parent.data.tags["mlflow.note.content"]
    assert "**Verdict**" in note and parent.data.tags["saeception.verdict"] in note and f"trial `{best_id}`" in note
    assert "| `sae_u` | `random` |" in note
    winner = by_trial[best_id].data.params
    assert {k: v for k, v in parent.data.params.items() if k.startswith("best.")} == \
        {f"best.{k.removeprefix('searched.')}": v for k, v in winner.items() if k.startswith("searched.")}
    # (2 seeds give no bounded interval: confirm_ci_low_/_high_ are logged once they are finite.)
    assert {"confirm_diff_prototype_sae_u", "confirm_diff_random_task_accuracy", "best_val_sae_u"} <= set(parent.data.metrics)
    assert len(parent.data.metrics) <= 60 and not [m for m in parent.data.metrics if m.startswith("cache/")]
    assert parent.data.tags["saeception.verdict"].startswith("sae_u: ")
    # The sweep's direct children are its trials and one confirmation run, whose children are the arms.
    direct = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    (confirmation,) = [x for x in direct if x.data.tags["saeception.role"] == "confirmation"]
    assert len(direct) == 3 and confirmation.info.status == "FINISHED"
    arms = [x for x in runs if x.data.tags.get("saeception.role") in ("confirm", "control")]
    assert len(arms) == 10 and {x.data.tags["mlflow.parentRunId"] for x in arms} == {confirmation.info.run_id}
    # Real durations: the arms ran one after another (one trial), each from its own start to its last report.
    spans = sorted((x.info.start_time, x.info.end_time) for x in arms)
    assert all(start < end for start, end in spans) and len({start for start, _ in spans}) == 10
    assert all(end <= later + 1000 for (_, end), (later, _) in zip(spans, spans[1:]))  # no two arms overlap (1 s)
    confirmation = client.get_run(confirmation.info.run_id)
    assert {"confirm_best_sae_u_mean", "confirm_p_family_random_sae_u"} <= set(confirmation.data.metrics)
    assert confirmation.data.tags["saeception.verdict.random.sae_u"] in VERDICTS
    assert {"confirmation.png", "confirmation_table.json"} <= {a.path for a in client.list_artifacts(confirmation.info.run_id)}
    assert len(study.trials) == 2  # confirmation runs stay outside the Optuna study

    # Per-trial plots, and the review notebook runs headless against this sweep's store.
    for child in children:
        assert "trial_metrics.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
    # Optuna's own views of the study.
    assert {"optimization_history_val_sae_u.png", "parallel_coordinates.png", "slice_val_sae_u.png",
            "importance_val_sae_u.png"} <= artifacts
    plots = {k: float(v) for k, v in parent.data.tags.items() if k.startswith("timing/plots_")}
    assert plots["timing/plots_finished_at"] >= plots["timing/plots_started_at"]
    check_through_rest(mlflow_server, parent.info.run_id, [c.info.run_id for c in children])
    check_best_export(client, parent.info.run_id, tmp_path / "downloaded", storage)
    execute_review_notebook(mlflow_server, "e2e", tmp_path, EXPERIMENT)


def _fmt(v: str) -> str:
    try:
        return str(int(v))
    except ValueError:
        try:
            return f"{float(v):.4g}"
        except ValueError:
            return v


def check_through_rest(url: str, parent_id: str, trial_ids: list[str]) -> None:
    """What the MLflow UI reads, read the same way (REST): the experiment kind, the standard source tags,
    the dataset inputs, the timing/ and cache/ prefixes, the table and best/ artifacts."""
    exp = rest(url, f"experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for run_id in [parent_id, *trial_ids]:
        run = rest(url, f"runs/get?run_id={run_id}")["run"]
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["mlflow.source.name"].endswith(os.path.join("saeception", "sweep", "__main__.py")), tags
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
        assert tags["mlflow.source.git.commit"] == head and tags["versions/saeception"]
        inputs = run["inputs"]["dataset_inputs"]
        contexts = {next(t["value"] for t in i["tags"] if t["key"] == "mlflow.data.context"): i["dataset"] for i in inputs}
        assert set(contexts) == {"train", "val", "test"}, inputs
        for split, ds in contexts.items():
            assert ds["name"] == "digits" and ds["digest"] == tags[f"saeception.split.{split}.sha256"][:16]
        if run_id != parent_id:
            assert {"timing/trial_started_at", "timing/worker_started_at", "timing/trainer_finished_at"} <= set(tags)
            assert not [k for k in tags if k.startswith("saeception.") and k.endswith("_at")]
            metrics = {m["key"] for m in run["data"]["metrics"]}
            assert "cache/hits" in tags and not [m for m in metrics if m.startswith(("cache/", "cache_"))]
    logged = json.loads({t["key"]: t["value"] for t in rest(url, f"runs/get?run_id={parent_id}")["run"]["data"]["tags"]}
                        ["mlflow.loggedArtifacts"])
    assert {"path": "confirmation_table.json", "type": "table"} in logged
    best = {f["path"] for f in rest(url, f"artifacts/list?run_id={parent_id}&path=best")["files"]}
    assert {"best/README.md", "best/saelens", "best/classifier", "best/confirmation"} <= best, best


def check_best_export(client, parent_id: str, dest: Path, storage: Path) -> None:
    """best/ holds the winner for SAELens (and sparsify for TopK), the classifier and the card, plus each
    confirmation arm's export; the same files are under <storage>/<name>/best."""
    dest.mkdir()
    local = Path(client.download_artifacts(parent_id, "best", str(dest)))
    card = (local / "README.md").read_text()
    assert "## What was searched" in card and "## Confirmation on fresh seeds" in card and "| 1 | sae_u |" in card
    assert "## Data splits" in card
    cfg = json.loads((local / "saelens" / "cfg.json").read_text())
    assert cfg["d_in"] == 16 and cfg["architecture"] in ("topk", "standard")
    assert (local / "sparsify").is_dir() == (cfg["architecture"] == "topk")
    assert (local / "classifier" / "model.safetensors").exists() and (local / "classifier" / "config.json").exists()
    arms = sorted(p.name for p in (local / "confirmation").iterdir())
    assert arms == ["aux0-seed1", "best-seed1", "nosharpen-seed1", "prototype-seed1", "random-seed1"], arms
    for arm in arms:
        assert (local / "confirmation" / arm / "saelens" / "cfg.json").exists()
        assert f"Arm `{arm.split('-')[0]}`" in (local / "confirmation" / arm / "README.md").read_text()
    assert (storage / "e2e" / "best" / "saelens" / "cfg.json").read_text() == (local / "saelens" / "cfg.json").read_text()
    try:
        import sae_lens
    except ImportError:
        return  # the round trip itself is tests/unit/test_export.py's; here only that the files load
    sae = sae_lens.SAE.load_from_disk(str(local / "saelens"), device="cpu")
    assert sae.cfg.d_in == 16


def execute_review_notebook(uri: str, sweep: str, workdir: Path, experiment: str = "saeception") -> None:
    outputs = [o for c in run_review_notebook(uri, sweep, workdir, experiment) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) >= 3  # the sweep's plots and the trajectories
    markdown = "".join(o.data.get("text/markdown", "") for o in outputs if o.output_type == "display_data")
    assert "| 1 | sae_u |" in markdown  # the confirmation table, rendered as Markdown


