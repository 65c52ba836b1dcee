"""Running a chaos server from the command line: start, print, wait for Ctrl-C, summarise.

Kept apart from ``cli.py`` (which only wires options) so the same runner serves ``h2guard chaos
serve``, ``make demo`` and the benchmarks. The first line on stdout is the server's URL, printed
once it accepts connections, so a parent process (any language) can read one line and go.

Everything that can fail before that line does fail before it, with one line on stderr that
names the cause: the ``--events`` file is opened and ``--cert``/``--key`` are loaded up front,
and a listener that cannot bind is named (the chaos server or the control API) with its
address. Exit codes: 2 for a bad option or file, 1 for an address that cannot be bound (or
TLS with a generated CA when trustme, the chaos extra, is not installed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from h2guard.chaos.control import ControlBindError, describe_os_error
from h2guard.chaos.model import Scenario
from h2guard.chaos.server import ChaosServer, ServerConfig
from h2guard.events import JsonLinesHook

__all__ = ["RunOptions", "check_tls", "run", "summary_table"]

_MAX_PEM = 1 << 20  # a certificate chain or key file is a few KiB; do not slurp a device
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )?PRIVATE KEY-----")


@dataclass(slots=True)
class RunOptions:
    """Everything ``h2guard chaos serve`` takes, validated by the CLI."""

    scenario: Scenario
    config: ServerConfig
    events_path: str | None = None
    quiet: bool = False
    duration: float | None = None


def summary_table(server: ChaosServer) -> Table:
    """What a run did: faults by kind and code, connections, ledger totals."""
    stats = server.stats()
    table = Table(title=f"h2guard chaos: {stats['scenario']}", title_justify="left")
    table.add_column("fault")
    table.add_column("code / action")
    table.add_column("count", justify="right")
    for row in stats["faults"]:
        table.add_row(row["kind"], row["code"] or "-", str(row["count"]))
    if not stats["faults"]:
        table.add_row("(none injected)", "", "")
    table.add_section()
    table.add_row("connections", "", str(stats["connections"]))
    table.add_row("requests", "", str(stats["requests"]))
    ledger = stats["ledger"]
    table.add_row("ledger effects (POST /orders)", "", str(ledger["total_effects"]))
    table.add_row("duplicate idempotency keys", "", str(ledger["duplicate_keys"]))
    return table


def run(options: RunOptions) -> int:
    """Serve until Ctrl-C (or ``duration``); return the process exit code."""
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    return int(runner(_main(options)))


async def _main(options: RunOptions) -> int:
    err = Console(stderr=True)
    problem = check_tls(options.config)
    if problem is not None:
        return _fail(err, problem, 2)
    sink: IO[str] | None = None
    if options.events_path and options.events_path != "-":
        try:
            sink = open(options.events_path, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            return _fail(err, f"cannot open --events file {options.events_path}: "
                              f"{exc.strerror or exc}", 2)
    warnings = _ConsoleWarnings(err)
    logger = logging.getLogger("h2guard.chaos")
    logger.addHandler(warnings)
    try:
        return await _serve(err, options, sink)
    finally:
        logger.removeHandler(warnings)
        if sink is not None:
            sink.close()


async def _serve(err: Console, options: RunOptions, sink: IO[str] | None) -> int:
    cfg = options.config
    server = ChaosServer(options.scenario, config=cfg)
    if sink is not None:  # a file, not stdout: it may see the start (and a warning) too
        server.events.subscribe(JsonLinesHook(sink))
    try:
        await server.start()
    except ControlBindError as exc:
        return _fail(err, str(exc), 1)
    except ssl.SSLError as exc:  # check_tls passed, so the files changed under us
        return _fail(err, f"--cert/--key cannot be loaded: {_ssl_reason(exc)}", 2)
    except OSError as exc:
        if exc.filename is not None:  # a file (--ca-dir, ...), not an address
            return _fail(err, f"cannot use {exc.filename}: {describe_os_error(exc)}", 2)
        return _fail(err, f"cannot listen on {_authority(cfg.host, cfg.port)} for the chaos "
                          f"server: {describe_os_error(exc)}", 1)
    except ValueError as exc:
        return _fail(err, str(exc), 2)
    except ImportError as exc:  # TLS without the chaos extra: the message names it
        return _fail(err, str(exc), 1)
    except Exception as exc:  # one line, not a traceback, whatever went wrong
        return _fail(err, f"cannot start the chaos server: {type(exc).__name__}: {exc}", 1)
    print(server.url, flush=True)
    if options.events_path == "-":
        server.events.subscribe(JsonLinesHook(sys.stdout))
    elif sink is None and not options.quiet:
        server.events.subscribe(JsonLinesHook(sys.stdout, names=("chaos.fault",
                                                                  "chaos.protocol_error")))
    if not options.quiet:
        _describe(err, server, options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if options.duration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), options.duration)
        else:
            await stop.wait()
    finally:
        await server.stop()
        if not options.quiet:
            err.print(summary_table(server))
    return 0


def _fail(err: Console, message: str, code: int) -> int:
    err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return code


def _describe(err: Console, server: ChaosServer, options: RunOptions) -> None:
    scenario = options.scenario
    cfg = options.config
    err.print(f"[bold]h2guard chaos[/] serving [cyan]{server.url}[/] "
              f"({'h2c prior knowledge + HTTP/1.1' if cfg.h2c else 'TLS, ALPN h2 + http/1.1'})")
    if server.ca_file:
        err.print(f"  trust this CA: {server.ca_file}  "
                  f"(curl --cacert {server.ca_file} --http2 {server.url}/echo)")
    err.print(f"  scenario: [bold]{scenario.name}[/] — {len(scenario.faults)} fault(s)"
              + (f"; {scenario.description}" if scenario.description else ""))
    if cfg.time_scale != 1.0:
        err.print(f"  time scale: {cfg.time_scale} (a 60 s timeout fires after "
                  f"{60 * cfg.time_scale:g} s)")
    if cfg.upstream:
        err.print(f"  proxying to {cfg.upstream}")
    if server.control is not None:
        err.print(f"  control API: {server.control.url}  (GET /faults, POST /faults, "
                  "GET /ledger, GET /events, GET /metrics)")
        err.print("  control API needs: Content-Type: application/json on POST"
                  + ("; Authorization: Bearer <your --control-token>" if cfg.control_token
                     else ""), highlight=False)
    err.print("  endpoints: /echo /bytes/N /delay/MS /status/CODE POST /orders /ledger; "
              "Ctrl-C stops and prints a summary")


class _ConsoleWarnings(logging.Handler):
    """Shows the ``h2guard.chaos`` warnings (an unprotected control API, ...) in yellow on
    stderr. With this handler in place, logging's plain last-resort one stays quiet, so each
    warning is shown once."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._console.print(f"[yellow]warning: {escape(record.getMessage())}[/]",
                                soft_wrap=True, highlight=False)
        except Exception:
            self.handleError(record)


