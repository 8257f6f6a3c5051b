"""The package's shape, read from the source: the top level (the detector and what every script
needs) imports no sub-package, each sub-package imports only the top level and itself, nothing
imports an entry script, and there is no import circle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "scrfdkit"
SCRIPTS = ("scrfd", "video_inference_fdlm", "export_modified_onnx", "export_tflite",
           "evaluate_widerface", "speed_test", "compare_detectors")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """scrfdkit modules (and entry scripts) that `path` imports, at any depth of its code;
    code inside string literals (a child process's program) is not an import of this module."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # from . import x
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in known or name.split(".")[0] in SCRIPTS}


GRAPH = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    """'top' for scrfdkit and scrfdkit.<module>, else the sub-package's name."""
    parts = module.split(".")
    is_package = (PACKAGE.joinpath(*parts[1:]) / "__init__.py").exists()
    return "top" if len(parts) == 1 or (len(parts) == 2 and not is_package) else parts[1]


def test_the_layers_are_what_the_readme_says():
    subpackages = {layer(m) for m in GRAPH} - {"top"}
    assert subpackages == {"export", "wider", "bench", "compare", "scale"}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_only_the_top_level_and_its_own_subpackage(module):
    own = layer(module)
    for target in GRAPH[module]:
        assert target.split(".")[0] not in SCRIPTS, f"{module} imports the script {target}"
        allowed = {"top"} if own == "top" else {"top", own}
        assert layer(target) in allowed, f"{module} ({own}) imports {target} ({layer(target)})"


def test_no_import_circle():
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if target not in GRAPH or target == module.rpartition(".")[0]:
                continue  # a package's __init__ naming its parent is no edge of the cycle
            assert state.get(target) != "open", " -> ".join(path + [module, target])
            if target not in state:
                visit(target, path + [module])
        state[module] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module, [])


def test_no_script_imports_another_and_every_script_imports_scrfdkit():
    for script in SCRIPTS:
        names = imports_of(REPO / f"{script}.py")
        assert not {n for n in names if n.split(".")[0] in SCRIPTS}, script
        assert any(n.startswith("scrfdkit") for n in names), script


def test_line_budget():
    for script in SCRIPTS:
        assert len((REPO / f"{script}.py").read_text().splitlines()) <= 400, script
    for path in PACKAGE.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 500, path


def test_every_module_says_its_job_first():
    for path in PACKAGE.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and doc.strip(), f"{path} has no docstring"
