"""The package's shape: no import cycle (function-level imports included), the library never imports the
applications built on it, the command line holds no per-algorithm branch, and notebooks use the public API."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from metalib import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "metalib"
APPLICATIONS = {"metalib.train_cli", "metalib.training_run", "metalib.demo", "metalib.pretrained.export"}  # and runner.*


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The metalib modules ``path`` imports anywhere in it (function bodies too), as full names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:  # "from . import x" imports the module x
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_the_import_graph_has_no_cycle():
    edges, seen, done, cycles = graph(), set(), set(), []

    def visit(node: str, path: list[str]) -> None:
        seen.add(node)
        for nxt in sorted(edges[node]):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done and nxt not in seen:
                visit(nxt, path + [nxt])
        done.add(node)

    for start in sorted(edges):
        if start not in done:
            seen.clear()
            visit(start, [start])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_library_does_not_import_its_applications():
    for module, targets in graph().items():
        if module in APPLICATIONS or module.startswith("metalib.runner") or module == "metalib":
            continue  # metalib's own __getattr__ loads `reproduce` from the exporter on use
        apps = {t for t in targets if t in APPLICATIONS or t.startswith("metalib.runner")}
        assert not apps, f"{module} imports {sorted(apps)}"


def test_the_command_line_has_no_per_algorithm_branch():
    source = (PACKAGE / "train_cli.py").read_text(encoding="utf-8")
    for name in REGISTRY:
        uses = re.findall(rf'"{re.escape(name)}"', source)
        assert len(uses) == (1 if name == "maml" else 0), f"train_cli names {name!r} {len(uses)} times"
    assert "maml\", help=\"meta-learning algorithm\"" in source  # the one use: --algorithm's default


def test_notebooks_import_metalib_and_at_most_one_lesson_sub_package():
    allowed = {"metalib", "metalib.exercises", "metalib.viz"}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        modules = set(re.findall(r"^\s*from (metalib[\w.]*) import", source, re.M))
        modules |= set(re.findall(r"^\s*import (metalib[\w.]*)", source, re.M))
        lessons = modules - allowed
        assert len(lessons) <= 1 and all(m == "metalib.single_task" for m in lessons), f"{path.name}: {sorted(modules)}"


def test_no_function_defined_in_a_notebook_reads_the_notebooks_globals():
    """Inputs are passed in (as arguments, or bound as defaults where the function is defined), so a cell can be
    copied into another project and still say what it needs; exercise tests live in metalib.exercises."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = [ast.parse("".join(c["source"])) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
                 if c["cell_type"] == "code"]
        assigned = {x.id for tree in cells for node in tree.body
                    if not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom))
                    for x in ast.walk(node) if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Store)}
        for tree in cells:
            for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
                body = ast.Module(body=fn.body, type_ignores=[])
                own = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
                own |= {x.id for x in ast.walk(body) if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Store)}
                own |= {a.arg for x in ast.walk(body) if isinstance(x, (ast.Lambda, ast.FunctionDef)) for a in x.args.args}
                read = {x.id for x in ast.walk(body) if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Load)}
                leaked = sorted((read & assigned) - own)
                assert not leaked, f"{path.name}: {fn.name}() reads the notebook's globals {leaked}"


def test_no_module_imports_another_modules_private_names():
    """What two modules share is public in one place (e.g. single_task.examples), not reached into."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("metalib")):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                assert not private, f"{module_name(path)} imports private {private} from {node.module}"
