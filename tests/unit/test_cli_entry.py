"""``h2guard --version`` and ``h2guard version`` (the completion is in
tests/integration/test_cli_completion.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import h2guard
from h2guard.cli import app


@pytest.mark.parametrize("argv", [["--version"], ["version"]])
def test_version(argv: list[str]) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert result.output == f"{h2guard.__version__}\n"


def test_version_wins_over_a_subcommand() -> None:  # eager, like --help
    result = CliRunner().invoke(app, ["--version", "chaos", "serve", "--port", "99999"])
    assert (result.exit_code, result.output) == (0, f"{h2guard.__version__}\n")


def test_help_lists_version_and_completion() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    for flag in ("--version", "--install-completion", "--show-completion"):
        assert flag in result.output
