"""The default store: a SQLite file of the application's own, in the user's state directory.

Every test points ``XDG_STATE_HOME`` at its own temporary directory (and unsets
``H2GUARD_IDEMPOTENCY_DB``), so nothing is written to the real home directory.
"""

from __future__ import annotations

import logging
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from h2guard.idempotency import IdempotencyMiddleware, SQLiteStore, app_name
from h2guard.idempotency.stores.sqlite import default_path, state_dir

pytestmark = [pytest.mark.timeout(30),
              pytest.mark.skipif(sys.platform in ("win32", "darwin"),
                                 reason="the XDG layout is the Linux/BSD default")]


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    monkeypatch.delenv("H2GUARD_IDEMPOTENCY_DB", raising=False)
    return home


async def orders_app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"order"})


async def billing_app(scope: Any, receive: Any, send: Any) -> None:
    await orders_app(scope, receive, send)


class Service:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await orders_app(scope, receive, send)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def sqlite_path(mw: IdempotencyMiddleware) -> Path:
    assert isinstance(mw.store, SQLiteStore)
    return Path(mw.store.path)


# ---------------------------------------------------------------------------- where it is


def test_the_default_is_in_the_state_directory_not_tmp(state_home: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert state_dir() == state_home / "h2guard" / "idempotency"
    assert default_path("orders") == str(state_home / "h2guard/idempotency/orders.sqlite3")
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")  # not absolute: ignored (XDG spec)
    assert state_dir() == Path.home() / ".local/state/h2guard/idempotency"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert state_dir() == Path.home() / ".local/state/h2guard/idempotency"


def test_the_environment_variable_overrides_with_a_name_placeholder(
        state_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("H2GUARD_IDEMPOTENCY_DB", str(tmp_path / "idem-{name}.db"))
    assert default_path("orders") == str(tmp_path / "idem-orders.db")
    assert SQLiteStore(name="billing").path == str(tmp_path / "idem-billing.db")
    monkeypatch.setenv("H2GUARD_IDEMPOTENCY_DB", str(tmp_path / "one.db"))
    assert SQLiteStore(name="orders").path == SQLiteStore(name="billing").path  # as asked
    assert SQLiteStore(tmp_path / "given.db", name="x").path == str(tmp_path / "given.db")


def test_names_become_safe_file_names_that_stay_apart(state_home: Path) -> None:
    plain = Path(default_path("orders.api.app"))
    assert plain.name == "orders.api.app.sqlite3"
    odd = [Path(default_path(n)).name for n in ("a/b", "a_b", "a b", "../../etc", "")]
    assert odd[1] == "a_b.sqlite3"
    assert len(set(odd)) == len(odd)  # a digest keeps altered names apart
    assert all("/" not in n and not n.startswith(".") for n in odd)
    assert all(Path(default_path(n)).parent == state_dir() for n in ("../../etc", "a/b"))


# ---------------------------------------------------------------------------- per application


async def test_two_differently_named_apps_do_not_share_a_file(state_home: Path) -> None:
    orders = IdempotencyMiddleware(orders_app, name="orders")
    billing = IdempotencyMiddleware(orders_app, name="billing")
    assert sqlite_path(orders) != sqlite_path(billing)
    headers = {"Idempotency-Key": "same-key-in-both"}
    async with client(orders) as a, client(billing) as b:
        first = await a.post("/orders", content=b"x", headers=headers)
        other = await b.post("/orders", content=b"x", headers=headers)
        again = await a.post("/orders", content=b"x", headers=headers)
    assert "idempotent-replayed" not in first.headers
    assert "idempotent-replayed" not in other.headers  # not the other app's response
    assert again.headers["idempotent-replayed"] == "true"
    files = sorted(p.name for p in (state_home / "h2guard/idempotency").glob("*.sqlite3"))
    assert files == ["billing.sqlite3", "orders.sqlite3"]
    await orders.store.aclose()
    await billing.store.aclose()


def test_apps_without_a_name_are_named_after_their_code(state_home: Path) -> None:
    a = IdempotencyMiddleware(orders_app)
    b = IdempotencyMiddleware(billing_app)
    c = IdempotencyMiddleware(Service())
    assert a.name == f"{__name__}.orders_app"
    assert b.name == f"{__name__}.billing_app"
    assert c.name == f"{__name__}.Service"
    assert len({sqlite_path(a), sqlite_path(b), sqlite_path(c)}) == 3
    assert IdempotencyMiddleware(orders_app).name == a.name  # deterministic


def test_framework_objects_are_named_after_the_application_code(state_home: Path) -> None:
    import functools

    from starlette.applications import Starlette
    from starlette.middleware.exceptions import ExceptionMiddleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def create(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    starlette = Starlette(routes=[Route("/orders", create, methods=["POST"])])
    # what add_middleware hands us: the next layer of the framework's own stack
    inner = ExceptionMiddleware(starlette.router)
    assert app_name(starlette) == __name__
    assert app_name(inner) == __name__
    assert app_name(IdempotencyMiddleware(orders_app, name="x")) == f"{__name__}.orders_app"
    assert app_name(functools.partial(orders_app)) == f"{__name__}.orders_app"
    # nothing of the application's own to see: the framework's class, still deterministic
    assert app_name(Starlette()) == "starlette.applications.Starlette"


async def test_fastapi_add_middleware_is_named_after_the_routes_module(state_home: Path
                                                                       ) -> None:
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @app.post("/orders")
    async def create() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(IdempotencyMiddleware)
    async with client(app) as c:
        r = await c.post("/orders", headers={"Idempotency-Key": "k"})
    assert r.status_code == 200
    assert (state_home / "h2guard/idempotency" / f"{__name__}.sqlite3").exists()


def test_the_derived_name_is_the_same_in_another_process(state_home: Path,
                                                         tmp_path: Path) -> None:
    # every worker process of one application must find the same file
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "__init__.py").write_text("")
    (tmp_path / "svc" / "api.py").write_text(textwrap.dedent("""
        async def app(scope, receive, send):
            pass
    """))
    code = ("from svc.api import app\n"
            "from h2guard.idempotency import IdempotencyMiddleware\n"
            "print(IdempotencyMiddleware(app).store.path)\n")
    runs = [subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                           text=True, timeout=20, check=True).stdout.strip() for _ in range(2)]
    assert runs[0] == runs[1] == str(state_home / "h2guard/idempotency/svc.api.app.sqlite3")


# ---------------------------------------------------------------------------- first use


async def test_first_use_makes_a_private_directory_and_logs_the_path(
        state_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="h2guard.idempotency")
    mw = IdempotencyMiddleware(orders_app, name="orders")
    path = sqlite_path(mw)
    assert not path.parent.exists()  # nothing is made before the first request
    async with client(mw) as c:
        for i in range(3):
            await c.post("/orders", headers={"Idempotency-Key": f"k{i}"})
    assert path.exists()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    opened = [r for r in caplog.records if r.name == "h2guard.idempotency"
              and "SQLite file" in r.getMessage()]
    assert len(opened) == 1  # once, on first use
    assert opened[0].levelno == logging.INFO
    assert str(path) in opened[0].getMessage()
    assert "the default for the application 'orders'" in opened[0].getMessage()
    await mw.store.aclose()


async def test_a_state_directory_that_cannot_be_made_fails_closed_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_STATE_HOME", str(blocker))
    monkeypatch.delenv("H2GUARD_IDEMPOTENCY_DB", raising=False)
    caplog.set_level(logging.WARNING, logger="h2guard.idempotency")
    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await orders_app(scope, receive, send)

    mw = IdempotencyMiddleware(app, name="orders")
    async with client(mw) as c:
        r = await c.post("/orders", headers={"Idempotency-Key": "k"})
    assert r.status_code == 503 and runs == []
    message = next(r.getMessage() for r in caplog.records if r.name == "h2guard.idempotency")
    assert "cannot create" in message and "H2GUARD_IDEMPOTENCY_DB" in message
    assert "answered 503" in message
