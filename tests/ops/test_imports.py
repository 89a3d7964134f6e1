"""The package's import structure: no import cycle, and the Triton kernel modules below the op modules.

Every module of lowlight_fast must import when it is the first one imported: each is imported in a
child process that has imported only torch and triton (with TRITON_INTERPRET=1, as the tests run).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "lowlight_fast"
KERNELS = PACKAGE / "ops" / "triton"


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (scripts outside packages, and __main__, left out)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if not all((ROOT.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
            continue
        if parts[-1] == "__main__":  # runs the command line
            continue
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return {**env, **extra}


_IMPORT_EACH_FIRST = r"""
import importlib, os, sys, traceback
import torch, triton

failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print("failed:", failed)
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_when_imported_first():
    pytest.importorskip("triton")
    names = sorted(_modules())
    assert "lowlight_fast.ops.triton.zerodce_losses" in names
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_FIRST, *names],
        env=_env(TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]


def _module_level_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` runs while it is being imported (imports inside functions
    left out): each one it imports, and the packages above those that are not above ``name`` (its own
    packages are initialised before it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    own = {name.rsplit(".", i)[0] for i in range(name.count(".") + 1)}
    targets: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([package.rsplit(".", node.level - 1)[0], base]).rstrip(".")
                for alias in node.names:  # a submodule, or a name of the module ``base``
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)  # type checkers' imports never run
            elif isinstance(node, (ast.If, ast.Try)):
                visit(ast.iter_child_nodes(node))
            elif isinstance(node, ast.ExceptHandler):
                visit(node.body)

    visit(ast.parse(path.read_text()).body)
    runs = {t.rsplit(".", i)[0] for t in targets for i in range(t.count(".") + 1)}
    return {t for t in runs if t in modules and t not in own}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, done = [], set()

    def walk(chain):
        for target in sorted(graph[chain[-1]]):
            if target in chain:
                cycles.append(chain[chain.index(target):] + [target])
            elif target not in done:
                walk(chain + [target])
        done.add(chain[-1])

    for name in sorted(graph):
        if name not in done:
            walk([name])
    return cycles


def test_no_import_cycle_at_module_level():
    """No chain of module-level imports leads from a module back to itself, whichever is imported first."""
    modules = _modules()
    cycles = _cycles({name: _module_level_imports(name, path, modules) for name, path in modules.items()})
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", sorted(KERNELS.glob("*.py")), ids=lambda p: p.name)
def test_kernel_modules_import_nothing_from_the_ops(path):
    """ops/triton/*: kernels and launchers on torch, triton and lowlight_fast.backend; the op modules
    import them, never the other way round."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import from {node.module!r}"
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for imported in names:
            assert not imported.startswith("lowlight_fast.ops"), f"{path.name} imports {imported}"


def test_importing_the_ops_imports_no_triton():
    """The Triton ops are defined on first use: importing the package, its ops and losses leaves triton
    (and torch._dynamo, which imports it) unimported."""
    code = (
        "import sys, lowlight_fast.ops, lowlight_fast.losses\n"
        "print(sorted(m for m in ('triton', 'torch._dynamo') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(TRITON_INTERPRET="1"), capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.split("\n")[-2] == "[]"
