"""Imports flow one way: cnas → pipeline, trainers → stages → geometry → schemas (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cnas", "pipeline", "trainers", "stages", "geometry", "schemas")

#: What each package may import from the project (besides itself).
ALLOWED = {
    "cnas": {"pipeline", "trainers", "stages", "geometry", "schemas"},
    "pipeline": {"stages", "geometry", "schemas"},
    "trainers": {"geometry", "schemas"},
    "stages": {"geometry", "schemas"},
    "geometry": {"schemas"},
    "schemas": set(),
}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports (absolute imports, at any depth in the file: lazy ones too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        found |= {n.split(".")[0] for n in names}
    return found


def project_imports(path: Path) -> set[str]:
    return imported_packages(path) & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package):
    bad = {}
    for path in sorted((REPO / package).rglob("*.py")):
        wrong = project_imports(path) - ALLOWED[package] - {package}
        if wrong:
            bad[str(path.relative_to(REPO))] = sorted(wrong)
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}: {bad}"


def test_stages_never_import_ray():
    users = [str(p.relative_to(REPO)) for p in (REPO / "stages").rglob("*.py") if "ray" in imported_packages(p)]
    assert not users, users


#: The rooms of pipeline/ and the other rooms each may import (docs/architecture.md, "pipeline/ rooms").
#: The engine knows nothing of releases, reports or the demo; ``pipeline/cli.py`` is the front door
#: and may import every room.
ROOMS = {
    "engine": set(),
    "release": {"engine"},
    "inspect": {"engine", "release"},
    "demo": set(),
    "corpora": set(),
}
#: Model libraries: pipeline/ calls stages for models; only the demo's generator (a fixture maker) uses one.
MODEL_LIBRARIES = {"torch", "mediapipe", "whisperx", "cv2", "onnxruntime", "transformers", "pyannote", "tensorflow", "faster_whisper"}


def imported_modules(path: Path) -> set[str]:
    """Dotted modules a file imports (absolute and relative, lazy ones too)."""
    rel = path.relative_to(REPO).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *([node.module] if node.module else [])])
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}  # ``from pkg import module``
    return found


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_pipeline_rooms_import_only_what_they_may(room):
    bad = {}
    for path in sorted((REPO / "pipeline" / room).rglob("*.py")):
        rooms = {m.split(".")[1] for m in imported_modules(path) if m.startswith("pipeline.") and m.count(".") >= 1}
        wrong = rooms - ROOMS[room] - {room}
        if wrong:
            bad[str(path.relative_to(REPO))] = sorted(wrong)
    assert not bad, f"pipeline/{room} may import only {sorted(ROOMS[room]) or 'no other room'}: {bad}"


def test_every_pipeline_module_lives_in_a_room():
    loose = sorted(p.name for p in (REPO / "pipeline").glob("*.py") if p.name not in ("__init__.py", "cli.py"))
    assert not loose, f"pipeline/ holds rooms and the CLI only: {loose}"


def test_pipeline_leaves_models_to_stages():
    users = {str(p.relative_to(REPO)): sorted(imported_packages(p) & MODEL_LIBRARIES)
             for p in (REPO / "pipeline").rglob("*.py") if "demo" not in p.parts and imported_packages(p) & MODEL_LIBRARIES}
    assert not users, users


def test_no_import_cycles():
    """No two project modules import each other, directly or round a circle (lazy imports count)."""
    files = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
             for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph = {m: {d for d in imported_modules(p) if d in files and d != m and not m.startswith(d + ".")}
             for m, p in files.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
