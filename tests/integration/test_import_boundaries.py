"""What works on ``pip install h2guard`` alone (the core: httpx, h2 and what they need).

Each check runs in a child interpreter whose imports of the extras' modules (typer, rich,
trustme, ...) fail as if they were not installed, so it runs in the dev venv in about a
second. ``tests/integration/test_packaging.py`` checks the same against a real wheel in a
fresh venv.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# what the extras bring (cli, chaos, bench, redis, postgres, metrics, otel, speed)
EXTRAS_MODULES = ("typer", "click", "rich", "shellingham", "trustme", "cryptography",
                  "niquests", "redis", "psycopg", "prometheus_client", "opentelemetry",
                  "uvloop")

# the modules that are the command (typer resolves their options' annotations from the
# module's globals, so they import typer and rich at the top); everything else must import
CLI_ONLY = frozenset({
    "h2guard.cli", "h2guard.chaos.run", "h2guard.bench.cli", "h2guard.bench.report",
    "h2guard.doctor.explain", "h2guard.doctor.middlebox", "h2guard.doctor.probe",
    "h2guard.doctor.report", "h2guard.doctor.trace",
})

_BLOCKER = f"""
import importlib.abc
import sys

_BLOCKED = {EXTRAS_MODULES!r}


class _Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
"""


def _run_core(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child Python that cannot import any extra's module."""
    script = _BLOCKER + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_every_library_module_imports_without_the_extras() -> None:
    result = _run_core(f"""
        import importlib, pkgutil
        import h2guard

        cli_only = {sorted(CLI_ONLY)!r}
        for info in pkgutil.walk_packages(h2guard.__path__, "h2guard."):
            if info.name in cli_only or info.name.endswith("__main__"):
                continue
            importlib.import_module(info.name)
        for name in {EXTRAS_MODULES!r}:
            assert name not in sys.modules, name
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_clients_work_without_the_extras() -> None:
    result = _run_core("""
        import h2guard

        async def main():
            async with h2guard.AsyncClient(base_url="https://example.invalid"):
                pass
        import asyncio
        asyncio.run(main())
        with h2guard.Client():
            pass
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("argv", [["--version"], ["version"], [], ["chaos", "serve"]])
def test_the_command_without_the_cli_extra_says_which_extra_in_one_line(
        argv: list[str]) -> None:
    result = _run_core("""
        sys.argv = ["h2guard", *sys.argv[1:]]
        from h2guard._console import main
        main()
    """, *argv)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "the h2guard command needs the CLI extra: pip install 'h2guard[cli]'\n")


def test_python_dash_m_h2guard_says_the_same() -> None:
    result = _run_core("""
        import runpy
        sys.argv = ["h2guard", "--version"]
        runpy.run_module("h2guard", run_name="__main__")
    """)
    assert result.returncode == 1
    assert "pip install 'h2guard[cli]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_chaos_h2c_serves_without_the_extras_and_tls_names_the_extra() -> None:
    result = _run_core("""
        import asyncio
        import h2guard
        from h2guard.chaos import serve

        async def main():
            async with serve(h2c=True) as server, h2guard.AsyncClient(
                    base_url=server.url, http2_prior_knowledge=True) as client:
                response = await client.get("/echo")
                assert response.status_code == 200, response
                assert response.http_version == "HTTP/2", response.http_version
            try:
                async with serve():
                    pass
            except ImportError as exc:
                assert exc.name == "trustme", exc.name
                print(exc)
            else:
                raise AssertionError("TLS started without trustme")

        asyncio.run(main())
    """)
    assert result.returncode == 0, result.stderr
    assert "pip install 'h2guard[chaos]'" in result.stdout
    assert "serve h2c" in result.stdout


def test_the_pytest_plugin_without_trustme_fails_only_the_tls_test(
        tmp_path: Path) -> None:
    # the plugin itself is loaded from its entry point by the child pytest; only trustme is
    # hidden (pytest needs pygments, pytest-asyncio is the dev venv's), by a conftest
    conftest = _BLOCKER.replace(repr(EXTRAS_MODULES), repr(("trustme",)))
    root = tmp_path
    (root / "conftest.py").write_text(conftest)
    (root / "test_chaos.py").write_text(textwrap.dedent("""
        import httpx
        import pytest

        pytestmark = pytest.mark.asyncio

        async def test_h2c(chaos_server):
            server = await chaos_server(h2c=True)
            async with httpx.AsyncClient(http1=False, http2=True) as client:
                assert (await client.get(f"{server.url}/echo")).status_code == 200

        async def test_tls(chaos_server):
            await chaos_server()
    """))
    (root / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root)],
        capture_output=True, text=True, timeout=60, cwd=root, check=False)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "1 failed, 1 passed" in out, out
    assert "chaos_server: the chaos server's TLS needs a generated CA" in out, out
    assert "pip install 'h2guard[chaos]'" in out
    assert "Traceback" not in out
    assert "During handling" not in out
