"""The package's shape: imports flow one way, modules stay short, the loop knows no task."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("deepfake_jax", "data_prep", "configs")
# The command-line entry points: they call down into the stages; no module imports them.
COMMANDS = {"deepfake_jax.main", "deepfake_jax.evaluate", "deepfake_jax.predict",
            "deepfake_jax.export", "deepfake_jax.segment", "deepfake_jax.landmarks",
            "deepfake_jax.search", "deepfake_jax.app.__main__"}
MAX_LINES = 600


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The project modules `path` imports (at any depth: lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:
                    found.add(sub)
                elif node.module in modules:
                    found.add(node.module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_and_no_module_imports_a_command():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # a package's __init__ importing its own submodules is not a cycle of the design
    for name in graph:
        graph[name] = {m for m in graph[name] if not (name.endswith("__init__") or
                                                      m.startswith(name + "."))}
    assert _cycles(graph) == []
    importers = {m: sorted(n for n, deps in graph.items() if m in deps and not
                           n.startswith("tests")) for m in COMMANDS}
    assert {m: n for m, n in importers.items() if n} == {}


def test_no_module_is_longer_than_600_lines():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_training_loop_has_no_task_specific_code():
    trainer = ROOT / "deepfake_jax" / "training" / "trainer.py"
    assert not any(m.startswith("deepfake_jax.tasks") for m in _imports(trainer, _modules()))
    source = trainer.read_text()
    for word in ("classification", "segmentation", "p_fake", "miou", "roc_auc"):
        assert word not in source, word
