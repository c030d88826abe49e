"""Bad input through the real CLIs (`python -m saeception.run`, `python -m saeception.sweep`): every row
exits 2 with exactly one stderr line `error: <field or flag or file>: ...`, no traceback, before Ray
starts (no wall-clock bound: a starved machine broke one, and Ray never started says "before any expensive
work"), and writes nothing (the directory trees it could touch are compared before and
after). Most rows call the CLIs' `main(argv)` in this process; the SUBPROCESS rows start the real
interpreter. Data files, spaces and the files in the way are generated here."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from paths import REPO


@dataclass
class Row:
    id: str
    cli: str  # "run" or "sweep"
    args: list[str]  # {D} = the generated data dir, {M} = a tiny GPT-2 dir, {T} = this test's tmp dir
    expect: str  # the error line starts with "error: " + this
    mentions: str = ""  # and contains this (e.g. the file it names)
    subprocess: bool = False


def _csv(labels, texts=None, header="text,label") -> str:
    rows = [header] if header else []
    for i, label in enumerate(labels):
        text = texts[i] if texts is not None else f"apple pear {'engine gear' if i % 2 else 'plum melon'} {i}"
        rows.append(f"{text},{label}")
    return "\n".join(rows) + "\n"


def _jsonl(rows) -> str:
    import json

    return "\n".join(json.dumps(r) for r in rows) + "\n"


N = 40  # rows per generated file: enough for every split when nothing else is wrong
DATA = {
    "ok.csv": _csv([i % 2 for i in range(N)]),
    "one_class.csv": _csv([1] * N),
    "gap.csv": _csv([0 if i % 2 else 1000 for i in range(N)]),
    "blank.csv": _csv(["" if i % 5 == 3 else i % 2 for i in range(N)]),
    "nan.csv": _csv(["nan" if i % 5 == 3 else i % 2 for i in range(N)]),
    "minus_one.csv": _csv([-1 if i % 5 == 3 else i % 2 for i in range(N)]),
    "minus_two.csv": _csv([-2 if i % 5 == 3 else i % 2 for i in range(N)]),
    "all_blank.csv": _csv([""] * N),
    "float_labels.csv": _csv([0.5 if i % 5 == 3 else i % 2 for i in range(N)]),
    "singleton.csv": _csv([2 if i == 7 else i % 2 for i in range(N)]),
    "header_only.csv": "text,label\n",
    "four.csv": _csv([0, 1, 0, 1]),
    "empty_text.csv": _csv([i % 2 for i in range(N)], texts=[""] * N),
    "some_empty_text.csv": _csv([i % 2 for i in range(N)], texts=["  " if i == 9 else f"word {i}" for i in range(N)]),
    "null_labels.jsonl": _jsonl({"text": f"apple {i}", "label": None if i % 5 == 0 else i % 2} for i in range(N)),
    "null_text.jsonl": _jsonl({"text": None if i == 4 else f"apple {i}", "label": i % 2} for i in range(N)),
    "broken.jsonl": '{"text": "a", "label": 0}\n{"text": "b", "lab',
    "table.xyz": "text,label\na,0\n",
    "not_a_space.yaml": "- a\n- list\n",
}


def _space(fixed: dict, params: str = "  aux.weight: {type: float, low: 0.1, high: 1.0}\n") -> str:
    lines = ["fixed:"] + [f"  {k}: {v}" for k, v in fixed.items()] + ["params:", params.rstrip("\n"),
                                                                     "objectives:", "  - {metric: val_sae_u, mode: max}"]
    return "\n".join(lines) + "\n"


MLP = {"data.name": "digits", "model.hidden_sizes": "[32, 16]"}
SPACES = {
    "int_as_float.yaml": _space(MLP, "  sae.k: {type: float, low: 2, high: 8}\n"),
    "narrow_choice.yaml": _space({"data.name": "digits", "sae.k": 16},
                                 "  model.hidden_sizes: {choices: [[64, 32], [8, 2]]}\n"),
    "missing_data_choice.yaml": _space({"model.name": "{M}"}, "  data.name: {choices: ['{D}/nowhere.csv', '{D}/ok.csv']}\n"),
    "one_class_data.yaml": _space({"data.name": "{D}/one_class.csv", "model.name": "{M}"}),
    "mlp_head_layer.yaml": _space({**MLP, "model.layer": "head"}),
    "max_examples_choice.yaml": _space(MLP, "  data.max_examples: {choices: [0, 5]}\n"),
    "layer_choice.yaml": _space({"data.name": "{D}/ok.csv", "model.name": "{M}"},
                                "  model.layer: {choices: [-1, transformer.h.9]}\n"),
    "device_cuda.yaml": _space({**MLP, "device": "cuda"}),
    "empty_text_data.yaml": _space({"data.name": "{D}/empty_text.csv", "model.name": "{M}"}),
}

TEXT = ["--set", "model.name={M}"]
ROWS = [
    # ---- config values (python -m saeception.run) ----
    Row("seed_negative", "run", ["--set", "seed=-1"], "seed", subprocess=True),
    Row("seed_huge", "run", ["--set", "seed=4294967296"], "seed"),
    Row("device_cuda_without_gpu", "run", ["--set", "device=cuda"], "device", "no CUDA GPU"),
    Row("mlp_layer_head", "run", ["--set", "model.layer=head"], "model.layer", "hidden.0"),
    Row("mlp_layer_unknown_name", "run", ["--set", "model.layer=hidden.7"], "model.layer"),
    Row("finetune_lr_inf", "run", ["--set", "finetune.lr=.inf"], "finetune.lr"),
    Row("aux_weight_inf", "run", ["--set", "aux.weight=.inf"], "aux.weight"),
    Row("sae_lr_nan", "run", ["--set", "sae.lr=.nan"], "sae.lr"),
    Row("max_examples_below_classes", "run", ["--set", "data.max_examples=5"], "data.max_examples"),
    Row("k_not_below_latents", "run", ["--set", "sae.k=512"], "sae.k"),
    Row("k_vs_narrow_mlp", "run", ["--set", "model.hidden_sizes=[4]", "--set", "model.layer=0"], "sae.k", "width 4"),
    Row("config_not_a_mapping", "run", ["--config", "{D}/not_a_space.yaml"], "--config", "not_a_space.yaml"),
    Row("config_missing", "run", ["--config", "{D}/nowhere.yaml"], "--config"),
    Row("out_is_a_file", "run", ["--out", "{D}/ok.csv"], "--out", "ok.csv", subprocess=True),
    Row("out_under_a_file", "run", ["--out", "{D}/ok.csv/run"], "--out", "ok.csv"),
    # ---- data (files generated above) ----
    Row("data_missing_file", "run", ["--set", "data.name={D}/nowhere.csv", *TEXT], "data.name", "nowhere.csv"),
    Row("data_unknown_suffix", "run", ["--set", "data.name={D}/table.xyz", *TEXT], "data.name", "table.xyz"),
    Row("data_broken_jsonl", "run", ["--set", "data.name={D}/broken.jsonl", *TEXT], "data.name", "broken.jsonl"),
    Row("data_empty_class_dir", "run", ["--set", "data.name={D}/empty_dir", *TEXT], "data.name", "empty_dir"),
    Row("one_class_labelled_1", "run", ["--set", "data.name={D}/one_class.csv", *TEXT], "data.label_column", "one_class.csv",
        subprocess=True),
    Row("labels_0_and_1000", "run", ["--set", "data.name={D}/gap.csv", *TEXT], "data.label_column", "gap.csv"),
    Row("blank_labels", "run", ["--set", "data.name={D}/blank.csv", *TEXT], "data.label_column", "blank.csv"),
    Row("nan_labels", "run", ["--set", "data.name={D}/nan.csv", *TEXT], "data.label_column", "nan.csv"),
    Row("minus_one_labels", "run", ["--set", "data.name={D}/minus_one.csv", *TEXT], "data.label_column", "-1"),
    Row("minus_two_labels", "run", ["--set", "data.name={D}/minus_two.csv", *TEXT], "data.label_column", ">= 0"),
    Row("null_labels_jsonl", "run", ["--set", "data.name={D}/null_labels.jsonl", *TEXT], "data.label_column", "null_labels.jsonl"),
    Row("fractional_labels", "run", ["--set", "data.name={D}/float_labels.csv", *TEXT], "data.label_column", "0.5"),
    Row("class_with_one_example", "run", ["--set", "data.name={D}/singleton.csv", *TEXT], "data.label_column", "1 example"),
    Row("header_given_as_data", "run", ["--set", "data.name={D}/ok.csv", "--set", "data.column_names=[text, label]", *TEXT],
        "data.column_names", "header"),
    Row("header_only_csv", "run", ["--set", "data.name={D}/header_only.csv", *TEXT], "data.name", "no examples"),
    Row("four_rows", "run", ["--set", "data.name={D}/four.csv", *TEXT], "data.test_fraction", "four.csv"),
    Row("all_texts_empty", "run", ["--set", "data.name={D}/empty_text.csv", *TEXT], "data.text_column", "empty_text.csv"),
    Row("one_text_blank", "run", ["--set", "data.name={D}/some_empty_text.csv", *TEXT], "data.text_column", "row 9"),
    Row("null_text_jsonl", "run", ["--set", "data.name={D}/null_text.jsonl", *TEXT], "data.text_column", "row 4"),
    Row("dropping_leaves_nothing", "run", ["--set", "data.name={D}/all_blank.csv", "--set", "data.drop_incomplete=true", *TEXT],
        "data.name", "data.drop_incomplete"),
    Row("missing_text_column", "run", ["--set", "data.name={D}/ok.csv", "--set", "data.text_column=body", *TEXT],
        "data.text_column", "body"),
    # ---- model against data ----
    Row("mlp_on_text", "run", ["--set", "data.name={D}/ok.csv"], "model.name", "transformer"),
    Row("transformer_on_features", "run", TEXT, "model.name", "mlp"),
    Row("model_dir_missing", "run", ["--set", "data.name={D}/ok.csv", "--set", "model.name={D}/no_model"], "model.name",
        "no_model"),
    Row("model_dir_not_a_model", "run", ["--set", "data.name={D}/ok.csv", "--set", "model.name={D}/empty_dir"], "model.name",
        "empty_dir"),
    Row("transformer_layer_name", "run", ["--set", "data.name={D}/ok.csv", *TEXT, "--set", "model.layer=transformer.nope"],
        "model.layer", "transformer.nope"),
    Row("transformer_layer_index", "run", ["--set", "data.name={D}/ok.csv", *TEXT, "--set", "model.layer=9"], "model.layer"),
    Row("k_vs_transformer_width", "run", ["--set", "data.name={D}/ok.csv", *TEXT, "--set", "sae.k=128"], "sae.k", "width 32"),
    # ---- spaces (python -m saeception.sweep) ----
    Row("space_float_range_on_int_key", "sweep", ["--space", "{D}/int_as_float.yaml"], "params.sae.k.type"),
    Row("space_choice_narrower_than_k", "sweep", ["--space", "{D}/narrow_choice.yaml"], "sae.k", "model.hidden_sizes=[8, 2]"),
    Row("space_choice_names_missing_file", "sweep", ["--space", "{D}/missing_data_choice.yaml"], "params.data.name",
        "nowhere.csv", subprocess=True),
    Row("space_data_one_class", "sweep", ["--space", "{D}/one_class_data.yaml"], "data.label_column", "one_class.csv"),
    Row("space_data_empty_texts", "sweep", ["--space", "{D}/empty_text_data.yaml"], "data.text_column"),
    Row("space_mlp_head_layer", "sweep", ["--space", "{D}/mlp_head_layer.yaml"], "model.layer", "head"),
    Row("space_max_examples_choice", "sweep", ["--space", "{D}/max_examples_choice.yaml"], "params.data.max_examples"),
    Row("space_layer_choice", "sweep", ["--space", "{D}/layer_choice.yaml"], "params.model.layer", "transformer.h.9"),
    Row("space_device_cuda_without_gpus", "sweep", ["--space", "{D}/device_cuda.yaml"], "fixed.device"),
    # ---- sweep flags and storage ----
    Row("cache_is_a_file", "sweep", ["--cache", "{D}/ok.csv"], "--cache", "ok.csv"),
    Row("storage_is_a_file", "sweep", ["--storage", "{D}/ok.csv"], "--storage", "ok.csv"),
    Row("workers_exceed_cpus", "sweep", ["--workers-per-trial", "64", "--num-cpus", "2"], "--workers-per-trial"),
    Row("num_cpus_zero", "sweep", ["--num-cpus", "0"], "--num-cpus", subprocess=True),
    Row("experiment_empty", "sweep", ["--experiment", ""], "--experiment"),
    Row("mlflow_relative_sqlite", "sweep", ["--mlflow-uri", "sqlite:///mlflow.db"], "--mlflow-uri", "absolute"),
    Row("mlflow_not_a_uri", "sweep", ["--mlflow-uri", "mlflow.db"], "--mlflow-uri"),
    Row("mlflow_db_under_a_file", "sweep", ["--mlflow-uri", "sqlite:///{D}/ok.csv/mlflow.db"], "--mlflow-uri", "ok.csv"),
]


def test_the_table_is_large_enough():
    assert len(ROWS) >= 40 and len({r.id for r in ROWS}) == len(ROWS)
    assert sum(r.subprocess for r in ROWS) >= 4 and {r.cli for r in ROWS if r.subprocess} == {"run", "sweep"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, gpt2_dir) -> Path:
    d = tmp_path_factory.mktemp("bad-data")
    for name, text in DATA.items():
        (d / name).write_text(text)
    for name, text in SPACES.items():
        (d / name).write_text(text.replace("{D}", str(d)).replace("{M}", str(gpt2_dir)))
    (d / "empty_dir").mkdir()
    return d


def _tree(*roots: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")]:
            st = p.lstat()
            out[str(p)] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def _argv(row: Row, data_dir: Path, gpt2_dir: Path, tmp: Path) -> list[str]:
    args = [a.replace("{D}", str(data_dir)).replace("{M}", str(gpt2_dir)).replace("{T}", str(tmp)) for a in row.args]
    if row.cli == "run" and "--out" not in args:
        args = ["--out", str(tmp / "out"), *args]
    if row.cli == "sweep":
        if "--storage" not in args:
            args = ["--storage", str(tmp / "storage"), *args]
        args = ["--trials", "1", "--confirm-seeds", "0", *args]
    return args


def _call(row: Row, argv: list[str], tmp: Path, capsys) -> tuple[int, str]:
    if row.subprocess:
        import shutil
        import tempfile

        ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # outside the trees compared
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "RAY_TMPDIR": str(ray_tmp), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        r = subprocess.run([sys.executable, "-m", f"saeception.{row.cli}", *argv], capture_output=True, text=True,
                           timeout=120, env=env, cwd=tmp)
        started = list(ray_tmp.iterdir())
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert started == [], "Ray must not start"
        return r.returncode, r.stderr
    from saeception import run
    from saeception.sweep import cli as sweep

    code = (run if row.cli == "run" else sweep).main(argv)
    return code, capsys.readouterr().err


@pytest.mark.bad_input
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_exits_2_with_one_line_naming_it(row, data_dir, gpt2_dir, tmp_path, capsys, monkeypatch):
    if "device" in row.id:
        import torch

        if torch.cuda.is_available():
            pytest.skip("needs a machine without a GPU")
    monkeypatch.chdir(tmp_path)  # relative defaults (runs/latest, sweeps) would land here
    argv = _argv(row, data_dir, gpt2_dir, tmp_path)
    before = _tree(data_dir, tmp_path)
    code, err = _call(row, argv, tmp_path, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {row.expect}"), lines
    assert row.mentions in lines[0], lines[0]
    assert _tree(data_dir, tmp_path) == before, "nothing may be written"
    import ray

    assert not ray.is_initialized()


@pytest.mark.bad_input
def test_an_error_found_once_connected_is_one_line_too(tmp_path, capsys, monkeypatch):
    """With --address the cluster's size is known only once connected (driver.open_parent_run): a trial
    that cannot fit it is then one error line and exit 2, not a traceback."""
    from saeception.config import ConfigError
    from saeception.sweep import cli as sweep
    from saeception.sweep import driver

    def run(p):
        raise ConfigError("--workers-per-trial: a trial needs 64.25 CPUs and 0 GPUs; the cluster has 2 CPUs, 0 GPUs")

    monkeypatch.setattr(driver, "execute", run)
    code = sweep.main(["--storage", str(tmp_path / "s"), "--address", "127.0.0.1:6379", "--workers-per-trial", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --workers-per-trial:"), err
