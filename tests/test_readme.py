"""The README documents every config key, every metric name and every CLI flag."""

from pathlib import Path

import pytest

from saeception import run
from saeception.config import keys_table
from saeception.evaluate import METRIC_NAMES
from saeception.sweep import cli as sweep

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_config_table_is_generated_from_the_dataclasses():
    """Keys, types, defaults and help text: one source (config.py), the README shows it verbatim."""
    start, end = "<!-- config-keys:start -->\n", "\n<!-- config-keys:end -->"
    table = README[README.index(start) + len(start):README.index(end)]
    assert table == keys_table(), "README config table is stale: regenerate it from saeception.config.keys_table()"


def test_keys_flag_prints_every_key(capsys):
    from saeception.config import key_docs

    assert run.main(["--keys"]) == 0
    out = capsys.readouterr().out
    for d in key_docs():
        assert d.key in out and d.help.replace("`", "")[:40] in out, d.key


def test_every_metric_is_documented():
    for name in (*METRIC_NAMES, "cycle_seconds"):
        assert f"`{name}`" in README or name.endswith(("_k5", "_k25")), name


def test_every_cli_flag_is_documented():
    for p in (run.parser(), sweep.parser()):
        for action in p._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}" in README, flag


def test_readme_test_command_is_what_ci_runs():
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "    python -m pytest -q\n" in README and "\npython -m pytest -q\n" in ci


def _memory_table():
    import importlib.util
    import sys

    if "bench_memory_table" not in sys.modules:  # bench/ is scripts, not a package
        path = Path(__file__).resolve().parents[1] / "bench" / "memory_table.py"
        spec = importlib.util.spec_from_file_location("bench_memory_table", path)
        sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["bench_memory_table"]


def test_readme_memory_table_is_generated_from_the_estimator():
    """The "Large models" table: bench/memory_table.py's output verbatim (python bench/memory_table.py --write)."""
    start, end = "<!-- memory-table:start -->\n", "\n<!-- memory-table:end -->"
    table = README[README.index(start) + len(start):README.index(end)]
    assert table == _memory_table().markdown(), "README memory table is stale: run python bench/memory_table.py --write"
    assert "--space neox20b_sst2 --workers-per-trial" in table


def test_readme_large_models_claims():
    import dataclasses

    mt = _memory_table()
    pythia = next(r for r in mt.ROWS if r.model == "Pythia-6.9B")
    ddp = dataclasses.replace(pythia, sets={**pythia.sets, "train.strategy": "ddp"})
    assert mt.plan_row(pythia)[0] == 1  # one GPU as fsdp ...
    with pytest.raises(SystemExit, match="no worker count"):  # ... and no number of them as ddp
        mt.plan_row(ddp)
    neox = next(r for r in mt.ROWS if r.model == "GPT-NeoX-20B")
    assert mt.plan_row(neox)[0] == 4
    # The full SST-2's dense codes at 98,304 latents (the space's widest) fit beside the sharded model.
    from saeception.memory import estimate
    from saeception.sweep.space import load_space, resolve_space

    workers, _, facts = mt.plan_row(neox)
    widest = estimate(load_space(resolve_space(neox.space)).config({"sae.expansion_factor": 16}), workers, facts=facts,
                      sizes=mt.SST2_SIZES)
    assert 67_000 * 98_304 * 4 < widest.evaluation < widest.training
