"""The import rules of docs/ARCHITECTURE.md: imports point downward only."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"rig", "drivers", "analysis", "simulators", "protocols", "tests"}
ALLOWED = {
    "drivers": {"drivers"},
    "analysis": {"analysis"},
    "simulators": {"simulators", "drivers", "analysis"},
    "rig": {"rig", "drivers", "analysis", "simulators"},
    "protocols": {"rig", "drivers", "analysis"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & OURS


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_imports_point_downward(room):
    offenders = []
    for path in sorted((ROOT / room).rglob("*.py")):
        bad = imported_packages(path) - ALLOWED[room]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)
