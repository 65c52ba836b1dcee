"""``pip install h2guard`` in a fresh venv: the client and retry layer, no CLI or chaos extra.

Builds the wheel from a copy of the tree (``pip wheel --no-deps``), installs it into a new
venv (``python -m venv``; its dependencies come from the configured index, as a user's
would), and checks there what a user of the core gets: ``import h2guard`` and the clients
work, none of the extras' packages came along, the ``h2guard`` command says in one line which
extra it needs, the chaos server serves h2c and names the extra for TLS, and pytest still
runs with the plugin h2guard registers. About 15 s; every subprocess has a time limit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
CLI_MISSING = "the h2guard command needs the CLI extra: pip install 'h2guard[cli]'"

# distributions the extras bring; the core install must have none of them
EXTRA_DISTS = ("typer", "click", "rich", "shellingham", "trustme", "cryptography", "niquests",
               "redis", "psycopg", "psycopg-binary", "prometheus-client", "opentelemetry-api",
               "uvloop", "pytest")
EXTRA_MODULES = ("typer", "click", "rich", "trustme", "cryptography", "niquests", "redis",
                 "psycopg", "prometheus_client", "opentelemetry", "uvloop")

# pip output that means the index could not be reached, not that the package is wrong
_OFFLINE = re.compile(r"NewConnectionError|Network is unreachable|Temporary failure in name "
                      r"resolution|Name or service not known|ConnectTimeout|ReadTimeout|"
                      r"Connection refused|ProxyError|SSLError|No matching distribution found "
                      r"for (?:httpx|h2|hpack|hyperframe|anyio|h11|pytest)\b")


@dataclass
class Venv:
    root: Path
    env: dict[str, str]
    dists: dict[str, str]  # what `pip install <wheel>` installed, name -> version
    modules: dict[str, bool]  # EXTRA_MODULES -> importable, right after that install

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    def run(self, *args: str, timeout: float = 30, cwd: Path | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=cwd or self.root, check=False)

    def py(self, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.run(self.python, "-c", textwrap.dedent(code), timeout=timeout)


def _clean_env() -> dict[str, str]:
    """This process's environment without what would leak the dev venv into the fresh one."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTEST_ADDOPTS",
                        "PYTEST_PLUGINS", "PYTHONSTARTUP", "PYTHONUSERBASE"}}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    return env


