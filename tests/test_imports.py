"""Every module imports alone, in a fresh interpreter; no import cycle; the method never imports the harness.

An import cycle can hold only because some other module happened to be imported first (the first release had one:
``stacking`` <-> ``prompting``, hidden because ``peft_continual/__init__.py`` imported ``prompting`` first). Python
runs the package's ``__init__`` before any submodule, so importing each module alone cannot reveal such a cycle:
the module-level imports are therefore also read as a graph, which must have none.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import peft_continual

PACKAGE_DIR = Path(peft_continual.__file__).parent
MODULES = sorted(
    ["peft_continual"] + [info.name for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="peft_continual.")]
)
HARNESS = ("peft_continual.experiments",)
"""What only recipes and benchmarks use; the method packages never import it."""
METHOD = ("peft_continual.data", "peft_continual.tuners", "peft_continual.evaluation")

# The child forks once per module after importing the heavy third-party libraries (seconds), so each import of a
# module of this package starts from none of them loaded.
_CHILD = r"""
import importlib, json, os, sys, traceback
import torch, transformers, peft, safetensors  # noqa: F401
failures = {}
for name in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            message = ""
        except BaseException:
            message = traceback.format_exc(limit=-3)
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    if message:
        failures[name] = message
print(json.dumps(failures))
"""


@pytest.mark.integration
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork (not on Windows)")
def test_every_module_imports_alone_in_a_fresh_interpreter():
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(MODULES)], capture_output=True, text=True, timeout=300, check=True
    )
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{name}:\n{message}" for name, message in failures.items())
    assert len(MODULES) > 40, MODULES  # the walk found the package's modules


def _imported_modules(path: Path) -> set[str]:
    """Every ``peft_continual...`` module a source file imports, at top level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("peft_continual")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
    return (
        ".".join(("peft_continual", *parts[:-1])) if parts[-1] == "__init__" else ".".join(("peft_continual", *parts))
    )


def _module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of this package that ``path`` imports when it is imported (not inside functions or TYPE_CHECKING):
    ``from package import name`` is the submodule ``package.name`` when there is one, else the package itself."""
    edges = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                edges.add(submodule if submodule in modules else node.module)
        elif isinstance(node, ast.Import):
            edges.update(alias.name for alias in node.names)
    return {name for name in edges if name in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a path of module names, or ``[]``."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_module_level_imports_have_no_cycle():
    paths = {_module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}
    graph = {name: _module_level_imports(path, set(paths)) for name, path in paths.items()}
    assert "peft_continual.tuners.continual_prompt.model" in graph["peft_continual.tuners.continual_prompt"]
    assert _cycle(graph) == []


def test_the_cycle_finder_finds_the_first_releases_cycle():
    graph = {  # module-level imports of the first release (prompting/config.py <-> stacking.py)
        "peft_continual.prompting.config": {"peft_continual.stacking"},
        "peft_continual.stacking": {"peft_continual.prompting"},
        "peft_continual.prompting": {"peft_continual.prompting.config"},
    }
    assert _cycle(graph) == [
        "peft_continual.prompting",
        "peft_continual.prompting.config",
        "peft_continual.stacking",
        "peft_continual.prompting",
    ]


def test_the_method_never_imports_the_experiment_harness():
    offenders = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        module = "peft_continual." + ".".join(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        if module.startswith(METHOD):
            harness = sorted(name for name in _imported_modules(path) if name.startswith(HARNESS))
            if harness:
                offenders[module] = harness
    assert not offenders, offenders
