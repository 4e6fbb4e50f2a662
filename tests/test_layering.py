"""The package's layering, checked from the source with ``ast`` (no import is executed).

Rules:
1. A module imports only from its own layer or below (:data:`LAYERS`, lowest first); within a layer the
   dependencies between packages form no cycle.
2. No module under ``src/diffmem`` imports the package face (``from diffmem import …``) except ``__init__``.
3. Imports of diffmem modules sit at module level; a function-local one only where it guards an optional heavy
   dependency (:data:`LOCAL_ALLOWED`), and anywhere in the command line (:data:`LAZY`): ``diffmem.cli.*`` imports
   what a command runs inside the function that runs it, so that ``diffmem COMMAND --help`` builds its parser
   without loading torch and answers at once.

Run alone: ``python -m pytest tests/test_layering.py``. :data:`PENDING` lists the known exceptions in files that other
branches are rewriting; each must disappear when its branch lands.
"""

import ast
import collections
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "diffmem"

LAYERS = (
    ("version", "types", "schedules", "seeding", "io", "home", "images", "progress", "executor"),  # data, files, units
    ("denoiser", "results"),  # the denoiser contract; results as data
    ("mixtures",),  # Gaussian mixtures: closed-form laws and Ye et al.'s data
    ("sampling",),  # the one loop, solvers, guidance, hooks, trajectories
    ("subject",),  # what every analysis, detector and mitigation runs on
    ("adapters", "nets", "text", "similarity", "evaluation", "training", "theory", "attention"),
    ("worlds",),  # embedded worlds: data, trained models, ground truth
    ("analyses", "detectors", "mitigations"),
    ("reports",),  # render saved results
    ("runners",),  # jobs: build a subject, run, save, render
    ("cli",),  # parse flags, call one runner
)
LAYER = {pkg: i for i, names in enumerate(LAYERS) for pkg in names}

# (importing module, imported module) pairs allowed until the branch that owns them lands
PENDING = {
    ("diffmem.worlds.report", "diffmem"),  # package face inside a function (branch bench)
}
PENDING_LOCAL = ("diffmem.worlds",)
# function-local imports of diffmem modules that guard optional heavy dependencies (diffusers)
LOCAL_ALLOWED: set[tuple[str, str]] = set()
# packages whose modules import lazily: the command line, whose ``--help`` must not import torch
LAZY = ("diffmem.cli.",)


def _imports():
    """(module, imported diffmem module, line, function-local?) for every import in the package."""
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name == "diffmem" or name.startswith("diffmem."):
                    yield module, name, node.lineno, id(node) in local


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_package_has_a_layer():
    packages = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert packages - set(LAYER) == set(), "give every new module or package a layer in LAYERS"


def test_no_upward_import():
    bad = [f"{m}:{line} imports {name}" for m, name, line, _ in _imports()
           if name != "diffmem" and (m, name) not in PENDING and _package(m)
           and LAYER[_package(name)] > LAYER[_package(m)]]
    assert bad == []


def test_no_cycle_between_packages():
    graph = collections.defaultdict(set)
    for m, name, _, _ in _imports():
        if name != "diffmem" and _package(m) and _package(name) != _package(m) and (m, name) not in PENDING:
            graph[_package(m)].add(_package(name))

    def reaches(a, b, seen=()):
        return any(n == b or (n not in seen and reaches(n, b, (*seen, n))) for n in graph.get(a, ()))

    assert [p for p in graph if reaches(p, p)] == []


def test_no_module_imports_the_package_face():
    bad = [f"{m}:{line}" for m, name, line, _ in _imports()
           if name == "diffmem" and m != "diffmem" and (m, name) not in PENDING]
    assert bad == []


def test_diffmem_imports_are_module_level():
    bad = [f"{m}:{line} imports {name}" for m, name, line, local in _imports()
           if local and (m, name) not in LOCAL_ALLOWED and not m.startswith((*PENDING_LOCAL, *LAZY))]
    assert bad == []
