"""The house's one rule, checked on every import of every file (function-level imports included):

    contracts   the shared contracts (feature schema, feeds, bundle, repository, canary, Redis key
                layout and client, id rule, settings): imports nothing of the project
    model       training, export (torch): contracts
    service     the FastAPI service: contracts
    jobs        offline jobs (redeploy, gate, feedback export, experiments, bulk load): contracts, model
    devtools    what tests, benchmarks and the simulator share: every layer above
    scripts     commands: every layer above; nothing imports them
    tests       every layer but scripts (a command is run, not imported)

and no import circle among the modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "contracts": {"contracts"},
    "model": {"contracts", "model"},
    "service": {"contracts", "service"},
    "jobs": {"contracts", "model", "jobs"},
    "devtools": {"contracts", "model", "service", "jobs", "devtools"},
    "scripts": {"contracts", "model", "service", "jobs", "devtools"},
    "tests": {"contracts", "model", "service", "jobs", "devtools", "tests"},
}
PACKAGES = set(ALLOWED)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES}
    return found


def project_files() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def test_no_layer_imports_a_layer_above_it_and_nothing_imports_a_command():
    wrong = []
    for name, path in project_files().items():
        layer = name.split(".")[0]
        for target in imports(path):
            if target.split(".")[0] not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_layers_are_what_their_docstring_says():
    assert set(ALLOWED) == {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()} | {
        "scripts"
    }


def test_no_import_circle():
    files = project_files()
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        graph[name] = set()
        for target in imports(path):
            while target and target not in files:  # "from x import name": the module is x
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            raise AssertionError("import circle: " + " -> ".join(cycle))
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