class _Encrypted(Exception):
    pass


def _no_passphrase() -> str:
    """Given to load_cert_chain so that an encrypted key fails instead of OpenSSL prompting on
    the terminal (which would hang a test or a service)."""
    raise _Encrypted


def check_tls(cfg: ServerConfig) -> str | None:
    """Why ``certfile``/``keyfile`` cannot serve TLS, in one line; None when they load.

    The server would find out only while binding, and OpenSSL says "PEM lib" for a bad
    certificate and a bad key alike; here each file is checked on its own first, so the
    message names the file and the problem.
    """
    if cfg.h2c or not cfg.certfile:
        return None
    files = [("--cert", cfg.certfile)] + ([("--key", cfg.keyfile)] if cfg.keyfile else [])
    texts: dict[str, bytes] = {}
    for flag, name in files:
        path = Path(name)
        if not path.exists():
            return f"{flag} {name}: no such file"
        if not path.is_file():
            return f"{flag} {name}: not a regular file"
        try:
            with path.open("rb") as fh:
                texts[flag] = fh.read(_MAX_PEM)
        except OSError as exc:
            return f"{flag} {name}: {describe_os_error(exc)}"
    if b"-----BEGIN CERTIFICATE-----" not in texts["--cert"]:
        return (f"--cert {cfg.certfile}: no PEM certificate in it (expected a "
                "'-----BEGIN CERTIFICATE-----' block)")
    key_flag, key_name = ("--key", cfg.keyfile) if cfg.keyfile else ("--cert", cfg.certfile)
    key_text = texts[key_flag]
    if not _PRIVATE_KEY.search(key_text):
        return (f"{key_flag} {key_name}: no PEM private key in it (expected a "
                "'-----BEGIN PRIVATE KEY-----' block)")
    encrypted = (f"{key_flag} {key_name}: the private key is encrypted and h2guard cannot ask "
                 f"for its passphrase; write a plain copy: openssl pkey -in {key_name} "
                 "-out key.pem")
    if b"ENCRYPTED" in key_text:
        return encrypted
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_verify_locations(cafile=cfg.certfile)  # parses the certificates alone
    except ssl.SSLError as exc:
        detail = f" ({_ssl_reason(exc)})" if exc.reason else ""
        return f"--cert {cfg.certfile}: not a valid PEM certificate{detail}"
    try:
        ctx.load_cert_chain(cfg.certfile, cfg.keyfile, password=_no_passphrase)
    except _Encrypted:
        return encrypted
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "--cert/--key cannot be loaded: the private key does not match the certificate"
        if exc.reason is None:  # "PEM lib": the certificate parsed above, so it is the key
            return (f"--cert/--key cannot be loaded: {key_flag} {key_name} holds no valid "
                    "private key")
        return f"--cert/--key cannot be loaded: {_ssl_reason(exc)}"
    except OSError as exc:
        return f"--cert/--key cannot be loaded: {describe_os_error(exc)}"
    return None


def _ssl_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason ("KEY_VALUES_MISMATCH") as words, else its message without the
    "(_ssl.c:1234)" suffix."""
    if exc.reason:
        return exc.reason.replace("_", " ").lower()
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(exc.args[-1] if exc.args else exc))


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
