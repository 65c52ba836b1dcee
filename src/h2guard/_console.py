"""The ``h2guard`` console script: :mod:`h2guard.cli` when the CLI extra is installed, else one
line that says how to get it (exit code 1, no traceback).

``pip install h2guard`` is the client and retry layer only; the command is built on typer and
rich, which come with ``h2guard[cli]`` (and with ``[chaos]``, ``[bench]`` and ``[all]``). This
module imports nothing but the standard library until it knows they are there.
"""

from __future__ import annotations

import sys

__all__ = ["CLI_MISSING", "main"]

CLI_MISSING = "the h2guard command needs the CLI extra: pip install 'h2guard[cli]'"

# the top-level modules the command imports that only the CLI extra brings
_CLI_MODULES = frozenset({"typer", "click", "rich", "shellingham"})


def main() -> None:
    """Console-script entry point."""
    try:
        from h2guard.cli import main as cli_main
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _CLI_MODULES:
            raise  # a real bug, or another extra's module: show it
        print(CLI_MISSING, file=sys.stderr)
        raise SystemExit(1) from None
    cli_main()
