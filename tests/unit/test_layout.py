"""The shape of the package: the core (plain PyTorch) imports neither Ray, MLflow nor Optuna, and
imports point from the Ray/MLflow layer (saeception.sweep, saeception.trainables) down into the core,
never back. Every import counts, also those inside functions."""

import ast
from pathlib import Path

from paths import REPO

PKG = REPO / "saeception"
LAYER = ("saeception.sweep", "saeception.trainables")
FORBIDDEN_IN_CORE = ("ray", "mlflow", "optuna", *LAYER)


# The core's subpackages, one concept each (the README's layout tree shows them).
CORE_PACKAGES = ("config", "data", "models", "method", "eval", "store", "parallel")


def core_modules() -> list[Path]:
    """Every module of saeception/ outside the Ray/MLflow layer (sweep/)."""
    return sorted(p for p in PKG.rglob("*.py") if "sweep" not in p.relative_to(PKG).parts)


def imported(path: Path) -> set[str]:
    """Every module name `path` imports (relative imports resolved), inside functions too."""
    names = set()
    if path.is_relative_to(PKG):
        package = ["saeception", *path.relative_to(PKG).parts[:-1]]
    else:  # trainables/ installs as saeception.trainables
        package = ["saeception", "trainables", *path.relative_to(PKG.parent / "trainables").parts[:-1]]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                names |= {base} | {f"{base}.{a.name}" for a in node.names}
            elif node.module:
                names.add(node.module)
                names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_core_imports_no_ray_mlflow_optuna_nor_the_layer_above():
    modules = core_modules()
    assert {"chain.py", "cache.py", "schema.py", "sae.py", "train.py", "stages.py"} <= {p.name for p in modules}
    for path in modules:
        bad = sorted(n for n in imported(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN_IN_CORE))
        assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def test_the_core_is_grouped_by_concept():
    """Top-level modules are only the CLIs and the validation pass; everything else sits in its concept's package."""
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "export.py", "run.py", "validate.py"], top
    for name in CORE_PACKAGES:
        assert (PKG / name / "__init__.py").exists(), name


def test_the_layer_is_where_ray_and_mlflow_live():
    layer_files = [*(PKG / "sweep").glob("*.py"), *(PKG.parent / "trainables").glob("*.py")]
    used = set().union(*(imported(p) for p in layer_files))
    assert any(n.startswith("ray") for n in used) and any(n.startswith("mlflow") for n in used)


def _module_names() -> dict[str, Path]:
    """saeception's modules by dotted name (trainables/ installs as saeception.trainables)."""
    out = {}
    for base, pkg in ((PKG, "saeception"), (PKG.parent / "trainables", "saeception.trainables")):
        for f in base.rglob("*.py"):
            parts = [p for p in f.relative_to(base).with_suffix("").parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the saeception modules it imports, counting imports inside functions."""
    mods = _module_names()
    graph = {}
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                edges |= {t for t in (target, *(f"{target}.{a.name}" for a in node.names)) if t in mods}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in mods}
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_anywhere():
    graph = import_graph()
    assert len(graph) > 40 and "saeception.trainables.chain_trainable" in graph
    assert not cycles(graph), cycles(graph)


def test_the_cycle_check_sees_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    real = import_graph()
    real["saeception.sweep.vocab"] = {"saeception.sweep.driver"}  # as if vocab imported the driver
    assert any("saeception.sweep.vocab" in c for c in cycles(real))


def is_ray_mark(decorator: str) -> bool:
    """`@pytest.mark.ray` or `@pytest.mark.ray(seconds=...)` (tests/conftest.py orders the Ray tests by it)."""
    return decorator == "pytest.mark.ray" or decorator.startswith("pytest.mark.ray(")


def test_tests_mirror_the_package_and_keep_ray_apart():
    """tests/unit/<package>/ holds the Ray-free tests of saeception/<package>/, tests/system/ the ones that
    start Ray (every one marked `ray`), tests/support/ what both use."""
    tests = REPO / "tests"
    for d in (tests / "unit").iterdir():
        if d.is_dir() and d.name != "__pycache__":
            assert (PKG / d.name / "__init__.py").exists(), f"tests/unit/{d.name} mirrors no package"
    for path in (tests / "unit").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                marks = {ast.unparse(d) for d in node.decorator_list}
                assert not any(is_ray_mark(m) for m in marks), f"{path.relative_to(tests)}::{node.name} starts Ray: move it to tests/system"
    for path in (tests / "system").glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                marks = {ast.unparse(d) for d in node.decorator_list}
                assert any(is_ray_mark(m) for m in marks), f"{path.name}::{node.name} is not marked ray"


def test_a_function_level_import_says_why_it_is_lazy():
    """Imports sit at the top of a module; one inside a function keeps Ray, MLflow, a heavy library or
    CUDA out of a process that must not load them, and says so on its line (`# lazy: <reason>`)."""
    unexplained = []
    for path in [*PKG.rglob("*.py"), *(PKG.parent / "trainables").rglob("*.py")]:
        lines = path.read_text().split("\n")
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if not isinstance(node, (ast.Import, ast.ImportFrom)):
                        continue
                    if "# lazy:" not in "\n".join(lines[node.lineno - 1:node.end_lineno]):
                        unexplained.append(f"{path.relative_to(PKG.parent)}:{node.lineno}")
    assert not unexplained, unexplained


def test_every_subpackage_is_installed():
    """pyproject.toml lists the packages a wheel holds: every folder of saeception/ with an __init__.py."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("saeception", *p.parent.relative_to(PKG).parts)) for p in PKG.rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
