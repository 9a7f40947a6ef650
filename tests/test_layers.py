"""Which way the layers depend, read from the source (every import, at module level or inside
a function, as `ast` sees it):

    cli.py, bench/                          the front door and the benchmarks: may use anything
    client/                                 the HTTP client: nothing of ours; httpx and the
                                            standard library (tqdm for the command's bar)
    workers/                                Celery glue: service, models, structure_bank
    service/                                HTTP, no torch: the vocabulary of models (below),
                                            structure_bank; never workers
    models/                                 the ML library: structure_bank
    structure_bank/                         the store of structures: nothing above it

The vocabulary the service shares with the workers lives in models, in modules that import
no torch when loaded: ingest (models.io), presets (models.presets), backgrounds
(models.compose), the attribute vocabulary (models.attributes) and the pipeline registry
with its names, options and side outputs (models.pipeline, whose pipelines load their
models only when built). No import loop anywhere.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO

PACKAGES = ("service", "workers", "models", "structure_bank", "bench", "client")
# What each wing may import of the others (its own modules always).
MAY_IMPORT = {
    "cli": {"service", "workers", "models", "structure_bank", "client"},
    "bench": {"service", "workers", "models", "structure_bank", "client"},
    "client": set(),
    "workers": {"service", "models", "structure_bank"},
    "service": {"models", "structure_bank"},
    "models": {"structure_bank"},
    "structure_bank": set(),
}
# The torch-free vocabulary of models: all that service may import from there.
VOCABULARY = {"models.io", "models.presets", "models.compose", "models.pipeline",
              "models.errors", "models.attributes"}
ML_PACKAGES = {"torch", "torchvision", "diffusers", "open_clip", "safetensors", "faiss",
               "transformers", "accelerate", "timm"}


@dataclass(frozen=True)
class Import:
    target: str  # the module imported: ours (dotted name) or a third-party top-level name
    line: int
    at_load: bool  # run when the module loads (not in a function, not under TYPE_CHECKING)


def module_files(repo: Path = REPO) -> dict[str, Path]:
    files = {"cli": repo / "cli.py"}
    for package in PACKAGES:
        for path in sorted((repo / package).rglob("*.py")):
            parts = list(path.relative_to(repo).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def _ours(name: str, modules: dict[str, Path]) -> str | None:
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import in the module; ours resolved to the module it names (a `from package
    import module` names the module), third-party ones to their top-level name."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def add(dotted: str, line: int, at_load: bool) -> None:
        target = _ours(dotted, modules) or dotted.split(".")[0]
        imp = Import(target, line, at_load)
        if target != name and imp not in found:
            found.append(imp)

    def visit(node: ast.AST, at_load: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, at_load)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source,
                    node.lineno, at_load)
        for child in ast.iter_child_nodes(node):
            inside = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or (
                isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body)
            visit(child, at_load and not inside)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def import_graph(repo: Path = REPO) -> dict[str, list[Import]]:
    modules = module_files(repo)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def wing(module: str) -> str:
    return module.split(".")[0]


def import_cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    edges = {m: sorted({i.target for i in imps if i.target in graph}) for m, imps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return cycles


def layer_violations(graph: dict[str, list[Import]]) -> list[str]:
    bad = []
    for module, imps in sorted(graph.items()):
        for imp in imps:
            if imp.target not in graph:
                continue
            there = wing(imp.target)
            if there == wing(module):
                continue
            if there not in MAY_IMPORT[wing(module)]:
                bad.append(f"{module}:{imp.line} imports {imp.target} ({wing(module)} may not "
                           f"import {there})")
            elif wing(module) == "service" and there == "models" and imp.target not in VOCABULARY:
                bad.append(f"{module}:{imp.line} imports {imp.target}, which is not the "
                           f"torch-free vocabulary {sorted(VOCABULARY)}")
    return bad


def loaded_with(module: str, graph: dict[str, list[Import]]) -> dict[str, str]:
    """What importing `module` runs, ours and third-party: name → the module that imports it.
    A module's packages load before it, so they count as its imports."""
    seen: dict[str, str] = {module: module}
    todo = [module]
    while todo:
        current = todo.pop()
        parents = [".".join(current.split(".")[:n]) for n in range(1, current.count(".") + 1)]
        targets = [p for p in parents if p in graph]
        targets += [i.target for i in graph.get(current, []) if i.at_load]
        for target in targets:
            if target not in seen:
                seen[target] = current
                if target in graph:
                    todo.append(target)
    return seen


def torch_on_load(roots: list[str], graph: dict[str, list[Import]]) -> list[str]:
    bad = []
    for root in roots:
        loaded = loaded_with(root, graph)
        bad += [f"{root} loads {ml} (imported by {loaded[ml]})"
                for ml in sorted(ML_PACKAGES & set(loaded))]
    return bad


