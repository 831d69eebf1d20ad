"""The package's import graph: no cycle, and every arrow points down the layers of the data path."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "l2s_lightning"
# "module:function" targets of the command table count as imports
_TARGET = re.compile(r"^(l2s_lightning(?:\.\w+)+):\w+$")

# lowest first: a module imports only modules of its own layer or of a lower one
LAYERS: list[tuple[str, ...]] = [
    (
        "errors",
        "quiet",
        "readers",
        "files",
        "jsonl",
        "internals",
        "models.names",
        "part_writer",
        "mlp",
        "methods",
        "config",
        "cli_help",
    ),
    ("models", "templates", "features", "prompts"),
    ("data", "steering", "steerer", "scoring"),
    ("extraction", "generation", "training", "evaluation", "tuning"),
    (
        "stages",
        "pipeline",
        "sweep",
        "tune",
        "writer_cli",
        "extraction.cli",
        "generation.cli",
        "training.cli",
        "evaluation.cli",
    ),
    ("cli", "api"),
]
STAGE_PACKAGES = ("extraction", "generation", "training", "evaluation")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ``l2s_lightning.<name>`` (an imported name inside a module resolves to that module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports (at any depth: function-level imports count too)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        targets: list[str] = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("l2s_lightning"):
                targets += [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names if alias.name.startswith("l2s_lightning")]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _TARGET.match(node.value):
                targets.append(node.value.split(":")[0])
        for target in targets:
            resolved = _resolve(target.removeprefix("l2s_lightning").lstrip("."), modules)
            if resolved is not None and resolved != name:
                graph[name].add(resolved)
    return graph


def _layer(module: str) -> int:
    best, depth = -1, -1
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = index, len(prefix)
    return best


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_no_import_cycle(graph):
    assert _cycles(graph) == []


def test_every_module_has_a_layer(graph):
    runtime = [m for m in graph if m and not m.startswith(("testing", "resources"))]
    assert [m for m in runtime if _layer(m) < 0] == []


def test_arrows_point_down(graph):
    upward = [
        f"{source} -> {target}"
        for source, targets in graph.items()
        if source and not source.startswith("testing")
        for target in targets
        if _layer(target) > _layer(source)
    ]
    assert upward == []


def test_stage_packages_do_not_import_each_other(graph):
    def stage(module: str) -> str | None:
        top = module.split(".")[0]
        return top if top in STAGE_PACKAGES and _layer(module) == 3 else None

    crossing = [
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if stage(source) and stage(target) and stage(source) != stage(target)
    ]
    assert crossing == []


def test_runtime_never_imports_the_test_builders(graph):
    assert [
        f"{s} -> {t}" for s, ts in graph.items() if not s.startswith("testing") for t in ts if t.startswith("testing")
    ] == []


def test_graph_sees_function_level_imports_and_command_targets(graph):
    """The checks above are only as good as the graph: it must see imports inside functions and the command table."""
    assert "steering.attach" in graph["steerer"]  # imported inside Steerer.attach
    assert any(target.endswith("cli") or target.startswith("stages") for target in graph["cli"])
