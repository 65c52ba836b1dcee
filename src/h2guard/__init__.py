"""h2guard: make HTTP/2 stream resets boring.

The public API is what ``__all__`` names and nothing else; the parts live in subpackages
(``h2guard.chaos`` today; the client, doctor, idempotency middleware and bench follow).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
