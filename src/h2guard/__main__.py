"""``python -m h2guard``: the same as the ``h2guard`` command."""

from h2guard.cli import main

main()
