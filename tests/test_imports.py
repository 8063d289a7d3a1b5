"""The import graph of zerolm has no cycle, and the layers point one way.

The graph is read from the source with :mod:`ast` (nothing is imported): every ``import x`` and
``from x import y`` statement of every module of every ``zerolm.*`` package, at module level and
inside functions/methods alike (a function-local import is a dependency too, only a later one),
relative names resolved against the importing module's package. ``from pkg import name`` counts as
an import of ``pkg.name`` when that is a module, else of ``pkg``; importing ``a.b.c`` also runs the
``__init__`` of ``a`` and ``a.b``, so those are edges as well.
"""

from __future__ import annotations

import ast
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _packages() -> list[str]:
    """The packages the distribution installs (pyproject's ``[tool.setuptools] packages``)."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def _modules() -> dict[str, Path]:
    """``{dotted module name: source file}`` for every module of every installed zerolm package,
    found where Python finds them (so the package-dir mapping is the installed one)."""
    mods: dict[str, Path] = {}
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for pkg in _packages():
        if not any((ROOT / folders.get(pkg, pkg)).glob("*.py")):
            continue  # a data-only package (configs/: YAML shipped in the wheel, never imported)
        spec = importlib.util.find_spec(pkg)
        assert spec is not None and spec.submodule_search_locations, f"{pkg} is not importable as a package"
        folder = Path(next(iter(spec.submodule_search_locations)))
        for f in sorted(folder.glob("*.py")):
            mods[pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"] = f
    return mods


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return name in mods and mods[name].stem == "__init__"


def _resolve(module: str, level: int, name: str | None, mods: dict[str, Path]) -> str:
    """The absolute name of ``from <level dots><name> import …`` written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if _is_package(module, mods) else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    """``{module: {zerolm modules it imports}}`` (see the module docstring for what counts)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}

    def add(src: str, target: str) -> None:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # the target and the packages whose __init__ it runs
            name = ".".join(parts[:i])
            if name in mods and name != src:
                graph[src].add(name)

    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(mod, alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, node.level, node.module, mods)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    add(mod, sub if sub in mods else base)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, …, a]``, or None (iterative depth-first search, 3 colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph with each zerolm subpackage folded into one node (``zerolm.evals.bias`` →
    ``zerolm.evals``; top-level modules such as ``zerolm.cli`` stay themselves). ``__main__``
    modules are left out: an entry point calls the CLI on purpose and nothing imports it."""
    subpackages = {p for p in _packages() if p.count(".") == 1}

    def fold(m: str) -> str:
        head = ".".join(m.split(".")[:2])
        return head if head in subpackages else m

    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        if m.endswith(".__main__"):
            continue
        out.setdefault(fold(m), set())
        out[fold(m)] |= {fold(t) for t in targets if fold(t) != fold(m) and t != "zerolm"}
    return out


def test_graph_sees_known_edges():
    """The parser is not blind (else an empty graph would pass): module-level, function-level and
    ``from pkg import module`` edges that exist in the code are found; relative names resolve; the
    cycle finder reports a path."""
    g = import_graph()
    assert len(g) > 40
    assert "zerolm.errors" in g["zerolm.config"]                          # module level
    assert "zerolm.evals.lm" in g["zerolm.evals.fewshot"]                 # inside run_fewshot
    assert "zerolm.finetune.data" in g["zerolm.finetune.sentiment_prompts"]       # from zerolm.finetune import data
    assert "zerolm.finetune" in g["zerolm.finetune.sentiment_prompts"]            # ... which runs the package __init__
    mods = {"a": Path("a/__init__.py"), "a.b": Path("a/b.py"), "a.c": Path("a/c/__init__.py")}
    assert _resolve("a.b", 1, "x", mods) == "a.x" and _resolve("a.c", 1, "y", mods) == "a.c.y"
    assert _resolve("a.c", 2, None, mods) == "a" and _resolve("a.b", 0, "z.w", mods) == "z.w"
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_packages():
    """Layers point one way: data_pipeline < pretrain < evals < finetune < launch < cli (pretrain,
    evals and finetune are independent of each other except finetune → pretrain, evals)."""
    pg = _package_graph(import_graph())
    assert "zerolm.evals" in pg["zerolm.finetune"] and "zerolm.pretrain" in pg["zerolm.finetune"]  # not blind
    cycle = find_cycle(pg)
    assert cycle is None, "package cycle: " + " -> ".join(cycle)


def test_evals_never_import_finetune():
    """Evals consume exported models; finetune may use evals (its sentiment judge), never the other way."""
    bad = {m: sorted(t for t in ts if t.startswith("zerolm.finetune"))
           for m, ts in import_graph().items() if m.startswith("zerolm.evals")}
    assert not {m: t for m, t in bad.items() if t}


def test_only_the_engine_wrapper_imports_deepspeed():
    """DeepSpeed lives behind the engine wrapper (docs/architecture.md): ``pretrain/engine.py`` drives it and
    ``pretrain/ds_checkpoint.py`` converts and consolidates its checkpoint folders; no other module imports it
    (benches and tests may)."""
    importers = set()
    for mod, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(n == "deepspeed" or n.startswith("deepspeed.") for n in names):
                importers.add(mod)
    assert importers == {"zerolm.pretrain.engine", "zerolm.pretrain.ds_checkpoint"}, sorted(importers)
