"""The package's folders show its architecture: no import cycles between modules, and no module imports one above
its layer (graph never imports methods/jobs/cli, methods never import onnx or graph, jobs never import cli)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "onnxcam"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the onnxcam modules (and 'onnx') it imports anywhere in its body."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module(path)
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
        found[name] = {t for t in targets if t.split(".")[0] in ("onnxcam", "onnx")}
    modules = set(found)
    # "from onnxcam.x import y" names a module only when y is one
    return {m: {t for t in ts if t in modules or t.split(".")[0] == "onnx"} for m, ts in found.items()}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_module_imports_above_its_layer() -> None:
    rules = {  # package -> what it must never import
        "onnxcam.graph": ("onnxcam.methods", "onnxcam.jobs", "onnxcam.cli", "onnxcam.explainer", "onnxcam.evidence",
                          "onnxcam.runners", "onnxcam.runtime", "onnxcam.targets", "onnxcam.images",
                          "onnxcam.tokens"),
        "onnxcam.methods": ("onnx", "onnxcam.graph", "onnxcam.jobs", "onnxcam.cli", "onnxcam.explainer",
                            "onnxcam.evidence", "onnxcam.runners", "onnxcam.runtime"),
        "onnxcam.jobs": ("onnxcam.cli",),
        "onnxcam.runners": ("onnxcam.methods", "onnxcam.evidence", "onnxcam.explainer", "onnxcam.jobs"),
        "onnxcam.evidence": ("onnxcam.explainer", "onnxcam.jobs", "onnxcam.cli"),
        "onnxcam.explainer": ("onnxcam.jobs", "onnxcam.cli"),
    }
    wrong = [(m, t) for m, targets in _imports().items() for package, banned in rules.items() if _under(m, package)
             for t in targets if any(_under(t, b) for b in banned)]
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    graph = {m: {t for t in ts if t.startswith("onnxcam") and t != m} for m, ts in _imports().items()}
    # a package's __init__ that imports its own submodules (registries, the CLI app) is not a cycle of layers
    # (and a submodule reading its package's registry, e.g. a method module registering with onnxcam.methods)
    graph = {m: {t for t in ts if not _under(t, m) and not _under(m, t)} for m, ts in graph.items()}
    seen: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in seen:
                visit(nxt, [*stack, nxt])
        seen[node] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module, [module])
    assert not cycles, cycles


def test_the_graph_names_no_method() -> None:
    from onnxcam.methods import METHODS

    text = "\n".join(p.read_text(encoding="utf-8") for p in (PACKAGE / "graph").rglob("*.py"))
    named = [m for m in METHODS if f'"{m}"' in text or f"'{m}'" in text]
    assert not named, named


def test_every_command_is_listed_whichever_way_the_cli_starts() -> None:
    import subprocess
    import sys

    for command in ([sys.executable, "-m", "onnxcam.cli", "--help"], [sys.executable, "-m", "onnxcam", "--help"]):
        text = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout
        for name in ("explain", "inspect", "methods", "evaluate", "demo", "fit", "export", "cache", "compare"):
            assert f" {name} " in text, (command, name, text)


def test_methods_called_gradient_free_need_no_gradient_rule() -> None:
    from onnxcam.methods import METHODS

    free = {m.name for m in METHODS.values() if m.gradient_free}
    assert {"eigencam", "scorecam", "ablationcam", "reciprocam", "random"} <= free
    assert not free & {"gradcam", "smoothgradcam++", "opticam", "fullgrad", "relevancecam"}
