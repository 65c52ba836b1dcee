"""``h2guard chaos serve`` start-up: every failure is one line naming its cause, before any URL.

Each test runs the real command (``python -m h2guard``) in a child process with a timeout, and
a child that serves always has ``--duration`` too, so none can outlive its test. A child that
is still running when a test ends is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
ENV = {**os.environ, "COLUMNS": "300"}
ENV.pop("H2GUARD_CONTROL_TOKEN", None)
ENV.pop("FORCE_COLOR", None)


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "h2guard", "chaos", "serve", *args], capture_output=True,
                          text=True, timeout=30, env=env or ENV)


def _one_error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The single stderr line of a failed start, after checking nothing else was printed."""
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""  # no URL line: a parent process must not think it started
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# ------------------------------------------------------------------------------ options


@pytest.mark.parametrize("args", [["--port", "70000"], ["--port", "-1"],
                                  ["--port", "0", "--control-port", "65536"]])
def test_a_port_out_of_range_is_one_line_and_exit_2(args: list[str]) -> None:
    line = _one_error_line(_serve("--h2c", *args), 2)
    assert line == f"error: {args[-2]} {args[-1]}: a port is 0..65535 (0 picks a free one)"


@pytest.mark.parametrize("token", ["", "two words"])
def test_a_control_token_that_cannot_be_sent_is_one_line(token: str) -> None:
    line = _one_error_line(_serve("--h2c", "--port", "0", "--control-port", "0",
                                  "--control-token", token), 2)
    assert "--control-token" in line and "control token" in line


def test_help_teaches_the_new_options() -> None:
    proc = subprocess.run([PY, "-m", "h2guard", "chaos", "serve", "--help"],
                          capture_output=True, text=True, timeout=30,
                          env={**ENV, "H2GUARD_CONTROL_TOKEN": "do-not-print-me"})
    assert proc.returncode == 0
    out = proc.stdout
    for text in ("--control-token", "H2GUARD_CONTROL_TOKEN", "Authorization", "0..65535",
                 "application/json"):
        assert text in out, text
    assert "do-not-print-me" not in out


# ------------------------------------------------------------------------------ files


