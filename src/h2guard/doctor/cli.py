"""The ``h2guard doctor`` group: each doctor module adds its own command (``register``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the commands' modules import typer themselves, when registered
    import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add ``probe``, ``trace``, ``explain`` and ``middlebox`` to ``app``."""
    from h2guard.doctor import explain, middlebox, probe, trace

    for module in (probe, trace, explain, middlebox):
        module.register(app)
