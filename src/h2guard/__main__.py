"""``python -m h2guard``: the same as the ``h2guard`` command."""

from h2guard._console import main

main()
