"""The layering rules of the code base, checked on the source (issue 19), so they stay true:

* no import circle among the modules of ``pipeline`` and ``simulators`` (imports inside functions count: a
  circle hidden in a function is still a circle a reader has to untangle);
* the runtime (the services that run in production: ingest, agents, alerts, sinks, detectors, the contracts
  and the modules they share) never imports :mod:`pipeline.stack`, the local-stack installer;
* ``pipeline`` never imports ``simulators`` except the CLI, which registers `larder simulate` and `larder demo`;
  the replay file format is :mod:`pipeline.contracts.replay`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "simulators")

#: Packages and modules that run in production; none of them may import the dev stack.
RUNTIME = (
    "pipeline.ingest",
    "pipeline.agents",
    "pipeline.alerts",
    "pipeline.sinks",
    "pipeline.detectors",
    "pipeline.contracts",
    "pipeline.kafkaadmin",
    "pipeline.serde",
    "pipeline.topics",
    "pipeline.partitioner",
    "pipeline.producer",
    "pipeline.clock",
    "pipeline.settings",
    "pipeline.siteconfig",
    "pipeline.profiles",
    "pipeline.schemas",
)
#: Modules still allowed to import the stack: none since site-file editing moved to pipeline/siteedit.py and
#: broker logins to pipeline/stack/logins.py. Keep it empty.
STACK_IMPORT_PENDING: set[str] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, anywhere in the file (also inside functions and TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    wanted: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            wanted.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in modules]
            wanted.update(subs)
            if len(subs) < len(node.names):  # names from the module itself, not submodules of a package
                wanted.add(module)
    out = set()
    for module in wanted:
        while module and module not in modules:
            module = module.rpartition(".")[0]
        if module and module != name:
            out.add(module)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _under(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def test_no_import_circle() -> None:
    assert _circles(_graph()) == []


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_no_runtime_module_imports_the_dev_stack() -> None:
    graph = _graph()
    offenders = sorted(
        name
        for name, deps in graph.items()
        if _under(name, RUNTIME)
        and name not in STACK_IMPORT_PENDING
        and any(_under(d, ("pipeline.stack",)) for d in deps)
    )
    assert offenders == []
    # The allowance is for modules that still need it: one that no longer imports the stack leaves the list.
    still = {n for n in STACK_IMPORT_PENDING if any(_under(d, ("pipeline.stack",)) for d in graph.get(n, ()))}
    assert still == STACK_IMPORT_PENDING


def test_pipeline_imports_simulators_only_from_the_cli() -> None:
    graph = _graph()
    offenders = sorted(
        name
        for name, deps in graph.items()
        if _under(name, ("pipeline",)) and name != "pipeline.cli" and any(_under(d, ("simulators",)) for d in deps)
    )
    assert offenders == []
