"""Every ```python block of README.md runs, as written, in a test.

The blocks are found by parsing README.md and named by the heading they sit under; a block
under a heading this file does not know fails :func:`test_every_python_block_has_a_runner`, so
a new example cannot go untested.

How each one runs:

* Scripts (the client, the chaos server from Python, safe retries) are written to a file and
  run with ``python FILE`` in a fresh interpreter. Examples that talk to
  ``https://api.example.com`` run against a local chaos server instead, through exactly two
  documented substitutions and nothing else: the text ``https://api.example.com`` in the code
  is replaced by the chaos server's URL (``https://127.0.0.1:PORT``), and the interpreter
  trusts the chaos server's self-signed CA: ``SSL_CERT_FILE`` names it (httpx's own transport
  reads it; ``SSL_CERT_DIR`` is unset) and a small runner sets ``certifi.where`` to return it
  (h2guard's transport reads that), then runs the file with ``runpy``; the example's code is
  not touched. Every other character is the README's.
* The pytest example is written to a temporary directory as ``test_chaos.py``, next to an empty
  ``[pytest]`` ini file (so no configuration of this repository applies: the README says none is
  needed), and run by ``python -m pytest -p no:cacheprovider`` in a subprocess: once with
  pytest-asyncio disabled (``-p no:asyncio``: a user with only h2guard and pytest), once with
  it active in its default strict mode, and once without the marker and with
  ``asyncio_mode = auto``, as the README's sentence after it says.
* The idempotency example (a FastAPI app) is run with ``runpy.run_path`` (a fresh module
  namespace, as ``uvicorn module:app`` would import it) with ``XDG_STATE_HOME`` pointed at a
  temporary directory, then requests go through the ``app`` it defined.
"""

from __future__ import annotations

import asyncio
import os
import re
import runpy
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest

import h2guard.chaos

pytestmark = pytest.mark.timeout(60)

README = Path(__file__).resolve().parents[2] / "README.md"
PLACEHOLDER = "https://api.example.com"

RUNNER = """\
import os, runpy, sys
ca = os.environ.get("README_EXAMPLE_CA")
if ca:  # trust the local chaos server's CA, as if the example's host were real
    import certifi
    certifi.where = lambda: ca
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def python_blocks() -> dict[str, list[str]]:
    """The README's ```python blocks by the nearest heading above them."""
    blocks: dict[str, list[str]] = {}
    heading = ""
    lines = README.read_text().splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.strip() == "```python":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            blocks.setdefault(heading, []).append("".join(lines[i + 1:j]))
            i = j
        i += 1
    return blocks


def block(heading: str) -> str:
    found = python_blocks()[heading]
    assert len(found) == 1, f"{heading!r}: one python block expected, found {len(found)}"
    return found[0]


async def run(args: list[str], *, cwd: Path, env: dict[str, str | None] | None = None,
              timeout: float = 40) -> tuple[int, str]:
    """Run ``args``; ``env`` adds to (a value of None: removes from) this environment."""
    environ = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.fixture
async def chaos() -> AsyncIterator[h2guard.chaos.ChaosServer]:
    """A fault-free TLS chaos server standing in for https://api.example.com."""
    async with h2guard.chaos.serve() as server:
        yield server


async def run_script(code: str, tmp_path: Path,
                     server: h2guard.chaos.ChaosServer | None = None) -> str:
    if server is not None:
        assert PLACEHOLDER in code
        code = code.replace(PLACEHOLDER, server.url)
    assert PLACEHOLDER not in code
    (tmp_path / "example.py").write_text(code)
    (tmp_path / "run_example.py").write_text(RUNNER)
    env: dict[str, str | None] = {}
    if server is not None:
        assert server.ca_file
        env = {"README_EXAMPLE_CA": server.ca_file, "SSL_CERT_FILE": server.ca_file,
               "SSL_CERT_DIR": None}
    code_, out = await run([sys.executable, "run_example.py", "example.py"], cwd=tmp_path,
                           env=env)
    assert code_ == 0, out
    return out


# ---------------------------------------------------------------------------- the examples


async def client_example(tmp_path: Path, chaos: h2guard.chaos.ChaosServer) -> None:
    out = await run_script(block("The client: an httpx transport"), tmp_path, chaos)
    assert out.splitlines() == ["201 HTTP/2", "404 HTTP/2"]  # chaos has no /health
    assert chaos.ledger.total == 1


async def chaos_from_python_example(tmp_path: Path, chaos: h2guard.chaos.ChaosServer) -> None:
    out = await run_script(block("From Python"), tmp_path)
    lines = out.splitlines()
    assert lines[0].startswith("https://127.0.0.1:") and lines[0].endswith("ca.pem")
    assert lines[1] == "201 HTTP/2"
    assert "'total_effects': 1" in lines[2]


