"""The import layers: who may import whom, checked on the source with ``ast`` (imports inside functions too).

- ``pathways_kg`` is a standalone package: it never imports ``histokg`` or ``app``;
- the library never imports the web ``app`` (the app calls the library); the one exception is the
  ``histokg serve`` command of ``histokg.cli``, which starts the app (lazily, in its function);
- inference (``histokg.tl``, ``pl``, ``evaluate``, ``heldout`` and ``report`` (what ``histokg evaluate``
  runs), ``retrieval``, ``checkpoint``, ``models``, ``st`` and the web ``app``) never imports
  ``histokg.train``: a checkpoint is read by :mod:`histokg.checkpoint`;
- training and data reading (``histokg.train``, ``histokg.st``) never import ``histokg.synth``: a study
  folder is read by :mod:`histokg.st.study`;
- one training engine: only ``histokg.train`` (the trainer) and ``histokg.bench`` import
  ``histokg.train.engine``;
- the top-level parts of ``histokg`` (subpackages and modules such as ``st``, ``models``, ``train``) import
  each other without cycles.

The orchestrators (``histokg.cli``, ``histokg.pipeline``, ``histokg.bench``) sit on top and may import
anything, training and synthesis included.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("histokg", "pathways_kg", "app")

# (modules the rule applies to, what they must never import[, modules exempt from it]); a name covers
# its submodules
RULES: list[tuple[tuple[str, ...], ...]] = [
    (("pathways_kg",), ("histokg", "app")),
    (("histokg",), ("app",), ("histokg.cli",)),  # `histokg serve` starts the app
    (
        (
            "histokg.tl",
            "histokg.pl",
            "histokg.evaluate",
            "histokg.heldout",
            "histokg.report",
            "histokg.retrieval",
            "histokg.checkpoint",
            "histokg.models",
            "histokg.st",
            "app",
        ),
        ("histokg.train",),
    ),
    (("histokg.train", "histokg.st"), ("histokg.synth",)),
    # one training engine: the trainer and the bench train through it, nothing else does
    (PACKAGES, ("histokg.train.engine",), ("histokg.train", "histokg.bench")),
]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names a module imports anywhere in its body: ``import a.b``, ``from a import b`` (as
    ``a`` and ``a.b``), relative imports resolved, and ``importlib.import_module("literal")``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def scan(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Every module of ``packages`` under ``root`` -> the names it imports."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(root, path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            out[module] = imported_names(tree, module, path.name == "__init__.py")
    return out


def within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(imports: dict[str, set[str]], rules=RULES) -> list[str]:
    """``"module imports name (forbidden: ...)"`` for every import that breaks a rule."""
    out = []
    for module, names in sorted(imports.items()):
        for sources, banned, *exempt in rules:
            if within(module, sources) and not within(module, exempt[0] if exempt else ()):
                out += [
                    f"{module} imports {name} (forbidden: {', '.join(banned)})"
                    for name in sorted(names)
                    if within(name, banned)
                ]
    return out


def part_graph(imports: dict[str, set[str]], package: str = "histokg") -> dict[str, set[str]]:
    """Top-level parts of ``package`` (``st``, ``models``, ...) -> the other parts they import."""
    parts = {m.split(".")[1] for m in imports if m.startswith(package + ".")}
    graph: dict[str, set[str]] = {p: set() for p in parts}
    for module, names in imports.items():
        if not module.startswith(package + "."):
            continue
        own = module.split(".")[1]
        for name in names:
            bits = name.split(".")
            if bits[0] == package and len(bits) > 1 and bits[1] in parts and bits[1] != own:
                graph[own].add(bits[1])
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.fixture(scope="module")
def repo_imports() -> dict[str, set[str]]:
    return scan(REPO)


def test_the_scan_sees_every_package_and_lazy_imports(repo_imports):
    assert {m.split(".")[0] for m in repo_imports} == set(PACKAGES)
    assert len(repo_imports) > 80
    # imported inside a function body (lazily), so only a walk of the whole tree finds it
    assert "histokg.train.engine.run_epoch" in repo_imports["histokg.bench.engine"]


def test_no_forbidden_imports(repo_imports):
    assert violations(repo_imports) == []


def test_no_import_cycles_between_histokg_parts(repo_imports):
    graph = part_graph(repo_imports)
    assert {"st", "train", "tl", "models", "checkpoint"} <= set(graph)
    assert find_cycle(graph) is None


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_catches_forbidden_imports_and_cycles(tmp_path):
    root = _write(
        tmp_path,
        {
            "pathways_kg/__init__.py": "",
            "pathways_kg/graph.py": "def f():\n    from histokg import io\n",
            "histokg/__init__.py": "",
            "histokg/tl/__init__.py": "",
            "histokg/tl/embed.py": "def load():\n    import histokg.train.checkpoint\n",
            "histokg/train/__init__.py": "",
            "histokg/train/data.py": "from ..synth.study import load_study\n",
            "histokg/synth/__init__.py": "",
            "histokg/synth/study.py": "",
            "histokg/st/__init__.py": "import importlib\nimportlib.import_module('histokg.models')\n",
            "histokg/models.py": "from histokg.st import reader\n",
            "histokg/evaluate.py": "from histokg import keys\n",
            "histokg/retrieval.py": "def serve():\n    from app.main import create_app\n",
            "histokg/cli.py": "def serve():\n    import app.main\n",
            "app/__init__.py": "",
            "app/main.py": "from histokg.train import trainer\n",
            "histokg/pipeline.py": "from histokg.train.engine import run_epoch\n",
            "histokg/bench/__init__.py": "",
            "histokg/bench/engine.py": "from histokg.train.engine import run_epoch\n",
            "histokg/train/trainer.py": "from histokg.train import engine\n",
        },
    )
    imports = scan(root)
    assert violations(imports) == [
        "app.main imports histokg.train (forbidden: histokg.train)",
        "app.main imports histokg.train.trainer (forbidden: histokg.train)",
        "histokg.pipeline imports histokg.train.engine (forbidden: histokg.train.engine)",
        "histokg.pipeline imports histokg.train.engine.run_epoch (forbidden: histokg.train.engine)",
        "histokg.retrieval imports app.main (forbidden: app)",
        "histokg.retrieval imports app.main.create_app (forbidden: app)",
        "histokg.tl.embed imports histokg.train.checkpoint (forbidden: histokg.train)",
        "histokg.train.data imports histokg.synth.study (forbidden: histokg.synth)",
        "histokg.train.data imports histokg.synth.study.load_study (forbidden: histokg.synth)",
        "pathways_kg.graph imports histokg (forbidden: histokg, app)",
        "pathways_kg.graph imports histokg.io (forbidden: histokg, app)",
    ]
    assert find_cycle(part_graph(imports)) == ["models", "st", "models"]
    (root / "histokg/st/__init__.py").write_text("")
    assert find_cycle(part_graph(scan(root))) is None


def test_inference_imports_load_neither_training_nor_synthesis():
    """At run time too: importing the inference modules (and resolving histokg.load_model) loads no
    histokg.train or histokg.synth module."""
    code = (
        "import sys, histokg; histokg.load_model\n"
        "import histokg.tl, histokg.tl.embed, histokg.evaluate, histokg.heldout, histokg.report\n"
        "import histokg.retrieval, histokg.retrieval.index, histokg.st.study, app.main\n"
        "print(sorted(m for m in sys.modules if m.startswith(('histokg.train', 'histokg.synth'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
