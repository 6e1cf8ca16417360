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