async def safe_retries_example(tmp_path: Path, chaos: h2guard.chaos.ChaosServer) -> None:
    out = await run_script(
        block("Safe retries: `h2guard.AsyncClient`, `RetryTransport`, `RetryPolicy`"),
        tmp_path, chaos)
    status, key = out.split()
    assert status == "201" and re.fullmatch(r'"[0-9a-f]{32}"', key), out
    assert list(chaos.ledger.summary()["effects_per_key"]) == [key]


async def pytest_example(tmp_path: Path, chaos: h2guard.chaos.ChaosServer) -> None:
    code = block("In pytest")
    marker = "@pytest.mark.anyio"
    assert marker in code
    variants = {
        "anyio only": (code, "[pytest]\n", ["-p", "no:asyncio"]),
        "pytest-asyncio installed": (code, "[pytest]\n", []),
        "pytest-asyncio, asyncio_mode = auto, no marker": (
            "\n".join(line for line in code.splitlines() if marker not in line) + "\n",
            "[pytest]\nasyncio_mode = auto\n", []),
    }

    async def one(name: str, source: str, ini: str, flags: list[str]) -> tuple[str, int, str]:
        where = tmp_path / re.sub(r"\W+", "-", name)
        where.mkdir()
        (where / "test_chaos.py").write_text(source)
        (where / "pytest.ini").write_text(ini)
        code_, out = await run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                *flags, "test_chaos.py"],
                               cwd=where)
        return name, code_, out

    results = await asyncio.gather(*(one(n, *v) for n, v in variants.items()))
    for name, code_, out in results:
        assert code_ == 0 and "1 passed" in out, f"{name}:\n{out}"
    # and the marker is what makes it work: without it, the error the issue reported
    where = tmp_path / "no-marker"
    where.mkdir()
    (where / "test_chaos.py").write_text(variants[
        "pytest-asyncio, asyncio_mode = auto, no marker"][0])
    (where / "pytest.ini").write_text("[pytest]\n")
    code_, out = await run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "-p", "no:asyncio", "test_chaos.py"], cwd=where)
    # (pytest words it "async def functions are not natively supported", or, as here where the
    # fixture is async too, "... as pytest does not natively support it")
    assert code_ != 0 and "not natively support" in out, out


async def idempotency_example(tmp_path: Path, chaos: h2guard.chaos.ChaosServer) -> None:
    pytest.importorskip("fastapi")
    (tmp_path / "orders_service.py").write_text(
        block("Idempotency-Key on the server: `h2guard.idempotency`"))
    state = tmp_path / "state"
    saved = {k: os.environ.get(k) for k in ("XDG_STATE_HOME", "H2GUARD_IDEMPOTENCY_DB")}
    os.environ["XDG_STATE_HOME"] = str(state)
    os.environ.pop("H2GUARD_IDEMPOTENCY_DB", None)
    try:
        app = runpy.run_path(str(tmp_path / "orders_service.py"))["app"]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://orders") as c:
            headers = {"Idempotency-Key": '"order-1"'}
            first = await c.post("/orders", json={"item": "book"}, headers=headers)
            again = await c.post("/orders", json={"item": "book"}, headers=headers)
            other = await c.post("/orders", json={"item": "pen"}, headers=headers)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert first.status_code == 201 and first.json() == {"status": "created", "item": "book"}
    assert again.headers["idempotent-replayed"] == "true" and again.content == first.content
    assert other.status_code == 422
    assert (state / "h2guard" / "idempotency" / "orders.sqlite3").exists()  # as the comment says


Example = Callable[[Path, h2guard.chaos.ChaosServer], Coroutine[Any, Any, None]]
RUNNERS: dict[str, Example] = {
    "The client: an httpx transport": client_example,
    "In pytest": pytest_example,
    "From Python": chaos_from_python_example,
    "Safe retries: `h2guard.AsyncClient`, `RetryTransport`, `RetryPolicy`":
        safe_retries_example,
    "Idempotency-Key on the server: `h2guard.idempotency`": idempotency_example,
}


def test_every_python_block_has_a_runner() -> None:
    blocks = python_blocks()
    assert set(blocks) == set(RUNNERS), (
        "README.md's ```python blocks and this file's runners differ: add a runner for "
        f"{sorted(set(blocks) - set(RUNNERS))}, drop {sorted(set(RUNNERS) - set(blocks))}")
    assert all(len(found) == 1 for found in blocks.values())


@pytest.mark.parametrize("heading", list(RUNNERS))
async def test_readme_example_runs_as_written(heading: str, tmp_path: Path,
                                              chaos: h2guard.chaos.ChaosServer) -> None:
    await RUNNERS[heading](tmp_path, chaos)
