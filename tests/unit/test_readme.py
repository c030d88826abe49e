"""The README and docs/ document every config key, every metric name and every CLI flag; the README stays
a short front page whose layout tree is the package's."""


import pytest
from paths import REPO

from saeception import run
from saeception.config import keys_table
from saeception.eval.evaluate import METRIC_NAMES
from saeception.sweep import cli as sweep

ROOT = REPO
README = (ROOT / "README.md").read_text()


def doc(name: str) -> str:
    return (ROOT / "docs" / name).read_text()


def test_readme_config_table_is_generated_from_the_dataclasses():
    """Keys, types, defaults and help text: one source (config.py), docs/config.md shows it verbatim."""
    start, end = "<!-- config-keys:start -->\n", "\n<!-- config-keys:end -->"
    text = doc("config.md")
    table = text[text.index(start) + len(start):text.index(end)]
    assert table == keys_table(), "docs/config.md's table is stale: regenerate it from saeception.config.keys_table()"


def test_keys_flag_prints_every_key(capsys):
    from saeception.config import key_docs

    assert run.main(["--keys"]) == 0
    out = capsys.readouterr().out
    for d in key_docs():
        assert d.key in out and d.help.replace("`", "")[:40] in out, d.key


def test_every_metric_is_documented():
    metrics = doc("metrics.md")
    for name in (*METRIC_NAMES, "cycle_seconds"):
        assert f"`{name}`" in metrics or name.endswith(("_k5", "_k25")), name


def test_every_cli_flag_is_documented():
    for p, page in ((run.parser(), "run.md"), (sweep.parser(), "sweeps.md")):
        text = doc(page)
        for action in p._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}" in text, (page, flag)


def test_the_readme_is_a_front_page():
    """What it is, the two commands, what a sweep writes, next steps, how it works, the layout: the rest is
    in docs/, every page of which the README links."""
    assert len(README.splitlines()) <= 200
    for heading in ("## 1. Install and run the default sweep", "## 2. Run the tests", "## What a sweep writes",
                    "## Next steps", "## How it works", "## Layout"):
        assert heading in README, heading
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in README, page.name
    import re

    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README + "".join(doc(p.name) for p in (ROOT / "docs").glob("*.md"))):
        if "://" not in target:
            assert (ROOT / target).exists() or (ROOT / "docs" / target).exists(), target


def test_the_layout_tree_names_every_module():
    """Every module of saeception/ and trainables/ is named in the README's tree, and every file it names exists."""
    import re

    start, end = "<!-- layout:start -->", "<!-- layout:end -->"
    tree = README[README.index(start):README.index(end)]
    named = set(re.findall(r"[a-z_]+\.py", tree))
    modules = {p.name for p in (ROOT / "saeception").rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    modules |= {p.name for p in (ROOT / "trainables").glob("*.py") if p.name != "__init__.py"}
    assert modules <= named, sorted(modules - named)
    existing = {p.name for p in (*(ROOT / "saeception").rglob("*.py"), *(ROOT / "trainables").glob("*.py"))}
    assert named <= existing, sorted(named - existing)
    packages = {p.parent.name for p in (ROOT / "saeception").glob("*/__init__.py")}
    assert packages == set(re.findall(r"^  ([a-z_]+)/ ", tree, re.M)), packages


def test_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    assert "    python -m pytest -q\n" in README and "\npython -m pytest -q\n" in ci


def _memory_table():
    import importlib.util
    import sys

    if "bench_memory_table" not in sys.modules:  # bench/ is scripts, not a package
        path = REPO / "bench" / "memory_table.py"
        spec = importlib.util.spec_from_file_location("bench_memory_table", path)
        sys.modules[spec.name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["bench_memory_table"]


def test_readme_memory_table_is_generated_from_the_estimator():
    """docs/large-models.md's table: bench/memory_table.py's output verbatim (python bench/memory_table.py --write)."""
    start, end = "<!-- memory-table:start -->\n", "\n<!-- memory-table:end -->"
    text = doc("large-models.md")
    table = text[text.index(start) + len(start):text.index(end)]
    assert table == _memory_table().markdown(), "docs/large-models.md's table is stale: run python bench/memory_table.py --write"
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
    from saeception.parallel.memory import estimate
    from saeception.sweep.space import load_space, resolve_space

    workers, _, facts = mt.plan_row(neox)
    widest = estimate(load_space(resolve_space(neox.space)).config({"sae.expansion_factor": 16}), workers, facts=facts,
                      sizes=mt.SST2_SIZES)
    assert 67_000 * 98_304 * 4 < widest.evaluation < widest.training


def test_every_shipped_space_is_named_in_the_sweep_docs_and_the_cli_help():
    from saeception.sweep.space import shipped_spaces

    row = next(line for line in doc("sweeps.md").splitlines() if line.startswith("| `--space"))
    help_text = " ".join(sweep.parser().format_help().split())
    assert all(f"`{name}`" in row and name in help_text for name in shipped_spaces()), row
