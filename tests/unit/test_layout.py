"""The layout the README promises, checked from the source: every import (top level and inside
functions) read with `ast`, so a newcomer's picture of the layering stays true.

- no import cycle among the project's modules (deployments/, serve/, cluster/);
- deployments/'s folders import only the folders before them in LAYERS (the torch-free ones first);
- deployments/ imports no Ray, serve/ or cluster/; cluster/ imports no serve/;
- the torch-free packages import no torch, diffusers, transformers or Ray — read from the source and
  seen in `sys.modules` after importing them in a fresh interpreter;
- deployments/ has no flat modules but the cross-cutting ones, and every package says its role.
"""

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP_PACKAGES = ("deployments", "serve", "cluster")

# deployments/ from the bottom up: a module may import its own folder's modules and those of the
# folders before it. errors and metrics (first) may be imported by every layer; the stage contracts
# carry a request's parameters and output format, so they sit above request/ and media/.
LAYERS = (
    ("deployments.errors", "deployments.metrics"),
    ("deployments.settings",),
    ("deployments.media",),
    # a family's parameters are request declarations: the registry in request/ reads them
    ("deployments.request", "deployments.families.qwen_image_edit.parameters", "deployments.families.instruct_pix2pix.parameters"),
    ("deployments.contracts",),
    ("deployments.workflows",),
    ("deployments.checkpoints",),
    ("deployments.lora",),
    ("deployments.devices",),
    ("deployments.families",),
    ("deployments.stages",),
    ("deployments.batching",),
    ("deployments.cli",),
)
CROSS_CUTTING = {"deployments.errors", "deployments.metrics"}
TORCH_FREE = (
    "deployments.errors", "deployments.settings", "deployments.media", "deployments.request",
    "deployments.families.qwen_image_edit.parameters", "deployments.families.instruct_pix2pix.parameters",
)
HEAVY = ("torch", "diffusers", "transformers", "ray", "peft", "torchao")


@cache
def modules() -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    found = {}
    for top in TOP_PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> list[str]:
    """The dotted names an import statement reaches (`from a import b` reaches a.b when that is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base for alias in node.names]


@cache
def imports() -> dict[str, set[str]]:
    """module -> every name it imports (project modules by their longest known prefix; others as written)."""
    graph = {}
    for module, path in modules().items():
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _imported(module, node, path.name == "__init__.py"):
                    known = name
                    while known and known not in modules():
                        known = known.rpartition(".")[0]
                    names.add(known or name)
        names.discard(module)
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        names |= {".".join(name.split(".")[:i]) for name in names if name in modules() for i in range(1, name.count(".") + 1)}
        graph[module] = names - {module} - {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return graph


def project_edges() -> dict[str, set[str]]:
    return {module: {name for name in names if name in modules()} for module, names in imports().items()}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def is_package(module: str) -> bool:
    """Whether `module` is a package: its __init__ runs before any of its modules (and is checked as a module)."""
    return modules()[module].name == "__init__.py"


def layer(module: str) -> int | None:
    """The index in LAYERS of the most specific entry that holds `module` (None: not in deployments/)."""
    matches = [(len(prefix), i) for i, entries in enumerate(LAYERS) for prefix in entries if _within(module, prefix)]
    return max(matches)[1] if matches else None


def test_the_module_graph_has_no_cycle():
    edges, state, cycles = project_edges(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for name in sorted(edges[module]):
            if state.get(name) == "open":
                cycles.append(path[path.index(name):] + [name] if name in path else [module, name])
            elif name not in state:
                visit(name, path + [name])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_deployments_folders_import_only_the_folders_below_them():
    unplaced = sorted(m for m in modules() if _within(m, "deployments") and m != "deployments" and layer(m) is None)
    assert not unplaced, f"modules of deployments/ in no layer: {unplaced}"
    wrong = [
        f"{module} ({LAYERS[layer(module)][0]}) imports {name} ({LAYERS[layer(name)][0]})"
        for module, names in project_edges().items() if _within(module, "deployments") and module != "deployments"
        for name in names
        if _within(name, "deployments") and not is_package(name) and name not in CROSS_CUTTING
        and layer(name) > layer(module)
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_the_engine_imports_no_ray_serve_or_cluster_and_cluster_no_serve():
    wrong = []
    for module, names in imports().items():
        for name in names:
            top = name.split(".")[0]
            if _within(module, "deployments") and top in ("ray", "serve", "cluster"):
                wrong.append(f"{module} imports {name}")
            if _within(module, "cluster") and top == "serve":
                wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_torch_free_packages_import_nothing_heavy_in_their_source():
    assert not [free for free in TORCH_FREE if free not in modules()], "a torch-free package is missing"
    wrong = [
        f"{module} imports {name}"
        for module, names in imports().items() if any(_within(module, free) for free in TORCH_FREE)
        for name in names
        if name.split(".")[0] in HEAVY
        or (name in modules() and not is_package(name) and not any(_within(name, free) for free in TORCH_FREE))
    ]
    assert not wrong, "torch-free modules importing more:\n" + "\n".join(sorted(wrong))


def test_the_torch_free_packages_import_nothing_heavy_when_imported():
    free = sorted(name for name in modules() if any(_within(name, prefix) for prefix in TORCH_FREE))
    script = (
        f"import importlib, json, sys\nfor name in {free!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(loaded.stdout) == []


def test_deployments_is_packages_by_role_each_saying_its_role():
    flat = sorted(
        path.name for path in (ROOT / "deployments").glob("*.py")
        if path.stem not in ("__init__", "errors", "contracts", "metrics")
    )
    assert not flat, f"flat modules in deployments/: {flat}"
    silent = [
        str(path.relative_to(ROOT)) for top in TOP_PACKAGES for path in (ROOT / top).rglob("__init__.py")
        if len((ast.get_docstring(ast.parse(path.read_text())) or "").split()) < 12
    ]
    assert not silent, f"packages without a docstring saying their role: {silent}"