GRAPH = import_graph()


def test_no_import_loop() -> None:
    assert import_cycles(GRAPH) == []


def test_no_layer_imports_one_above_it() -> None:
    assert layer_violations(GRAPH) == []


def implementation_imports(graph: dict[str, list[Import]]) -> list[str]:
    """Imports of a pipeline implementation from outside models/: everything else builds
    pipelines by name through the registry (`models.pipeline.get_pipeline`)."""
    return [f"{m}:{i.line} imports {i.target}" for m, imps in graph.items()
            if wing(m) != "models" for i in imps
            if i.target.startswith(IMPLEMENTATIONS)]


# Where the pipelines themselves live (the registry's targets).
IMPLEMENTATIONS = ("models.pipelines", "models.generator.pipeline_ragdiffusion")


def test_only_models_imports_a_pipeline_implementation() -> None:
    assert implementation_imports(GRAPH) == []


def test_the_service_the_vocabulary_and_the_bank_load_no_torch() -> None:
    service = [m for m in GRAPH if wing(m) == "service"]
    bank = [m for m in GRAPH if wing(m) == "structure_bank"]
    assert torch_on_load(sorted(service) + sorted(VOCABULARY) + sorted(bank), GRAPH) == []
    direct = [f"{m}:{i.line} imports {i.target}" for m in service for i in GRAPH[m]
              if i.target in ML_PACKAGES]
    assert direct == []


# What the client may use from outside the standard library: a catalog team installs it
# beside its own tools, without the server's dependencies.
CLIENT_THIRD_PARTY = {"httpx"}
CLIENT_LAZY_THIRD_PARTY = {"tqdm"}  # the command's progress bar, imported when it runs


def client_dependencies(graph: dict[str, list[Import]]) -> list[str]:
    """Imports of client/ beyond the standard library and CLIENT_THIRD_PARTY (at load) or
    CLIENT_LAZY_THIRD_PARTY (inside a function)."""
    import sys

    bad = []
    for module, imps in sorted(graph.items()):
        if wing(module) != "client":
            continue
        for imp in imps:
            if imp.target in graph or imp.target in sys.stdlib_module_names:
                continue
            allowed = CLIENT_THIRD_PARTY | (set() if imp.at_load else CLIENT_LAZY_THIRD_PARTY)
            if imp.target not in allowed:
                bad.append(f"{module}:{imp.line} imports {imp.target}")
    return bad


def test_the_client_needs_only_httpx_and_the_standard_library() -> None:
    assert any(wing(m) == "client" for m in GRAPH)
    assert client_dependencies(GRAPH) == []


def test_the_walker_sees_loops_layers_and_lazy_torch(tmp_path: Path) -> None:
    """The checks above would catch what they are for: a loop through a function-level
    import, a lower layer importing a higher one, and torch loaded by the service."""
    def write(rel: str, text: str) -> None:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    write("cli.py", "def main():\n    from workers.runner import run\n")
    for package in PACKAGES:
        write(f"{package}/__init__.py", "")
    write("workers/runner.py", "def run():\n    from cli import main\n")
    write("structure_bank/validate.py", "from models.garments import CATEGORIES\n")
    write("models/garments.py", "CATEGORIES = ()\n")
    write("service/app.py", "from models.pipeline import names\nfrom models import warp\n")
    write("models/pipeline.py", "import numpy\nfrom models import warp\n")
    write("models/warp.py", "import torch\n")
    write("models/pipelines/__init__.py", "")
    write("models/pipelines/flatten.py", "from models.pipeline import names\n")
    write("bench/bench_flatten.py", "def main():\n    from models.pipelines.flatten import F\n")
    write("client/api.py", "import httpx\nimport numpy\nfrom service.errors import E\n"
          "def bar():\n    import tqdm\n")
    graph = import_graph(tmp_path)
    assert client_dependencies(graph) == ["client.api:2 imports numpy"]
    assert implementation_imports(graph) == [
        "bench.bench_flatten:2 imports models.pipelines.flatten"]
    assert import_cycles(graph) == [["cli", "workers.runner"]]
    assert layer_violations(graph) == [
        "client.api:3 imports service (client may not import service)",
        "service.app:2 imports models.warp, which is not the torch-free vocabulary "
        f"{sorted(VOCABULARY)}",
        "structure_bank.validate:1 imports models.garments (structure_bank may not import "
        "models)",
        "workers.runner:2 imports cli (workers may not import cli)",
    ]
    assert torch_on_load(["service.app"], graph) == [
        "service.app loads torch (imported by models.warp)"]
