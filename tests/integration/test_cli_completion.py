"""Shell completion of the ``h2guard`` command (typer's ``add_completion``), through the
console script as a shell runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(sys.executable).with_name("h2guard")


def _script(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    if not _SCRIPT.exists():
        pytest.skip(f"no console script at {_SCRIPT} (pip install -e '.[cli]')")
    return subprocess.run([str(_SCRIPT), *argv], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **env}, check=False)


def test_bash_completion_completes_commands_and_options() -> None:
    groups = _script({"_H2GUARD_COMPLETE": "complete_bash", "COMP_WORDS": "h2guard ch",
                      "COMP_CWORD": "1"})
    assert groups.returncode == 0, groups.stderr
    assert groups.stdout.split() == ["chaos"]
    options = _script({"_H2GUARD_COMPLETE": "complete_bash",
                       "COMP_WORDS": "h2guard chaos serve --pro", "COMP_CWORD": "3"})
    assert options.stdout.split() == ["--profile"]


def test_show_completion_prints_a_script_for_the_named_shell() -> None:
    # typer detects the shell from the parent process; this variable makes it take the value
    for shell, marker in (("bash", "complete -o default -F _h2guard_completion h2guard"),
                          ("zsh", "compdef _h2guard_completion h2guard"),
                          ("fish", "complete --command h2guard")):
        result = _script({"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
                         "--show-completion", shell)
        assert result.returncode == 0, result.stderr
        assert marker in result.stdout, (shell, result.stdout)


def test_install_completion_writes_the_script(tmp_path: Path) -> None:
    result = _script({"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1",
                      "HOME": str(tmp_path)}, "--install-completion", "bash")
    assert result.returncode == 0, result.stderr
    script = tmp_path / ".bash_completions" / "h2guard.sh"
    assert "_h2guard_completion" in script.read_text()
    assert str(script) in (tmp_path / ".bashrc").read_text()