def _pip(env: dict[str, str], venv_python: str, *args: str, timeout: float = 120) -> None:
    """``pip install`` into the fresh venv, with this interpreter's pip (``--python``), so the
    venv needs no pip of its own; skip, naming why, when the index cannot be reached."""
    cmd = [sys.executable, "-m", "pip", "--python", venv_python, "install",
           "--no-input", "--progress-bar", "off", *args]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                env=env, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip(f"SKIPPED LOUDLY: pip install {' '.join(args)} took over {timeout:g} s "
                    "(package index unreachable or slow?)")
    if result.returncode != 0:
        output = result.stdout + result.stderr
        tail = " | ".join(output.strip().splitlines()[-3:])
        if _OFFLINE.search(output):
            pytest.skip(f"SKIPPED LOUDLY: cannot reach the package index to install "
                        f"{' '.join(args)}: {tail}")
        pytest.fail(f"pip install {' '.join(args)} failed (exit {result.returncode}): "
                    f"{output[-3000:]}")


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv with the h2guard wheel and nothing else installed by hand."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                      timeout=30, check=False).returncode != 0:
        pytest.skip("SKIPPED LOUDLY: this interpreter has no pip to build and install with")
    env = _clean_env()
    tmp = tmp_path_factory.mktemp("packaging")
    # build from a copy: the tree's build/ and src/*.egg-info stay as they are
    src = tmp / "src-tree"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    wheels = tmp / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-input", "-q",
         "-w", str(wheels), str(src)],
        capture_output=True, text=True, timeout=120, env=env, check=False)
    if build.returncode != 0:
        output = build.stdout + build.stderr
        if _OFFLINE.search(output):  # the isolated build env fetches setuptools and wheel
            pytest.skip(f"SKIPPED LOUDLY: cannot fetch the build backend: {output[-500:]}")
        pytest.fail(f"pip wheel failed: {output[-3000:]}")
    (wheel,) = wheels.glob("h2guard-*.whl")

    root = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)],
                   check=True, timeout=60, env=env)
    venv = Venv(root=root, env={**env, "VIRTUAL_ENV": str(root),
                                "PATH": f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"},
                dists={}, modules={})
    _pip(env, venv.python, str(wheel))

    # what the core install holds, recorded before the pytest fixture adds pytest
    probe = venv.py(f"""
        import importlib.metadata, importlib.util, json
        dists = {{d.metadata["Name"].lower().replace("_", "-"): d.version
                 for d in importlib.metadata.distributions()}}
        modules = {{m: importlib.util.find_spec(m) is not None for m in {EXTRA_MODULES!r}}}
        print(json.dumps({{"dists": dists, "modules": modules}}))
    """)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    venv.dists, venv.modules = found["dists"], found["modules"]
    return venv


@pytest.fixture(scope="module")
def pytest_venv(core_venv: Venv) -> Venv:
    """The same venv with pytest added (and nothing else: no pytest-asyncio, so the plugin's
    fixture runs under anyio's pytest plugin, which comes with the core's anyio)."""
    _pip(core_venv.env, core_venv.python, "pytest>=8")
    return core_venv


def test_the_core_install_pulls_no_extra(core_venv: Venv) -> None:
    assert "h2guard" in core_venv.dists
    for name in ("httpx", "h2", "hpack", "hyperframe", "anyio", "h11"):
        assert name in core_venv.dists, (name, sorted(core_venv.dists))
    pulled = sorted(set(EXTRA_DISTS) & set(core_venv.dists))
    assert not pulled, f"the core install pulled {pulled}: {sorted(core_venv.dists)}"
    importable = sorted(m for m, ok in core_venv.modules.items() if ok)
    assert not importable, importable


def test_import_h2guard_and_the_clients_work(core_venv: Venv) -> None:
    result = core_venv.py("""
        import asyncio
        import sys

        import h2guard
        import h2guard.retry

        async def main():
            async with h2guard.AsyncClient(base_url="https://example.invalid") as client:
                assert isinstance(client.retry, h2guard.RetryTransport)
        asyncio.run(main())
        with h2guard.Client():
            pass
        h2guard.RetryTransport(h2guard.AsyncHTTPTransport(), policy=h2guard.RetryPolicy())
        for name in ("typer", "rich", "trustme", "click"):
            try:
                __import__(name)
            except ImportError:
                continue
            raise AssertionError(f"{name} is importable")
        print(h2guard.__version__, sorted(m for m in sys.modules if m.startswith("h2guard.")))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(core_venv.dists["h2guard"] + " ")


@pytest.mark.parametrize("argv", [["--version"], ["version"], []])
def test_the_command_says_which_extra_in_one_line(core_venv: Venv, argv: list[str]) -> None:
    result = core_venv.run(str(core_venv.root / "bin" / "h2guard"), *argv)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", CLI_MISSING + "\n")


def test_python_dash_m_h2guard_says_the_same(core_venv: Venv) -> None:
    result = core_venv.run(core_venv.python, "-m", "h2guard", "--version")
    assert (result.returncode, result.stdout, result.stderr) == (1, "", CLI_MISSING + "\n")


def test_chaos_serves_h2c_and_tls_names_the_extra(core_venv: Venv) -> None:
    result = core_venv.py("""
        import asyncio

        import h2guard
        from h2guard.chaos import serve

        async def main():
            async with serve(h2c=True) as server, h2guard.AsyncClient(
                    base_url=server.url, http2_prior_knowledge=True) as client:
                response = await client.post("/orders")
                assert response.status_code == 201, response
                assert server.ledger.total == 1
            try:
                async with serve():
                    pass
            except ImportError as exc:
                print(exc)
            else:
                raise AssertionError("TLS started without trustme")

        asyncio.run(asyncio.wait_for(main(), 20))
    """)
    assert result.returncode == 0, result.stderr
    assert "pip install 'h2guard[chaos]'" in result.stdout, result.stdout


def test_pytest_runs_with_the_plugin_registered(pytest_venv: Venv, tmp_path: Path) -> None:
    version = pytest_venv.run(pytest_venv.python, "-m", "pytest", "--version")
    assert version.returncode == 0, version.stdout + version.stderr
    assert version.stdout.startswith("pytest ") or version.stderr.startswith("pytest ")

    plugins = pytest_venv.py("""
        import importlib.metadata
        print([e.value for e in importlib.metadata.entry_points(group="pytest11")])
    """)
    assert "h2guard.chaos.pytest_plugin" in plugins.stdout, plugins.stdout

    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_user.py").write_text(textwrap.dedent("""
        import httpx
        import pytest

        pytestmark = pytest.mark.anyio

        async def test_h2c(chaos_server):
            server = await chaos_server(h2c=True)
            async with httpx.AsyncClient(http1=False, http2=True) as client:
                assert (await client.get(f"{server.url}/echo")).status_code == 200

        async def test_tls(chaos_server):
            await chaos_server()

        def test_unrelated():
            assert True
    """))
    result = pytest_venv.run(pytest_venv.python, "-m", "pytest", "-q", "-p",
                             "no:cacheprovider", str(tmp_path), cwd=tmp_path, timeout=60)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "1 failed, 2 passed" in out, out
    assert "chaos_server: the chaos server's TLS needs a generated CA" in out, out
    assert "pip install 'h2guard[chaos]'" in out, out
    assert "Traceback" not in out and "During handling" not in out, out
