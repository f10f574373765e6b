"""The shape of the code (docs/architecture.md): imports flow one way, the core knows no files, modules stay small.

Imports are read from the source with ``ast``, function-level ones included (only
``if TYPE_CHECKING:`` blocks, which never run, are left out), so a lazy import
cannot hide a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tgdpet"

#: docs/architecture.md's layers, bottom first: a module may import from its own layer and those below only.
LAYERS = (
    ("errors", "models", "inputs", "kse", "tgd", "drop", "precision", "runtime", "domain", "metrics", "resample",
     "infer"),
    ("io", "files", "checkpoint", "builtin", "data", "simulate", "config", "configs"),
    ("denoise", "batch", "bids", "evaluate", "demo", "train"),
    ("paper",),
    ("cli",),
)  # fmt: skip
#: Modules that work on arrays and networks only: they may not import anything that reads or writes files,
#: loads model files, or sits above them (the denoiser knows tensors, the drop study takes a denoise function).
CORE = LAYERS[0]
MAX_LINES = 700


def _modules() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The tgdpet modules ``name`` imports anywhere in its source (a package's ``__init__`` counts as the package)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def target(base: str, item: str) -> str:
        return f"{base}.{item}" if f"{base}.{item}" in MODULES else base

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] == "tgdpet":
                found.update(target(base, alias.name) for alias in node.names)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names if a.name.split(".")[0] == "tgdpet")

    Visitor().visit(ast.parse(path.read_text()))
    return found - {name}


def test_the_import_graph_reader_sees_lazy_imports():
    """The reader itself: infer's module-level and denoise's function-level imports are found."""
    assert {"tgdpet.models", "tgdpet.precision"} <= _imports("tgdpet.infer")
    assert "tgdpet.batch" in _imports("tgdpet.cli")  # imported inside the denoise command


def test_no_import_cycle_between_tgdpet_modules():
    graph = {name: _imports(name) & MODULES.keys() for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            if state.get(other) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(other) :] + [name, other]))
            if other not in state:
                visit(other, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def _layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else ""
    return next((k for k, members in enumerate(LAYERS) if top in members), 0)  # the package itself: __version__


def test_every_module_has_a_layer():
    tops = {name.split(".")[1] for name in MODULES if "." in name}
    assert tops == {m for layer in LAYERS for m in layer}, "docs/architecture.md and LAYERS name every module"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_its_own(name):
    above = {m for m in _imports(name) if _layer(m) > _layer(name)}
    assert not above, f"{name} (layer {_layer(name)}) imports {sorted(above)} from above"


@pytest.mark.parametrize("core", CORE)
def test_the_core_imports_no_file_handling(core):
    name = f"tgdpet.{core}"
    above = {m for m in _imports(name) if _layer(m) > 0}
    assert not above, f"{name} imports {sorted(above)}"


def test_no_module_is_over_the_line_limit():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_command_line_starts_without_torch():
    """``tgdpet --help`` must not wait for torch (1.5 s here): the CLI module imports its commands' code lazily."""
    code = "import sys, tgdpet.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
