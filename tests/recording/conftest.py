"""Shared helpers of the recording tests: the role contract suites and the CLI."""

import sys
from pathlib import Path

import pytest

# the shared role contract suites live in tests/contracts (no packages in tests/)
CONTRACTS = str(Path(__file__).resolve().parents[1] / "contracts")
if CONTRACTS not in sys.path:
    sys.path.insert(0, CONTRACTS)


@pytest.fixture
def rig_cli(monkeypatch):
    """`rig ...` in this process, with the recording subcommands registered."""
    import rig.cli

    if "rig.cli_recording" not in rig.cli.EXTENSIONS:
        monkeypatch.setattr(rig.cli, "EXTENSIONS", (*rig.cli.EXTENSIONS, "rig.cli_recording"))
    return rig.cli.main
