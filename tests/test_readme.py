"""The README documents every config key, every metric name and every CLI flag."""

from pathlib import Path

from saeception import run, sweep
from saeception.config import keys_table
from saeception.evaluate import METRIC_NAMES

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
