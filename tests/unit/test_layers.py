"""Imports point down only: every import in extproc/ (function-level and TYPE_CHECKING ones too)
is checked against the layer order below, and the module graph must have no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "extproc"

LAYERS = [
    ("extproc", "extproc.errors"),
    ("extproc.config",),
    ("extproc.protocol",),
    ("extproc.observability",),
    ("extproc.embedding",),
    ("extproc.cache",),
    ("extproc.dataplane",),
    ("extproc.admin",),
    ("extproc.app",),
    ("extproc.cli",),
]
"""Lowest first: a module may import its own layer and the layers before it, never a later one."""

FORBIDDEN = {
    # The request path reaches storage only through SemanticCache: it never talks to a backend.
    "extproc.dataplane": ("extproc.cache.backends",),
    # Embedding backends each import the base only, never each other.
    "extproc.embedding.onnx_backend": ("extproc.embedding.torch_backend",),
    "extproc.embedding.torch_backend": ("extproc.embedding.onnx_backend",),
}


def module_name(path: Path) -> str:
    """Dotted name of a file under extproc/."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that ``path`` imports, anywhere in the file, resolved to module names."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # "from package import submodule" imports the submodule
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def layer_of(name: str) -> int:
    """Index in LAYERS of the longest prefix matching ``name``."""
    best, best_len = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def graph() -> dict[str, set[str]]:
    """Module → our modules it imports."""
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_has_a_layer() -> None:
    missing = [name for name in modules() if layer_of(name) < 0]
    assert not missing, f"add these to LAYERS: {missing}"


def test_imports_point_down_only() -> None:
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        for name, deps in graph().items()
        for dep in sorted(deps)
        if layer_of(dep) > layer_of(name)
    ]
    assert not upward, "imports must point down:\n" + "\n".join(upward)


def test_forbidden_imports() -> None:
    bad = [
        f"{name} imports {dep}"
        for name, deps in graph().items()
        for scope, banned in FORBIDDEN.items()
        if name == scope or name.startswith(scope + ".")
        for dep in sorted(deps)
        if any(dep == b or dep.startswith(b + ".") for b in banned)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("edges", "cyclic"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"a"}}, True),
    ],
)
def test_cycle_finder_finds_cycles(edges: dict[str, set[str]], cyclic: bool) -> None:
    assert (find_cycle(edges) is not None) is cyclic


def test_upward_import_is_caught(tmp_path: Path) -> None:
    """The walker sees function-level imports: a cache module importing the dataplane is flagged."""
    source = tmp_path / "semantic.py"
    source.write_text("def f():\n    from extproc.dataplane.shared import Shared\n    return Shared\n")
    deps = imports_of("extproc.cache.semantic", source, {"extproc.dataplane.shared"})
    assert deps == {"extproc.dataplane.shared"}
    assert layer_of("extproc.dataplane.shared") > layer_of("extproc.cache.semantic")


def test_modules_stay_small() -> None:
    """A module over ~400 lines is doing more than one job: split it."""
    big = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 420}
    assert not big, big
