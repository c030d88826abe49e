"""The shape of the package: the core (plain PyTorch) imports neither Ray, MLflow nor Optuna, and
imports point from the Ray/MLflow layer (saeception.sweep, saeception.trainables) down into the core,
never back. Every import counts, also those inside functions."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "saeception"
LAYER = ("saeception.sweep", "saeception.trainables")
FORBIDDEN_IN_CORE = ("ray", "mlflow", "optuna", *LAYER)


def core_modules() -> list[Path]:
    return sorted(p for p in PKG.glob("*.py"))


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against saeception (core modules sit in the package root)
                base = "saeception" + (f".{node.module}" if node.module else "")
                names |= {base} | {f"{base}.{a.name}" for a in node.names}
            elif node.module:
                names.add(node.module)
    return names


def test_the_core_imports_no_ray_mlflow_optuna_nor_the_layer_above():
    modules = core_modules()
    assert {"chain.py", "cache.py", "config.py", "sae.py", "train.py", "stages.py"} <= {p.name for p in modules}
    for path in modules:
        bad = sorted(n for n in imported(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN_IN_CORE))
        assert not bad, f"{path.name} imports {bad}"


def test_the_layer_is_where_ray_and_mlflow_live():
    layer_files = [*(PKG / "sweep").glob("*.py"), *(PKG.parent / "trainables").glob("*.py")]
    used = set().union(*(imported(p) for p in layer_files))
    assert any(n.startswith("ray") for n in used) and any(n.startswith("mlflow") for n in used)
