"""The house, read from the code's own imports (static: every ``import`` in every module, top-level
or inside a function, parsed with ``ast``; nothing is imported).

- no import cycle between xbench modules (strongly connected components of the import graph);
- no private name (``_x``) imported across a file boundary;
- imports flow one way through the layers that ``xbench/__init__.py`` lists;
- no module outside ``xbench.mini`` imports the miniature world (it is a plug-in).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top; a module may import its own layer and the layers before it.
LAYERS = [
    {
        "xbench",
        "xbench.errors",
        "xbench.io",
        "xbench.vocab",
        "xbench.rundir",
        "xbench.assets",
        "xbench.sources",
    },
    {"xbench.tokenpair"},
    {"xbench.losses"},
    {"xbench.config"},
    {"xbench.engine"},
    {"xbench.evaluate"},
    {"xbench.report"},
    {"xbench.sweep"},
    {"xbench.mini", "xbench.train", "xbench.pair"},  # the plug-in and the entry points
]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted((ROOT / "xbench").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _owner(target: str, mods: dict[str, Path]) -> str | None:
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Module -> imported xbench modules, and (importer, name) for private names crossing files."""
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    private = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = []
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in mods else base)
                    is_private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if is_private and full not in mods and base.startswith("xbench"):
                        private.append((name, f"{base}.{alias.name}"))
            else:
                continue
            for t in targets:
                owner = _owner(t, mods) if t.startswith("xbench") else None
                if owner and owner != name:
                    graph[name].add(owner)
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    counter = 0
    nodes = set(graph) | {t for ts in graph.values() for t in ts}
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _layer(module: str) -> int:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            inside = module == prefix or module.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_layout.py"
    return best[0]


def test_no_import_cycle() -> None:
    graph, _ = _graph()
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_crosses_a_file() -> None:
    _, private = _graph()
    assert private == []


def test_imports_flow_one_way_through_the_layers() -> None:
    graph, _ = _graph()
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in sorted(graph.items())
        for t in sorted(targets)
        if _layer(t) > _layer(m)
    ]
    assert upward == []


def test_only_the_plugin_imports_the_miniature_world() -> None:
    graph, _ = _graph()
    core = {m for m, ts in graph.items() if not m.startswith("xbench.mini")}
    assert sorted(m for m in core if any(t.startswith("xbench.mini") for t in graph[m])) == []
