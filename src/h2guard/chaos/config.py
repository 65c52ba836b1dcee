"""How a chaos server listens: a plain record every part may import (it imports nothing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ServerConfig"]


@dataclass(slots=True)
class ServerConfig:
    """How a chaos server listens. ``port=0`` picks a free port."""

    host: str = "127.0.0.1"
    port: int = 0
    h2c: bool = False
    time_scale: float = 1.0
    seed: int | None = None
    certfile: str | None = None
    keyfile: str | None = None
    upstream: str | None = None
    control_host: str = "127.0.0.1"
    control_port: int | None = None
    control_allow_remote: bool = False
    control_token: str | None = None
    max_header_list_size: int = 65536
    validate_headers: bool = True
    honour_idempotency_keys: bool = False
    ca_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
