"""The package's layering: README's module map names every module and its layer, every import goes
to the same layer or below, and the imports form no cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import softintrovae

PACKAGE = Path(softintrovae.__file__).parent
README = PACKAGE.parents[1] / "README.md"


def module_name(path: Path) -> str:
    """``softintrovae/models/base.py`` → ``models/base.py`` (as the README names it)."""
    return path.relative_to(PACKAGE).as_posix()


def readme_layers() -> dict[str, int]:
    rows = re.findall(r"^\| (\d) \| `([\w/]+\.py)` \|", README.read_text(), flags=re.M)
    assert rows, "README.md has no module map rows like '| 1 | `objectives.py` | ... |'"
    return {name: int(layer) for layer, name in rows}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports anywhere (module level or inside functions), except
    under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for stmt in block.body for n in ast.walk(stmt)}
    package = path.relative_to(PACKAGE).parent.parts
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("softintrovae"):
                    continue
                base = node.module.split(".")[1:]
            else:
                base = list(package[: len(package) - (node.level - 1)]) + (node.module.split(".") if node.module else [])
            for alias in node.names:
                found.add(_resolve(base + [alias.name], modules) or _resolve(base, modules))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("softintrovae."):
                    found.add(_resolve(alias.name.split(".")[1:], modules))
    found.discard(None)
    found.discard(module_name(path))
    return found


def _resolve(parts: list[str], modules: set[str]) -> str | None:
    """The module file a dotted path names: ``a/b.py`` or the package ``a/b/__init__.py``; the package's own ``__init__.py`` for []."""
    for candidate in ("/".join(parts) + ".py", "/".join(parts + ["__init__.py"])):
        if candidate.lstrip("/") in modules:
            return candidate.lstrip("/")
    return None


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, modules) for p in files}


def test_the_readme_module_map_names_every_module_once():
    layers = readme_layers()
    modules = set(import_graph())
    assert sorted(modules - set(layers)) == [], "modules missing from README's module map"
    assert sorted(set(layers) - modules) == [], "README names modules that do not exist"
    rows = re.findall(r"^\| \d \| `([\w/]+\.py)` \|", README.read_text(), flags=re.M)
    assert len(rows) == len(set(rows)), "a module is listed twice"


def test_no_module_imports_from_a_higher_layer():
    layers = readme_layers()
    upward = [
        f"{module} (layer {layers[module]}) imports {target} (layer {layers[target]})"
        for module, targets in import_graph().items()
        for target in targets
        if layers[target] > layers[module]
    ]
    assert upward == []


def test_the_imports_form_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [module, target]))
            if target not in state:
                visit(target, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_checker_sees_lazy_imports_and_skips_type_checking_ones(tmp_path):
    """The import walker itself: a function-level import counts, a TYPE_CHECKING one does not."""
    graph = import_graph()
    assert "trainer.py" in graph["experiments/toy2d.py"]  # imported inside a function there
    assert "config.py" not in graph["methods.py"]  # only under TYPE_CHECKING
    assert {"models/base.py", "objectives.py"} <= graph["methods.py"]