def test_an_events_file_that_cannot_be_opened_is_one_line_before_any_url(
        tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x"
    line = _one_error_line(_serve("--h2c", "--port", "0", "--events", str(missing)), 2)
    assert line == f"error: cannot open --events file {missing}: No such file or directory"
    line = _one_error_line(_serve("--h2c", "--port", "0", "--events", str(tmp_path)), 2)
    assert line == f"error: cannot open --events file {tmp_path}: Is a directory"


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Certificates and keys, good and bad, by name."""
    folder = tmp_path_factory.mktemp("pems")
    ca = trustme.CA()
    first, second = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    paths = {name: folder / f"{name}.pem" for name in
             ("cert", "key", "other_key", "garbage_cert", "garbage_key", "encrypted_key")}
    first.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    first.private_key_pem.write_to_path(str(paths["key"]))
    second.private_key_pem.write_to_path(str(paths["other_key"]))
    paths["garbage_cert"].write_text("-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n"
                                     "-----END CERTIFICATE-----\n")
    paths["garbage_key"].write_text("-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n"
                                    "-----END PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key(first.private_key_pem.bytes(), None)
    paths["encrypted_key"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    return paths


@pytest.mark.parametrize(("cert", "key", "expected"), [
    ("/no/such/cert.pem", "key", "--cert /no/such/cert.pem: no such file"),
    ("cert", "/no/such/key.pem", "--key /no/such/key.pem: no such file"),
    ("cert", "other_key", "--cert/--key cannot be loaded: the private key does not match the "
                          "certificate"),
    ("garbage_cert", "key", "--cert {garbage_cert}: not a valid PEM certificate"),
    ("key", "key", "--cert {key}: no PEM certificate in it"),
    ("cert", "cert", "--key {cert}: no PEM private key in it"),
    ("cert", "garbage_key", "--cert/--key cannot be loaded: --key {garbage_key} holds no valid "
                            "private key"),
    ("cert", "encrypted_key", "--key {encrypted_key}: the private key is encrypted"),
])
def test_a_cert_or_key_that_does_not_load_is_named(pems: dict[str, Path], cert: str, key: str,
                                                   expected: str) -> None:
    """Checked before binding: no "cannot listen", no OpenSSL "PEM lib", and an encrypted key
    fails instead of OpenSSL prompting for a passphrase (the timeout would catch a hang)."""
    line = _one_error_line(_serve("--port", "0", "--cert", str(pems.get(cert, cert)),
                                  "--key", str(pems.get(key, key))), 2)
    assert line.startswith("error: " + expected.format(**{k: str(v) for k, v in pems.items()}))


def test_a_good_cert_and_key_serve_tls(pems: dict[str, Path]) -> None:
    proc = _serve("--port", "0", "--cert", str(pems["cert"]), "--key", str(pems["key"]),
                  "--duration", "0.3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("https://127.0.0.1:")


# ------------------------------------------------------------------------------ addresses


def test_a_busy_port_names_the_chaos_server(busy_port: int) -> None:
    line = _one_error_line(_serve("--h2c", "--port", str(busy_port)), 1)
    assert line == (f"error: cannot listen on 127.0.0.1:{busy_port} for the chaos server: "
                    "address already in use")


def test_a_busy_control_port_names_the_control_api(busy_port: int) -> None:
    line = _one_error_line(_serve("--h2c", "--port", "0", "--control-port", str(busy_port)), 1)
    assert line == (f"error: cannot listen on 127.0.0.1:{busy_port} for the control API: "
                    "address already in use")


# ------------------------------------------------------------------------------ control API


def _wait_for_line(path: Path, marker: str, proc: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for line in path.read_text().splitlines():
            if marker in line:
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {marker!r} line; stderr so far: {path.read_text()!r}")


def test_control_token_from_the_environment(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    with err.open("w") as sink:
        proc = subprocess.Popen(
            [PY, "-m", "h2guard", "chaos", "serve", "--h2c", "--port", "0", "--control-port",
             "0", "--duration", "30"], stdout=subprocess.DEVNULL, stderr=sink, text=True,
            env={**ENV, "H2GUARD_CONTROL_TOKEN": "env-t0ken"})
    try:
        line = _wait_for_line(err, "control API: http://", proc)
        url = line.split("control API: ")[1].split()[0]
        assert "Authorization: Bearer" in err.read_text()
        with httpx.Client(base_url=url, timeout=10) as client:
            resp = client.get("/faults")
            assert resp.status_code == 401
            assert resp.headers["www-authenticate"].startswith("Bearer")
            auth = {"authorization": "Bearer env-t0ken"}
            assert client.get("/faults", headers=auth).status_code == 200
            resp = client.post("/faults", json={"kind": "rst_stream", "code": "CANCEL"},
                               headers=auth)
            assert resp.status_code == 201
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert "env-t0ken" not in err.read_text()


def test_remote_control_without_a_token_warns_in_yellow(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    proc = _serve("--h2c", "--port", "0", "--control-port", "0", "--control-host", "0.0.0.0",
                  "--allow-remote-control", "--events", str(events), "--duration", "0.3",
                  env={**ENV, "FORCE_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("http://127.0.0.1:")  # still the URL first
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 1, proc.stderr  # once: not again through logging's last resort
    assert "\x1b[33m" in warnings[0]  # yellow
    assert "no token" in warnings[0] and "--control-token" in warnings[0]
    names = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert "chaos.control_unprotected" in names


def test_remote_control_with_a_token_does_not_warn() -> None:
    proc = _serve("--h2c", "--port", "0", "--control-port", "0", "--control-host", "0.0.0.0",
                  "--allow-remote-control", "--control-token", "t0ken", "--duration", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
