"""The README documents every config key, every metric name and every CLI flag."""

from pathlib import Path

from saeception import run, sweep
from saeception.config import config_keys
from saeception.evaluate import METRIC_NAMES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_config_key_is_documented():
    rows = [line for line in README.splitlines() if line.startswith("| `")]
    for key in config_keys():
        section, _, field = key.partition(".")
        # A row documents `key`, or groups it as `section.a` / `.field` / `section.field`.
        assert any(f"`{key}`" in row or (f"`{section}." in row and f"`.{field}`" in row) for row in rows), key


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
